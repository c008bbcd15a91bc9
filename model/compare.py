"""Two masks of one image compared mark by mark: which marks were added, removed, or changed
(grew or shrank), e.g. a slide segmented again after a fine-tune against its first result.

Marks are the 8-connected components of each mask, matched by overlap. A mark of `before` that
overlaps nothing in `after` was removed; a mark of `after` that overlaps nothing in `before` was
added; a pair that overlaps only each other is unchanged while their IoU is at least
`changed_iou`, else changed; a mark that split or merged with others is changed, and the
merges and splits are counted too (they are why `after` can differ from `before` by more than
added minus removed: fragments of one mark joined into it, say). The diff image
codes each pixel that tells of a counted change (pixels of marks that barely moved stay 0), with
codes spaced so a picture of it is readable and a max-pooled view keeps whole marks over parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CHANGED_IOU = 0.75
"""A mark matched one-to-one counts as changed when its IoU with its partner is below this."""
BAND_ROWS = 2048
"""Rows looked at at once when pairing marks and drawing the diff: bounds the temporaries."""

# Pixel codes of the diff image, by rising importance.
LOST = 50  # a changed mark's pixel that is background now
GAINED = 100  # a changed mark's pixel that was background before
REMOVED = 150  # a pixel of a removed mark
ADDED = 200  # a pixel of an added mark


@dataclass(frozen=True)
class MaskComparison:
    """Counts of marks, and the diff image (uint8, the masks' shape, codes LOST..ADDED)."""

    before: int
    after: int
    added: int
    removed: int
    changed: int
    grown: int
    shrunk: int
    unchanged: int
    merged: int  # marks of `before` that merged with others ...
    merged_into: int  # ... into this many marks of `after`
    split: int  # marks of `before` that split ...
    split_into: int  # ... into this many marks of `after`
    diff: np.ndarray

    def counts(self) -> dict[str, int]:
        """The counts as a task's summary keeps them."""
        names = ("before", "after", "added", "removed", "changed", "grown", "shrunk",
                 "unchanged", "merged", "merged_into", "split", "split_into")  # fmt: skip
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class _Marks:
    count: int
    labels: np.ndarray  # int32, 0 background, 1..count
    areas: np.ndarray  # by label, [0] the background's


def _marks(mask: np.ndarray) -> _Marks:
    binary = (mask > 0).view(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return _Marks(count - 1, labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64))


def _overlaps(before: _Marks, after: _Marks, band_rows: int) -> tuple[np.ndarray, ...]:
    """Every (before label, after label, shared pixels) with shared pixels > 0."""
    base = after.count + 1
    keys, counts = [], []
    for top in range(0, before.labels.shape[0], band_rows):
        b = before.labels[top : top + band_rows]
        a = after.labels[top : top + band_rows]
        both = (b > 0) & (a > 0)
        if both.any():
            key, count = np.unique(b[both].astype(np.int64) * base + a[both], return_counts=True)
            keys.append(key)
            counts.append(count)
    if not keys:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    key, where = np.unique(np.concatenate(keys), return_inverse=True)
    shared = np.bincount(where, weights=np.concatenate(counts)).astype(np.int64)
    return key // base, key % base, shared


def compare_masks(
    before: np.ndarray,
    after: np.ndarray,
    *,
    changed_iou: float = CHANGED_IOU,
    band_rows: int = BAND_ROWS,
) -> MaskComparison:
    """Compare two masks of the same shape (any dtype, > 0 is mark); see the module's doc."""
    if before.shape != after.shape:
        raise ValueError(f"the masks differ in size: {before.shape} and {after.shape}")
    old, new = _marks(before), _marks(after)
    b, a, shared = _overlaps(old, new, band_rows)
    partners_of_old = np.bincount(b, minlength=old.count + 1)
    partners_of_new = np.bincount(a, minlength=new.count + 1)
    one_to_one = (partners_of_old[b] == 1) & (partners_of_new[a] == 1)
    iou = shared / (old.areas[b] + new.areas[a] - shared)
    changed_old = np.zeros(old.count + 1, dtype=bool)
    changed_old[b[~one_to_one | (iou < changed_iou)]] = True
    changed_new = np.zeros(new.count + 1, dtype=bool)
    changed_new[a[changed_old[b]]] = True
    # A changed mark grew when its partners now cover more than it did.
    area_now = np.bincount(b, weights=new.areas[a], minlength=old.count + 1)
    grown = changed_old & (area_now > old.areas)
    removed = partners_of_old == 0
    added = partners_of_new == 0
    removed[0] = added[0] = False
    diff = _diff_image(
        old, new, removed | changed_old, added | changed_new, removed, added, band_rows
    )
    changed = int(changed_old.sum())
    merging = partners_of_new[a] >= 2  # pairs whose new mark has several old partners
    splitting = partners_of_old[b] >= 2
    return MaskComparison(
        before=old.count,
        after=new.count,
        added=int(added.sum()),
        removed=int(removed.sum()),
        changed=changed,
        grown=int(grown.sum()),
        shrunk=changed - int(grown.sum()),
        unchanged=old.count - int(removed.sum()) - changed,
        merged=int(np.unique(b[merging]).size),
        merged_into=int(np.unique(a[merging]).size),
        split=int(np.unique(b[splitting]).size),
        split_into=int(np.unique(a[splitting]).size),
        diff=diff,
    )


def _diff_image(
    old: _Marks,
    new: _Marks,
    drawn_old: np.ndarray,
    drawn_new: np.ndarray,
    removed: np.ndarray,
    added: np.ndarray,
    band_rows: int,
) -> np.ndarray:
    """Pixels only `before` has get LOST (REMOVED for a removed mark), pixels only `after` has
    get GAINED (ADDED); only for marks counted as a change."""
    code_old = np.where(removed, REMOVED, np.where(drawn_old, LOST, 0)).astype(np.uint8)
    code_new = np.where(added, ADDED, np.where(drawn_new, GAINED, 0)).astype(np.uint8)
    code_old[0] = code_new[0] = 0
    diff = np.zeros(old.labels.shape, dtype=np.uint8)
    for top in range(0, diff.shape[0], band_rows):
        b = old.labels[top : top + band_rows]
        a = new.labels[top : top + band_rows]
        band = diff[top : top + band_rows]
        only_old = (a == 0) & (b > 0)
        band[only_old] = code_old[b[only_old]]
        only_new = (b == 0) & (a > 0)
        band[only_new] = code_new[a[only_new]]
    return diff
