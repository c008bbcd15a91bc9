"""Ground-truth scores."""

import cv2
import numpy as np
import pytest

from model.metrics import ERROR_KINDS, dice, dice_counts, error_kinds, mark_id_accuracy


def test_dice():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, :2] = True
    assert dice(a, b) == 0.0
    b[0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)


def test_mark_id_accuracy_counts_marks_by_majority():
    truth = np.zeros((3, 12), np.uint16)
    truth[:, 0:3], truth[:, 4:7], truth[:, 8:11] = 1, 2, 3
    found = truth.copy()
    assert mark_id_accuracy(found, truth) == 1.0
    found[0, 0:3] = 0  # mark 1 loses a row of pixels: still right by majority
    found[:, 4:7] = 3  # mark 2 gets its neighbour's id: wrong
    found[:, 8:11] = 0  # mark 3 gets no id: wrong
    assert mark_id_accuracy(found, truth) == pytest.approx(1 / 3)
    assert mark_id_accuracy(found, np.zeros_like(truth)) == 1.0


def test_mark_id_accuracy_of_a_huge_grid_needs_no_table_of_all_id_pairs():
    """Ids of a 2000 x 2000 grid: a dense (true, found) vote table would take 128 TB."""
    truth = np.array([[1, 1, 0, 3_999_999, 3_999_999, 4_000_000]], np.uint32)
    found = np.array([[1, 2, 0, 3_999_999, 3_999_999, 7]], np.uint32)
    assert mark_id_accuracy(found, truth) == pytest.approx(2 / 3)
    tie = np.array([[5, 9, 0]], np.uint32)  # a tie of votes goes to the lower id, as argmax
    assert mark_id_accuracy(tie, np.array([[9, 9, 0]], np.uint32)) == 0.0


def test_error_kinds_split_every_wrong_pixel_by_where_it_is():
    truth = np.zeros((80, 120), np.uint8)
    for x in (20, 60, 100):
        cv2.circle(truth, (x, 30), 8, 1, -1)
    pred = np.zeros_like(truth)
    cv2.circle(pred, (20, 30), 9, 1, -1)  # one px too wide all round: outline
    # mark 2 (x=60) is missed entirely
    cv2.circle(pred, (100, 30), 8, 1, -1)
    pred[30, 108:118] = 1  # a spur from mark 3 (whose edge pixel is x=108) reaching 9 px out
    pred[60:66, 40:46] = 1  # a blob touching no mark: a false mark
    truth, pred = truth > 0, pred > 0
    kinds = dict(zip(ERROR_KINDS, error_kinds(pred, truth, ring=2).tolist(), strict=True))
    _, fp, fn = dice_counts(pred, truth)
    assert sum(kinds.values()) == fp + fn
    assert kinds["false mark"] == 36
    assert kinds["missed mark"] == int(truth[:, 40:80].sum())
    grown = int(pred[:, :40].sum() - truth[:, :40].sum())
    spur_beyond_ring = 9 - 2  # x=109..117 lie 1..9 px out; the first 2 are "outline"
    assert kinds["outline"] == grown + 2
    assert kinds["elsewhere"] == spur_beyond_ring
    assert error_kinds(truth, truth).sum() == 0
