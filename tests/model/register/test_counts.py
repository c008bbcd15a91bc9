"""The counts and warnings a person reads: one meaning each, the same wherever they appear."""

from __future__ import annotations

import cv2
import numpy as np

from model.register.marks import count_objects
from model.register.registration import register_marks
from tests.model.grid_masks import GridSpec, make_grid_mask
from tests.model.register.cases import HARD, register_grid
from tests.model.register.test_registration import assert_ids_right


def test_an_empty_row_and_columns_inside_the_grid_are_named() -> None:
    spec = GridSpec(rows=10, cols=11, missing_rows=(4,), missing_cols=(2, 8), angle_deg=4, seed=3)
    grid = make_grid_mask(spec)
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    qc = registration.qc
    assert (qc["empty_rows"], qc["empty_cols"]) == ([4], [2, 8])
    row_warning = next(w for w in qc["warnings"] if w.startswith("row 4 has no marks"))
    assert "counted from 0, as in ams.csv: row 4 = ids 45 to 55" in row_warning
    assert "are rows/cols right?" in row_warning
    column_warning = next(w for w in qc["warnings"] if w.startswith("columns 2, 8 have no marks"))
    assert "column 2 = ids 3, 14, …" in column_warning
    assert qc["missing"] == len(qc["missing_ids"]) == 110 - qc["found"]


def test_an_empty_row_at_the_edge_gets_the_milder_warning() -> None:
    grid = make_grid_mask(GridSpec(rows=8, cols=9, missing_cols=(8,), seed=31))
    qc = register_grid(grid).qc
    assert qc["empty_cols"] == [8]
    assert not any("no marks" in warning for warning in qc["warnings"])
    assert any("span only 8 of 8 rows and 8 of 9 columns" in w for w in qc["warnings"])


def test_mark_sized_objects_without_an_id_are_extra_and_specks_are_not() -> None:
    # Registered on one column fewer than drawn: the last column's marks are extra.
    grid = make_grid_mask(GridSpec(rows=6, cols=7, specks=30, dust=4, angle_deg=2, seed=5))
    mask = grid.mask.astype(np.uint8)
    ys, xs = np.nonzero(grid.labels == 2 * 7 + 3 + 1)
    between = (round(xs.mean() + 15), round(ys.mean() + 15))  # a mark-sized blob mid-cell
    cv2.circle(mask, between, 9, 1, -1)
    registration = register_marks(mask, 6, 6)
    qc = registration.qc
    assert qc["found"] == 36 and qc["missing"] == 0
    assert qc["extra"] == 6 + 1
    assert qc["specks"] > 0 and qc["small_objects"] > 0
    extra_warning = next(w for w in qc["warnings"] if "got no id" in w)
    assert extra_warning.startswith("7 mark-sized objects got no id: 6 at lattice nodes outside")
    assert extra_warning.endswith("1 between the nodes")
    # Without a grid the same mask holds 43 mark-sized objects, counted alike.
    objects = count_objects(mask)
    assert objects["found"] == 36 + 6 + 1
    assert (objects["small_objects"], objects["specks"]) == (qc["small_objects"], qc["specks"])


def test_counts_add_up_on_a_hard_grid() -> None:
    grid = make_grid_mask(HARD)
    registration = register_grid(grid)
    qc = registration.qc
    assert qc["found"] == len(registration.marks) == len(np.unique(registration.labels)) - 1
    assert qc["found"] + qc["missing"] == qc["expected"]
    # Dust blobs (about a quarter of a mark) are small objects or, the largest, extra;
    # specks are neither.
    _, _, stats, _ = cv2.connectedComponentsWithStats(grid.noise.view(np.uint8), connectivity=8)
    dust = int(np.count_nonzero(stats[1:, cv2.CC_STAT_AREA] > 30))
    assert dust >= 3
    assert qc["extra"] + qc["small_objects"] == dust
    assert qc["specks"] >= stats.shape[0] - 1 - dust  # and crumbs of broken marks
