"""Uneven steps between rows or columns. Rows are shot one after another and a stage step can be
off, so a row may lie 1.5 pitches from the last one: the lattice would see an empty row there and
number every later row one too high. Here the marks are grouped into the lines they form across
the rows (then along them), and the grid's known size tells an uneven step from an empty row."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from model.register.lattice import Lattice, refit

BIN = 0.02
"""Histogram bin (pitches) of the marks' positions across the lines."""

SMOOTH = 0.08
"""Gaussian smoothing (pitches) of that histogram; a line is a peak of it."""

MIN_STEP = 0.5
"""Peaks closer than this (pitches) are one line with stray marks (doubles, crescent tips)."""

REACH = 0.3
"""A mark belongs to a line within this many pitches of its centre."""

WEAK_LINE = 0.5
"""A line holding fewer marks than this share of a full line (upper quartile) is no line: dust
and doubles line up by chance."""

SETTLED = 0.2
"""A line whose marks lie within this many pitches of their node (median) needs no new fit."""

SURE_GAP = 1.75
"""A step of at least this many pitches holds empty rows (round(step) - 1 of them)."""

MAYBE_GAP = 1.5
"""A step from MAYBE_GAP to SURE_GAP is one uneven step, unless the lines are fewer than the
grid's rows: then the widest of them are taken for empty rows, as many as are missing."""


@dataclass
class Lines:
    """Lines the marks form along one axis: centres (sorted, pitches) and who belongs where."""

    centre: np.ndarray  # (k,) sorted
    member: np.ndarray  # (n,) line of each mark, -1 for none


def even_steps(lattice: Lattice, points: np.ndarray, rows: int, cols: int) -> Lattice | None:
    """A copy of `lattice` whose rows, then columns, are numbered by the lines the marks form,
    with per-row and per-column offsets that put each line where its marks are; None when that
    numbering is the lattice's own (nothing to change)."""
    evened = deepcopy(lattice)
    changed = _renumber(evened, points, rows, axis=1)
    changed |= _renumber(evened, points, cols, axis=0)
    return evened if changed else None


def find_lines(coordinate: np.ndarray) -> Lines | None:
    """Group positions (pitches) into lines: peaks of their smoothed histogram, at least
    MIN_STEP apart, the denser first. None when there are too few marks or the span is absurd."""
    if coordinate.size < 2:
        return None
    low = float(coordinate.min()) - 1.0
    size = int((float(coordinate.max()) - low + 1.0) / BIN) + 1
    if size > 2_000_000:
        return None
    histogram = np.bincount(((coordinate - low) / BIN).astype(np.int64), minlength=size)
    density = gaussian_filter1d(histogram.astype(np.float64), SMOOTH / BIN, mode="constant")
    inner = density[1:-1]
    peaks = np.flatnonzero((inner > density[:-2]) & (inner >= density[2:]) & (inner > 0)) + 1
    blocked = np.zeros(size, dtype=bool)
    reach = int(MIN_STEP / BIN)
    chosen = []
    for peak in peaks[np.argsort(-density[peaks], kind="stable")]:
        if not blocked[peak]:
            chosen.append(peak)
            blocked[max(peak - reach + 1, 0) : peak + reach] = True
    centre = low + (np.sort(np.array(chosen)) + 0.5) * BIN
    # Twice: the peak is only a first guess of the line's centre.
    for _ in range(2):
        member = _nearest(coordinate, centre)
        if not (member >= 0).any():
            return None
        _, centre, mass = _per_line(coordinate[member >= 0], member[member >= 0])
    centre = centre[mass >= WEAK_LINE * np.percentile(mass, 75)]
    return Lines(centre=centre, member=_nearest(coordinate, centre))


def line_steps(centre: np.ndarray, count: int) -> np.ndarray | None:
    """Lattice steps between consecutive lines (1 = next row, 2 = one empty row between...),
    chosen so that the lines fit in `count` rows when they can. None when the typical step is
    not about one pitch (a lattice on the wrong basis is left to lose against the others)."""
    gap = np.diff(centre)
    typical = float(np.median(gap))
    if not 0.75 <= typical <= 1.33:
        return None
    gap = gap / typical
    steps = np.where(gap >= SURE_GAP, np.rint(gap), 1).astype(np.int64)
    maybe = np.flatnonzero((gap >= MAYBE_GAP) & (gap < SURE_GAP))
    for k in maybe[np.argsort(-gap[maybe], kind="stable")]:
        if steps.sum() + 1 >= count:
            break
        steps[k] = 2  # fewer lines than rows: the widest uneven steps hold the empty rows
    while steps.sum() + 1 > count and (steps > 1).any():
        # More rows than the grid has: the step that would look least stretched as one
        # row fewer gives one up.
        wide = np.flatnonzero(steps > 1)
        steps[wide[np.argmin(gap[wide] / (steps[wide] - 1))]] -= 1
    return steps


def _nearest(coordinate: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Index of the nearest centre within REACH of each position, -1 for none."""
    slot = np.searchsorted(centre, coordinate)
    below = np.clip(slot - 1, 0, centre.size - 1)
    above = np.clip(slot, 0, centre.size - 1)
    pick = np.where(coordinate - centre[below] <= centre[above] - coordinate, below, above)
    return np.where(np.abs(coordinate - centre[pick]) <= REACH, pick, -1)


def _per_line(values: np.ndarray, line: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct lines, the median of `values` on each and how many values each has."""
    keys, group, count = np.unique(line, return_inverse=True, return_counts=True)
    parts = np.split(values[np.argsort(group, kind="stable")], np.cumsum(count)[:-1])
    return keys, np.array([np.median(part) for part in parts]), count


def _renumber(lattice: Lattice, points: np.ndarray, count: int, axis: int) -> bool:
    """Number the rows (axis 1) or columns (axis 0) by their lines; False when the lattice
    already numbers them so, or the lines are more than the grid holds."""
    if axis == 1:
        # Rows from the plain lattice coordinate: the row offsets may hold the wrong rows.
        coordinate = ((points - lattice.origin) @ np.linalg.inv(lattice.matrix).T)[:, 1]
    else:
        coordinate = lattice.fractional(points)[:, 0]
    lines = find_lines(coordinate)
    if lines is None or lines.centre.size < 2 or lines.centre.size > count:
        return False
    steps = line_steps(lines.centre, count)
    if steps is None:
        return False
    index = np.concatenate([[0], np.cumsum(steps)])
    index += round(float(lines.centre[0]))
    inside = lines.member >= 0
    if inside.sum() < 4:
        return False
    new = index[lines.member[inside]].astype(np.float64)
    if _already_fits(lattice.fractional(points[inside])[:, axis], new):
        return False
    _fit_offsets(lattice, points[inside], new, axis)
    return True


def _already_fits(frac: np.ndarray, line: np.ndarray) -> bool:
    """The lattice numbers every mark by its line and puts each line near its node."""
    if not np.array_equal(np.rint(frac), line):
        return False
    return bool(np.all(np.abs(_per_line(frac - line, line)[1]) < SETTLED))


def _fit_offsets(lattice: Lattice, points: np.ndarray, line: np.ndarray, axis: int) -> None:
    """Refit the lattice to marks whose row (axis 1) or column (axis 0) is known, with one
    offset per line across it: the median of its marks' distances from their nodes. (Along
    the line the marks' median would mix the other axis' uneven steps in.)"""
    other = np.rint(lattice.fractional(points)[:, 1 - axis])
    node = np.column_stack([line, other] if axis == 0 else [other, line])
    base = int(line.min())
    empty = np.zeros((0, 2))
    if axis == 1:
        lattice.row_offset, lattice.row_base = empty, base
    else:
        lattice.col_offset, lattice.col_base = empty, base
    # The plain lattice first, so that the offsets hold only what it cannot.
    refit(lattice, node, points)
    step = lattice.a_y if axis == 1 else lattice.a_x
    for _ in range(2):
        own = lattice.own_offset(line) if axis == 1 else lattice.col_offset_of(line)
        total = own + points - lattice.position(node)
        across = (total @ np.linalg.inv(lattice.matrix).T)[:, axis]
        keys, medians, _ = _per_line(across, line)
        table = np.zeros((int(line.max()) - base + 1, 2))
        table[keys.astype(np.int64) - base] = medians[:, None] * step
        if axis == 1:
            lattice.row_offset = table
        else:
            lattice.col_offset = table
        refit(lattice, node, points)
