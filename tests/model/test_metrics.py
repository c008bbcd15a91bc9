"""Ground-truth scores."""

import numpy as np
import pytest

from model.metrics import dice, mark_id_accuracy


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
