"""Rows and columns spaced unevenly (a stage step off): a wide step is not an empty row unless
the grid's size says a row is missing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model.register.spacing import find_lines, line_steps
from tests.model.grid_masks import GridSpec, make_grid_mask
from tests.model.register.cases import HARD, register_grid
from tests.model.register.test_registration import assert_ids_right


def assert_complete(grid_spec: GridSpec) -> None:
    """Every id right, every node found, and no warning about missing rows or anchoring."""
    grid = make_grid_mask(grid_spec)
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    qc = registration.qc
    assert qc["found"] == qc["expected"] == grid_spec.rows * grid_spec.cols
    assert qc["missing_ids"] == []
    assert not qc["ambiguous_anchor"]


@pytest.mark.parametrize("where", [2, 5, 8])
@pytest.mark.parametrize("extra", [0.5, 0.7])
def test_a_row_step_of_one_and_a_half_pitches_is_no_empty_row(where: int, extra: float) -> None:
    spec = GridSpec(
        rows=11, cols=11, row_gaps=((where, extra),), angle_deg=2, jitter=0.03, seed=where
    )
    assert_complete(spec)


@pytest.mark.parametrize("where", [2, 5, 8])
def test_a_column_step_of_one_and_four_tenths_pitches_is_no_empty_column(where: int) -> None:
    spec = GridSpec(
        rows=11, cols=11, col_gaps=((where, 0.6),), angle_deg=-3, jitter=0.03, seed=where
    )
    assert_complete(spec)
    spec = dataclasses.replace(spec, col_gaps=((where, 0.4),), seed=where + 1)
    assert_complete(spec)


@pytest.mark.parametrize("seed", [3, 8, 12])
def test_every_row_step_off_by_up_to_a_fifth(seed: int) -> None:
    spec = GridSpec(rows=19, cols=16, step_jitter=0.2, angle_deg=4, jitter=0.02, seed=seed)
    assert_complete(spec)


@pytest.mark.parametrize("angle", [-6, 5])
def test_uneven_rows_and_columns_with_all_defects(angle: float) -> None:
    spec = dataclasses.replace(
        HARD,
        rows=14,
        cols=13,
        missing_rows=(),
        missing_cols=(),
        row_gaps=((4, 0.5),),
        col_gaps=((9, 0.4),),
        step_jitter=0.15,
        angle_deg=angle,
        seed=49 + angle,
    )
    grid = make_grid_mask(spec)
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    assert not registration.qc["ambiguous_anchor"]


@pytest.mark.parametrize("seed", [6, 7, 9])
def test_a_row_really_missing_among_uneven_rows_stays_empty(seed: int) -> None:
    spec = GridSpec(rows=12, cols=10, missing_rows=(5,), step_jitter=0.15, angle_deg=2, seed=seed)
    grid = make_grid_mask(spec)
    registration = register_grid(grid)
    assert_ids_right(registration, grid)
    assert registration.qc["missing_ids"] == list(range(51, 61))


def test_steps_between_lines_follow_the_grid_size() -> None:
    wide = np.array([0.0, 1.0, 2.0, 3.5, 4.5])
    assert line_steps(wide, 5).tolist() == [1, 1, 1, 1]  # 5 lines, 5 rows: no empty row
    assert line_steps(wide, 6).tolist() == [1, 1, 2, 1]  # a row is missing: it is there
    assert line_steps(wide, 9).tolist() == [1, 1, 2, 1]
    slightly = np.array([0.0, 1.0, 2.0, 3.3, 4.3])
    assert line_steps(slightly, 6).tolist() == [1, 1, 1, 1]  # 1.3 pitches: an uneven step
    double = np.array([0.0, 1.0, 3.0, 4.0, 5.0])
    assert line_steps(double, 6).tolist() == [1, 2, 1, 1]
    assert line_steps(double, 5).tolist() == [1, 1, 1, 1]  # no room for an empty row
    assert line_steps(double * 2.0, 12) is None  # a lattice on the wrong basis


def test_lines_ignore_doubles_and_stray_marks() -> None:
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(6.0), 12) + rng.normal(0, 0.03, 72)
    doubles = np.arange(6.0) + 0.35  # a fainter copy under some marks
    stray = np.array([2.5, 4.55])
    lines = find_lines(np.concatenate([rows, doubles, stray]))
    assert lines is not None
    np.testing.assert_allclose(lines.centre, np.arange(6.0), atol=0.05)
    assert np.all(lines.member[:72] == np.repeat(np.arange(6), 12))
    assert np.all(lines.member[-2:] == -1)
