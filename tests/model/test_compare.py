"""compare_masks: marks added, removed, grown, shrunk, split and merged between two masks, the
diff image's codes, and the same answer whatever the band height."""

import cv2
import numpy as np
import pytest

from model.compare import ADDED, GAINED, LOST, REMOVED, compare_masks

SIZE = (120, 200)


def disc(mask: np.ndarray, x: int, y: int, radius: int) -> np.ndarray:
    cv2.circle(mask, (x, y), radius, 255, thickness=-1)
    return mask


def scene() -> tuple[np.ndarray, np.ndarray]:
    """Before and after: one mark the same, one gone, one new, one grown, one shrunk, one split
    in two, two merged into one."""
    before = np.zeros(SIZE, np.uint8)
    after = np.zeros(SIZE, np.uint8)
    for mask in (before, after):
        disc(mask, 20, 20, 8)  # unchanged
    disc(before, 60, 20, 8)  # removed
    disc(after, 100, 20, 8)  # added
    disc(before, 20, 70, 5)
    disc(after, 20, 70, 9)  # grown
    disc(before, 60, 70, 9)
    disc(after, 60, 70, 5)  # shrunk
    cv2.rectangle(before, (90, 60), (130, 75), 255, -1)  # split: one bar ...
    cv2.rectangle(after, (90, 60), (105, 75), 255, -1)  # ... two bars
    cv2.rectangle(after, (115, 60), (130, 75), 255, -1)
    cv2.rectangle(before, (150, 60), (165, 75), 255, -1)  # merged: two bars ...
    cv2.rectangle(before, (175, 60), (190, 75), 255, -1)
    cv2.rectangle(after, (150, 60), (190, 75), 255, -1)  # ... one bar
    return before, after


def test_marks_added_removed_and_changed_are_counted() -> None:
    before, after = scene()
    result = compare_masks(before, after)
    assert result.counts() == {
        "before": 7,
        "after": 7,
        "added": 1,
        "removed": 1,
        "changed": 5,  # grown, shrunk, the split bar, the two merged bars
        "grown": 3,  # the grown disc; each merged bar is now part of a larger one
        "shrunk": 2,  # the shrunk disc; the split bar lost its middle
        "unchanged": 1,
        "merged": 2,  # the two bars ...
        "merged_into": 1,  # ... are one now
        "split": 1,  # the bar ...
        "split_into": 2,  # ... is two
    }


def test_merged_fragments_explain_a_falling_count() -> None:
    """A mark found in three pieces before and whole after: no mark added or removed, yet two
    marks fewer; the counts say why: three merged into one."""
    before = np.zeros(SIZE, np.uint8)
    for x in (20, 40, 60):
        cv2.rectangle(before, (x, 20), (x + 12, 40), 255, -1)
    after = cv2.rectangle(np.zeros(SIZE, np.uint8), (20, 20), (72, 40), 255, -1)
    counts = compare_masks(before, after).counts()
    assert (counts["before"], counts["after"], counts["added"], counts["removed"]) == (3, 1, 0, 0)
    assert (counts["merged"], counts["merged_into"], counts["split"]) == (3, 1, 0)
    assert counts["before"] - counts["merged"] + counts["merged_into"] == counts["after"]


def test_the_diff_image_codes_what_changed_where() -> None:
    before, after = scene()
    diff = compare_masks(before, after).diff
    assert diff.shape == SIZE and diff.dtype == np.uint8
    assert set(np.unique(diff)) == {0, LOST, GAINED, REMOVED, ADDED}
    assert diff[20, 60] == REMOVED and diff[20, 100] == ADDED
    assert diff[70, 20 + 7] == GAINED  # the grown disc's new ring
    assert diff[70, 60 + 7] == LOST  # the shrunk disc's lost ring
    assert diff[67, 110] == LOST  # the split bar's middle
    assert diff[67, 170] == GAINED  # the bridge between the merged bars
    assert not diff[10:31, 10:31].any()  # the unchanged mark draws nothing
    assert not diff[70, 20] and not diff[70, 60]  # inside both masks


def test_nudged_marks_stay_unchanged_and_moved_ones_change() -> None:
    before = disc(np.zeros(SIZE, np.uint8), 50, 50, 10)
    nudged = disc(np.zeros(SIZE, np.uint8), 51, 50, 10)
    moved = disc(np.zeros(SIZE, np.uint8), 58, 50, 10)
    assert compare_masks(before, nudged).counts()["unchanged"] == 1
    assert not compare_masks(before, nudged).diff.any()
    assert compare_masks(before, moved).counts()["changed"] == 1
    assert compare_masks(before, moved, changed_iou=0.3).counts()["changed"] == 0


def test_identical_empty_and_mismatched_masks() -> None:
    before, _ = scene()
    same = compare_masks(before, before.copy())
    assert same.changed == same.added == same.removed == 0 and same.unchanged == 7
    assert not same.diff.any()
    empty = np.zeros(SIZE, np.uint8)
    gone = compare_masks(before, empty)
    assert (gone.removed, gone.after) == (7, 0)
    assert compare_masks(empty, before).added == 7
    with pytest.raises(ValueError, match="differ in size"):
        compare_masks(before, before[:-1])


def test_bands_do_not_change_the_answer() -> None:
    before, after = scene()
    whole = compare_masks(before, after)
    banded = compare_masks(before, after, band_rows=7)
    assert banded.counts() == whole.counts()
    assert np.array_equal(banded.diff, whole.diff)
