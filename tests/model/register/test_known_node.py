"""A mark whose grid place a person knows anchors the grid there."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.errors import RegistrationError
from model.register.records import KnownNode
from model.register.registration import register_marks
from tests.model.grid_masks import GridSpec, make_grid_mask
from tests.model.register.test_registration import assert_ids_right


def centre_of(labels: np.ndarray, mark_id: int) -> tuple[float, float]:
    ys, xs = np.nonzero(labels == mark_id)
    return float(xs.mean()), float(ys.mean())


def test_known_node_settles_a_missing_first_row() -> None:
    # Without it the marks are numbered from the first occupied row (ambiguous).
    spec = GridSpec(rows=8, cols=9, missing_rows=(0,), angle_deg=3, seed=29)
    grid = make_grid_mask(spec)
    x, y = centre_of(grid.labels, 2 * 9 + 4 + 1)  # row 2, column 4
    registration = register_marks(grid.mask, 8, 9, known_node=KnownNode(x, y, row=2, col=4))
    assert_ids_right(registration, grid)
    qc = registration.qc
    assert not qc["ambiguous_anchor"]
    assert qc["known_node"] == {"x": x, "y": y, "row": 2, "col": 4}
    assert qc["missing_ids"] == list(range(1, 10))
    json.dumps(qc)


def test_known_node_overrides_the_window_with_most_marks() -> None:
    grid = make_grid_mask(GridSpec(rows=6, cols=7, angle_deg=-4, seed=31))
    x, y = centre_of(grid.labels, 1)  # the top-left mark, said to be at row 1, column 2
    registration = register_marks(grid.mask, 6, 7, known_node=KnownNode(x, y, row=1, col=2))
    by_id = {mark.id: mark for mark in registration.marks}
    assert by_id[1 * 7 + 2 + 1].x == pytest.approx(x, abs=2)
    # Everything moved one row down and two columns right: the last row and the last two
    # columns of marks fall off the grid.
    assert registration.qc["found"] == 5 * 5
    assert any("got no id" in warning for warning in registration.qc["warnings"])
    for mark in registration.marks:  # plain discs: the centroid lies on the mark
        true_id = (mark.row - 1) * 7 + (mark.col - 2) + 1
        assert grid.labels[round(mark.y), round(mark.x)] == true_id


def test_known_node_off_the_grid_or_between_nodes_is_refused() -> None:
    grid = make_grid_mask(GridSpec(rows=5, cols=6, seed=37))
    x, y = centre_of(grid.labels, 8)
    with pytest.raises(RegistrationError, match="off the 5x6 grid"):
        register_marks(grid.mask, 5, 6, known_node=KnownNode(x, y, row=5, col=0))
    with pytest.raises(RegistrationError, match="off the 5x6 grid"):
        register_marks(grid.mask, 5, 6, known_node=KnownNode(x, y, row=0, col=-1))
    x2, y2 = centre_of(grid.labels, 9)
    x3, y3 = centre_of(grid.labels, 14)
    between = ((x + x2 + x3) / 3.0 + 0.2 * (x2 - x), (y + y2 + y3) / 3.0)
    with pytest.raises(RegistrationError, match="from the nearest node"):
        register_marks(grid.mask, 5, 6, known_node=KnownNode(*between, row=1, col=1))
