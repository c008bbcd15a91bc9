"""The join of registered marks to an acquisition's spectra (imzML positions): serpentine
rasters, nodes left out of the region of interest, mirrored and transposed acquisitions, and
the errors in words."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from model.register.acquisition import (
    AcquisitionError,
    Orientation,
    grid_of,
    read_imzml,
)
from model.register.registration import register_marks
from model.register.writers import write_registration
from tests.model.grid_masks import GridMask, GridSpec, make_grid_mask
from tests.model.register.imzml_files import serpentine, write_imzml
from tests.model.register.test_registration import assert_ids_right

ROWS, COLS = 6, 8
# Nodes outside the region of interest: two corners, not symmetric, so a mirror shows.
SKIPPED = {(0, 0), (0, 1), (1, 0), (5, 7)}


@pytest.fixture(scope="module")
def grid() -> GridMask:
    return make_grid_mask(GridSpec(rows=ROWS, cols=COLS, angle_deg=2, seed=71))


def shot_only(grid: GridMask, skipped: set[tuple[int, int]]) -> np.ndarray:
    """The grid's mask without the marks of nodes that were never shot."""
    ids = [row * COLS + col + 1 for row, col in skipped]
    return grid.mask & ~np.isin(grid.labels, ids)


def spectrum_of(positions: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """(row, col) -> index of the spectrum shot there, from the writer's own order."""
    return {(y - 1, x - 1): index for index, (x, y) in enumerate(positions)}


def test_serpentine_acquisition_gives_each_mark_its_spectrum(tmp_path: Path, grid) -> None:
    positions = serpentine(ROWS, COLS)
    acquisition = read_imzml(write_imzml(tmp_path / "run.imzML", positions))

    assert acquisition.spectra == ROWS * COLS
    assert grid_of(None, None, acquisition) == (ROWS, COLS)  # the grid from the imzML
    registration = register_marks(grid.mask, ROWS, COLS, acquisition=acquisition)

    assert_ids_right(registration, grid)
    expected = spectrum_of(positions)
    assert {(m.row, m.col): m.spectrum for m in registration.marks} == expected
    assert expected[(1, 0)] == 2 * COLS - 1  # row 1 runs right to left
    qc = registration.qc["acquisition"]
    assert qc["marks_with_spectrum"] == ROWS * COLS and qc["marks_without_spectrum"] == 0
    assert registration.qc["warnings"] == []


def test_skipped_nodes_have_no_spectrum_and_no_false_warnings(tmp_path: Path, grid) -> None:
    positions = serpentine(ROWS, COLS, skip=SKIPPED)
    acquisition = read_imzml(write_imzml(tmp_path / "roi.imzML", positions))
    registration = register_marks(shot_only(grid, SKIPPED), ROWS, COLS, acquisition=acquisition)

    expected = spectrum_of(positions)
    assert {(m.row, m.col): m.spectrum for m in registration.marks} == expected
    qc = registration.qc
    assert qc["missing"] == len(SKIPPED)  # the grid's nodes without a mark, as always
    assert qc["acquisition"]["spectra_without_mark"] == 0
    # Nodes never shot are neither missing coverage nor empty edges.
    assert qc["warnings"] == []


def test_mirrored_acquisition_is_flagged_and_fixed_by_flip_x(tmp_path: Path, grid) -> None:
    # The instrument's x runs right to left on the image.
    positions = [(COLS + 1 - x, y) for x, y in serpentine(ROWS, COLS, skip=SKIPPED)]
    path = write_imzml(tmp_path / "mirrored.imzML", positions)
    mask = shot_only(grid, SKIPPED)

    as_is = register_marks(mask, ROWS, COLS, acquisition=read_imzml(path))
    record = as_is.qc["acquisition"]
    assert record["marks_without_spectrum"] > 0
    assert record["better_orientation"] == {
        "flip_x": True,
        "flip_y": False,
        "transpose": False,
        "marks_without": 0,
    }
    assert any("Oriented flip_x only 0 would" in warning for warning in as_is.qc["warnings"])

    flipped = register_marks(
        mask, ROWS, COLS, acquisition=read_imzml(path, Orientation(flip_x=True))
    )
    expected = {(y - 1, COLS - x): index for index, (x, y) in enumerate(positions)}
    assert {(m.row, m.col): m.spectrum for m in flipped.marks} == expected
    assert flipped.qc["warnings"] == []


def test_transposed_acquisition(tmp_path: Path, grid) -> None:
    positions = [(y, x) for x, y in serpentine(ROWS, COLS)]  # x down the rows
    path = write_imzml(tmp_path / "transposed.imzML", positions)
    assert grid_of(None, None, read_imzml(path)) == (COLS, ROWS)
    acquisition = read_imzml(path, Orientation(transpose=True))
    assert grid_of(None, None, acquisition) == (ROWS, COLS)
    registration = register_marks(grid.mask, ROWS, COLS, acquisition=acquisition)
    expected = {(x - 1, y - 1): index for index, (x, y) in enumerate(positions)}
    assert {(m.row, m.col): m.spectrum for m in registration.marks} == expected


def test_ams_csv_gets_a_spectrum_column_empty_where_none(tmp_path: Path, grid) -> None:
    positions = serpentine(ROWS, COLS, skip={(2, 3)})
    acquisition = read_imzml(write_imzml(tmp_path / "hole.imzML", positions))
    registration = register_marks(grid.mask, ROWS, COLS, acquisition=acquisition)
    written = write_registration(tmp_path / "out", registration)
    with written["csv"].open() as handle:
        rows = {(int(r["row"]), int(r["col"])): r for r in csv.DictReader(handle)}
    assert list(next(iter(rows.values())))[-1] == "spectrum"
    assert rows[(2, 3)]["spectrum"] == ""  # a mark where no spectrum was shot
    assert int(rows[(0, 1)]["spectrum"]) == 1
    assert registration.qc["acquisition"]["marks_without_spectrum_ids"] == [2 * COLS + 3 + 1]


def test_the_ibd_is_read_never(tmp_path: Path) -> None:
    path = write_imzml(tmp_path / "with.imzML", serpentine(2, 3), keep_ibd=True)
    path.with_suffix(".ibd").write_bytes(b"not the binary")  # it would fail if it were read
    assert read_imzml(path).spectra == 6


def _minimal_mzml(body: str) -> str:
    return f'<?xml version="1.0"?><mzML xmlns="http://psi.hupo.org/ms/mzml">{body}</mzML>'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n not xml", "not an imzML file (not XML"),
        (b"<html><body/></html>", "its root element is <html>, not <mzML>"),
        (_minimal_mzml("<run><spectrumList count='0'/></run>").encode(), "no spectra"),
    ],
)
def test_files_that_are_not_imzml(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.imzML"
    path.write_bytes(content)
    with pytest.raises(AcquisitionError, match=message.replace("(", r"\(")):
        read_imzml(path)


def test_spectrum_without_position(tmp_path: Path) -> None:
    path = write_imzml(tmp_path / "nopos.imzML", serpentine(2, 2))
    text = path.read_text(encoding="latin-1")
    path.write_text(text.replace('accession="IMS:1000050"', 'accession="IMS:1999999"', 1))
    with pytest.raises(AcquisitionError, match=r"spectrum 0 \(from 0\) has no position"):
        read_imzml(path)


def test_truncated_imzml(tmp_path: Path) -> None:
    path = write_imzml(tmp_path / "cut.imzML", serpentine(3, 3))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AcquisitionError, match=r"cut\.imzML: not a readable imzML file"):
        read_imzml(path)


def test_two_spectra_at_one_position(tmp_path: Path) -> None:
    path = write_imzml(tmp_path / "twice.imzML", [(1, 1), (2, 1), (2, 1)])
    with pytest.raises(AcquisitionError, match="several spectra at x=2, y=1"):
        read_imzml(path)


def test_acquisition_outside_the_given_grid(tmp_path: Path, grid) -> None:
    acquisition = read_imzml(write_imzml(tmp_path / "run.imzML", serpentine(ROWS, COLS)))
    with pytest.raises(AcquisitionError, match=f"up to x={COLS}, y={ROWS}.*outside the 6 x 7"):
        register_marks(grid.mask, ROWS, COLS - 1, acquisition=acquisition)
    with pytest.raises(AcquisitionError, match="both rows and cols"):
        grid_of(ROWS, None, acquisition)
    assert grid_of(None, None, None) is None
