"""The acquisition's own record of where each spectrum was shot (an imzML file), and the join of
the registered marks to those spectra.

imzML positions count from 1, x along the image's columns and y along its rows from the top
left, so the mark at grid row r, column c meets the spectrum shot at x = c + 1, y = r + 1.
Serpentine rasters and regions of interest that skip nodes need nothing special: spectra are
found by their position, never by their order. An acquisition mirrored or transposed against
the microscope's image needs an Orientation; the QC says when another one fits better.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from xml.etree.ElementTree import Element, ParseError, iterparse

import numpy as np

from model.errors import AmsegError
from model.register.records import MarkRecord

LISTED_IDS = 10
"""Ids of marks without a spectrum named in the warning; all of them are in qc.json."""


class AcquisitionError(AmsegError):
    """An imzML file cannot be read, or does not fit the grid it is joined to."""


@dataclass(frozen=True)
class Orientation:
    """How the imzML's grid lies on the image: transposed first (x and y swapped), then
    mirrored along x (columns counted from the right) and/or along y (rows from the bottom)."""

    flip_x: bool = False
    flip_y: bool = False
    transpose: bool = False

    def describe(self) -> str:
        """E.g. 'flip_x + transpose', or 'as it is' for none."""
        names = [field.name for field in dataclasses.fields(self) if getattr(self, field.name)]
        return " + ".join(names) or "as it is"


ORIENTATIONS = tuple(Orientation(*flags) for flags in itertools.product((False, True), repeat=3))


@dataclass(frozen=True)
class Acquisition:
    """Spectrum positions in file order (x, y from 1, as in the imzML), the file's name for
    messages, and how the grid lies on the image."""

    name: str
    x: np.ndarray  # (n,) int64
    y: np.ndarray  # (n,) int64
    orientation: Orientation = Orientation()

    @property
    def spectra(self) -> int:
        return int(self.x.size)

    def oriented(self, orientation: Orientation) -> Acquisition:
        return dataclasses.replace(self, orientation=orientation)

    def extent(self) -> tuple[int, int]:
        """The rows and columns the positions need (after a transpose)."""
        across, down = self._axes()
        return int(down.max()), int(across.max())

    def node_spectra(self, rows: int, cols: int) -> np.ndarray:
        """(rows * cols,) int64: the index of the spectrum shot at each node (id - 1), -1 where
        none was. Raises AcquisitionError when a position lies outside the grid."""
        need_rows, need_cols = self.extent()
        if need_rows > rows or need_cols > cols:
            raise AcquisitionError(
                f"{self.name} has spectra up to x={need_cols}, y={need_rows} (oriented "
                f"{self.orientation.describe()}), outside the {rows} x {cols} grid: give rows "
                "and cols that hold them, or leave them out to take them from the imzML"
            )
        across, down = self._axes()
        col = cols - across if self.orientation.flip_x else across - 1
        row = rows - down if self.orientation.flip_y else down - 1
        table = np.full(rows * cols, -1, dtype=np.int64)
        table[row * cols + col] = np.arange(self.spectra)
        return table

    def _axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions along the image's columns and rows, from 1."""
        return (self.y, self.x) if self.orientation.transpose else (self.x, self.y)


def read_imzml(path: str | Path, orientation: Orientation = Orientation()) -> Acquisition:
    """The spectrum positions of an imzML file, read with pyimzML from the XML alone (the .ibd
    binary is not needed). Raises AcquisitionError for a file that is not imzML, spectra
    without a position, several z levels, or two spectra at one position."""
    path = Path(path)
    _check_root(path)
    try:
        from pyimzml.ImzMLParser import ImzMLParser

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyimzML warns about unknown accessions
            coordinates = ImzMLParser(str(path), parse_lib="ElementTree", ibd_file=None).coordinates
    except Exception as error:  # pyimzML raises many kinds on a malformed file: say why
        _explain_failure(path, error)
    return _checked(path.name, np.asarray(coordinates, dtype=np.int64), orientation)


def _check_root(path: Path) -> None:
    """An imzML file is XML whose root element is <mzML>; say which it is not."""
    try:
        _, root = next(iterparse(path, events=("start",)))
    except FileNotFoundError:
        raise AcquisitionError(f"{path}: no such file") from None
    except (ParseError, StopIteration) as error:
        raise AcquisitionError(f"{path.name}: not an imzML file (not XML: {error})") from None
    if root.tag.rpartition("}")[2] != "mzML":
        raise AcquisitionError(
            f"{path.name}: not an imzML file (its root element is <{root.tag}>, not <mzML>)"
        )


def _explain_failure(path: Path, error: Exception) -> NoReturn:
    """Why pyimzML failed on an mzML file, in words: no spectra, a spectrum without a
    position, or else pyimzML's own error."""
    seen = 0
    try:
        for _, element in iterparse(path, events=("end",)):
            if element.tag.rpartition("}")[2] != "spectrum":
                continue
            if not _has_position(element):
                raise AcquisitionError(
                    f"{path.name}: spectrum {seen} (from 0) has no position (its scan needs "
                    "'position x' IMS:1000050 and 'position y' IMS:1000051)"
                ) from None
            seen += 1
            element.clear()
    except ParseError as parse_error:  # e.g. a truncated file
        error = parse_error
    if not seen:
        raise AcquisitionError(f"{path.name}: no spectra, so no positions to join marks to")
    detail = str(error) or type(error).__name__
    raise AcquisitionError(f"{path.name}: not a readable imzML file ({detail})") from None


def _has_position(spectrum: Element) -> bool:
    accessions = {param.get("accession") for param in spectrum.iter()}
    return {"IMS:1000050", "IMS:1000051"} <= accessions


def _checked(name: str, xyz: np.ndarray, orientation: Orientation) -> Acquisition:
    if xyz.size == 0:
        raise AcquisitionError(f"{name}: no spectra, so no positions to join marks to")
    if np.unique(xyz[:, 2]).size > 1:
        raise AcquisitionError(f"{name}: spectra on several z levels; amseg joins one plane")
    if xyz[:, :2].min() < 1:
        raise AcquisitionError(f"{name}: positions must count from 1, found {xyz[:, :2].min()}")
    keys = (xyz[:, 1] - 1) * (int(xyz[:, 0].max()) + 1) + xyz[:, 0]
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if (counts > 1).any():
        index = int(first[np.argmax(counts > 1)])
        x, y = int(xyz[index, 0]), int(xyz[index, 1])
        raise AcquisitionError(f"{name}: several spectra at x={x}, y={y} (spectrum {index} first)")
    return Acquisition(name, xyz[:, 0].copy(), xyz[:, 1].copy(), orientation)


def grid_of(rows: int | None, cols: int | None, acquisition: Acquisition | None):
    """The grid to number on: rows and cols as given, else the acquisition's extent; None
    without either. Raises AcquisitionError for one of rows, cols alone."""
    if (rows is None) != (cols is None):
        raise AcquisitionError("give both rows and cols, or neither (with an imzML)")
    if rows is not None:
        return rows, cols
    return None if acquisition is None else acquisition.extent()


def with_spectra(marks: list[MarkRecord], node_spectrum: np.ndarray) -> list[MarkRecord]:
    """The marks with the spectrum of their node (None where the node has none)."""
    spectra = node_spectrum[np.array([m.id - 1 for m in marks], dtype=np.int64)]
    return [
        dataclasses.replace(mark, spectrum=int(s) if s >= 0 else None)
        for mark, s in zip(marks, spectra, strict=True)
    ]


def acquisition_qc(
    acquisition: Acquisition, marks: list[MarkRecord], rows: int, cols: int
) -> tuple[dict, list[str]]:
    """qc.json's `acquisition` record and its warning: marks on nodes without a spectrum are
    a sign of the wrong orientation (no spectrum, no laser shot, no mark), so each other
    orientation that fits the grid is tried too and the best one named."""
    ids = np.array([m.id for m in marks], dtype=np.int64)
    without = [m.id for m in marks if m.spectrum is None]
    record = {
        "file": acquisition.name,
        "spectra": acquisition.spectra,
        **dataclasses.asdict(acquisition.orientation),
        "marks_with_spectrum": len(marks) - len(without),
        "marks_without_spectrum": len(without),
        "marks_without_spectrum_ids": without,
        "spectra_without_mark": acquisition.spectra - (len(marks) - len(without)),
        "better_orientation": None,
    }
    if not without:
        return record, []
    best, best_count = _best_orientation(acquisition, ids, rows, cols)
    named = ", ".join(str(i) for i in without[:LISTED_IDS])
    if len(without) > LISTED_IDS:
        named += f" and {len(without) - LISTED_IDS} more"
    warning = (
        f"{len(without)} of {len(marks)} marks lie on grid nodes without a spectrum in "
        f"{acquisition.name} (ids {named}): is the acquisition mirrored or transposed "
        "against the image?"
    )
    if best is not None:
        record["better_orientation"] = {**dataclasses.asdict(best), "marks_without": best_count}
        warning += f" Oriented {best.describe()} only {best_count} would; try that"
    return record, [warning]


def _best_orientation(
    acquisition: Acquisition, ids: np.ndarray, rows: int, cols: int
) -> tuple[Orientation | None, int]:
    """The orientation (fitting the grid) that leaves the fewest marks without a spectrum, if
    it leaves fewer than the current one."""
    current = acquisition.orientation
    best, best_count = (
        None,
        int(np.count_nonzero(acquisition.node_spectra(rows, cols)[ids - 1] < 0)),
    )
    for orientation in ORIENTATIONS:
        candidate = acquisition.oriented(orientation)
        need_rows, need_cols = candidate.extent()
        if orientation == current or need_rows > rows or need_cols > cols:
            continue
        count = int(np.count_nonzero(candidate.node_spectra(rows, cols)[ids - 1] < 0))
        if count < best_count:
            best, best_count = orientation, count
    return best, best_count
