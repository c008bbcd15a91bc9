"""The acquisition lattice: where node (row, col) lies in the image, which node a point is near,
and the least-squares refit of a lattice to marks whose nodes are known."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_MARKS = 4
"""Fewer marks than this cannot pin down a lattice (origin + two vectors)."""

MATCH_CUTOFF = 0.5
"""A mark is matched to a node only within this fraction of the pitch."""

TESTED_ANGLE = 12.0
"""Rotations beyond this (degrees) are outside the range the registration was tested on."""


@dataclass
class Lattice:
    """Node (i, j) sits at origin + j * a_x + i * a_y + (i mod 2) * shift + row_offset[i]
    + col_offset[j].

    i = row, j = col. `shift` is the offset of odd rows against even ones: a serpentine raster
    (stage backlash) moves alternate rows along the scan direction; it is zero on plain grids.
    `row_offset` holds what is left per row (rows laid down a little off their place, or
    unevenly spaced, in pixels) for lattice rows row_base, row_base + 1, ...; rows outside the
    table have none. `col_offset` does the same per column (col_base, col_base + 1, ...).
    """

    origin: np.ndarray
    a_x: np.ndarray
    a_y: np.ndarray
    shift: np.ndarray
    row_offset: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    row_base: int = 0
    col_offset: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    col_base: int = 0

    @property
    def matrix(self) -> np.ndarray:
        return np.column_stack([self.a_x, self.a_y])

    @property
    def pitch(self) -> float:
        return float(min(np.hypot(*self.a_x), np.hypot(*self.a_y)))

    def own_offset(self, row: np.ndarray) -> np.ndarray:
        """(n, 2) per-row offsets (pixels) of lattice rows `row` (float, NaN allowed)."""
        return _table_lookup(self.row_offset, self.row_base, row)

    def col_offset_of(self, col: np.ndarray) -> np.ndarray:
        """(n, 2) per-column offsets (pixels) of lattice columns `col` (float, NaN allowed)."""
        return _table_lookup(self.col_offset, self.col_base, col)

    def row_correction(self, row: np.ndarray) -> np.ndarray:
        """(n, 2) pixel offset of the nodes of lattice rows `row`: odd-row shift + own offset."""
        return np.mod(row, 2)[:, None] * self.shift + self.own_offset(row)

    def _rows_and_raw(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row of each point (the nearer of the two around it, with its correction), raw lattice
        coordinates and the correction of that row in lattice units."""
        inverse = np.linalg.inv(self.matrix)
        raw = (points - self.origin) @ inverse.T
        low = np.floor(raw[:, 1])
        best_row, best_corr, best_gap = low, None, None
        for row in (low - 1.0, low, low + 1.0):
            corr = self.row_correction(row) @ inverse.T
            gap = np.abs(raw[:, 1] - row - corr[:, 1])
            if best_gap is None:
                best_row, best_corr, best_gap = row, corr, gap
                continue
            better = gap < best_gap
            best_row = np.where(better, row, best_row)
            best_corr = np.where(better[:, None], corr, best_corr)
            best_gap = np.where(better, gap, best_gap)
        return best_row, raw, best_corr

    def _nearest_col(self, col_frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Column nearest to each column coordinate, its own offset counted, and that offset
        in lattice units."""
        inverse = np.linalg.inv(self.matrix)
        low = np.floor(col_frac)
        best_col, best_corr, best_gap = low, None, None
        for col in (low - 1.0, low, low + 1.0, low + 2.0):
            corr = self.col_offset_of(col) @ inverse.T
            gap = np.abs(col_frac - col - corr[:, 0])
            if best_gap is None:
                best_col, best_corr, best_gap = col, corr, gap
                continue
            better = gap < best_gap
            best_col = np.where(better, col, best_col)
            best_corr = np.where(better[:, None], corr, best_corr)
            best_gap = np.where(better, gap, best_gap)
        return best_col, best_corr

    def fractional(self, points: np.ndarray) -> np.ndarray:
        """Lattice coordinates (j, i) of (x, y) points, corrected for the shift and offset of
        their row and the offset of their column."""
        _, raw, corr = self._rows_and_raw(points)
        frac = raw - corr
        if self.col_offset.shape[0]:
            _, col_corr = self._nearest_col(frac[:, 0])
            frac = frac - col_corr
        return frac

    def position(self, ji: np.ndarray) -> np.ndarray:
        """(x, y) position of lattice coordinates (j, i)."""
        return (
            self.origin
            + ji @ self.matrix.T
            + self.row_correction(np.rint(ji[:, 1]))
            + self.col_offset_of(np.rint(ji[:, 0]))
        )

    def candidates(self, points: np.ndarray) -> np.ndarray:
        """(n, 6, 2) nearby nodes (j, i): the point's row and those around it, in each the two
        columns on either side of the point."""
        inverse = np.linalg.inv(self.matrix)
        row, raw, _ = self._rows_and_raw(points)
        out = np.empty((points.shape[0], 6, 2))
        for k, step in enumerate((-1.0, 0.0, 1.0)):
            r = row + step
            col_frac = raw[:, 0] - (self.row_correction(r) @ inverse.T)[:, 0]
            base = np.floor(col_frac)
            if self.col_offset.shape[0]:
                nearest, corr = self._nearest_col(col_frac)
                base = np.where(col_frac - corr[:, 0] >= nearest, nearest, nearest - 1.0)
            out[:, 2 * k, 0], out[:, 2 * k + 1, 0] = base, base + 1.0
            out[:, 2 * k : 2 * k + 2, 1] = r[:, None]
        return out

    def reindexed(self, j0: int, i0: int) -> None:
        """Renumber so that node (j0, i0) becomes (0, 0)."""
        self.origin = self.origin + self.matrix @ np.array([j0, i0], dtype=np.float64)
        if i0 % 2:
            self.origin = self.origin + self.shift
            self.shift = -self.shift
        self.row_base -= i0
        self.col_base -= j0


def refit(lattice: Lattice, index: np.ndarray, points: np.ndarray) -> None:
    """Least-squares origin, vectors and odd-row shift from integer indices; keeps what the
    points cannot determine (a single row, a single column, a single parity)."""
    if index.shape[0] < 2:
        return
    odd = np.mod(index[:, 1], 2)
    has_cols = np.unique(index[:, 0]).size >= 2
    has_rows = np.unique(index[:, 1]).size >= 2
    has_parity = 0 < odd.sum() < odd.size and np.unique(index[:, 1]).size >= 3
    columns = [np.ones(index.shape[0])]
    target = points - lattice.own_offset(index[:, 1]) - lattice.col_offset_of(index[:, 0])
    for flag, values, vector in (
        (has_cols, index[:, 0], lattice.a_x),
        (has_rows, index[:, 1], lattice.a_y),
        (has_parity, odd, lattice.shift),
    ):
        if flag:
            columns.append(values)
        else:
            target -= values[:, None] * vector
    design = np.column_stack(columns)
    if np.linalg.matrix_rank(design) < design.shape[1]:
        return
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    lattice.origin = coef[0]
    k = 1
    if has_cols:
        lattice.a_x = coef[k]
        k += 1
    if has_rows:
        lattice.a_y = coef[k]
        k += 1
    if has_parity:
        lattice.shift = coef[k]


def _table_lookup(table: np.ndarray, base: int, index: np.ndarray) -> np.ndarray:
    """(n, 2) rows of an offset table for lattice indices `index`; zero outside the table."""
    offset = np.zeros((index.shape[0], 2))
    if table.shape[0] == 0:
        return offset
    at = np.where(np.isfinite(index), index - base, -1.0)
    inside = (at >= 0) & (at < table.shape[0])
    offset[inside] = table[at[inside].astype(np.int64)]
    return offset
