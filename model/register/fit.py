"""Fitting the lattice to the mark centroids: starting bases (neighbour vectors, rows seen as
parallel lines), region-growing fit, row phases, per-row offsets, and the choice between fits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.spatial import cKDTree

from model.errors import RegistrationError
from model.register.lattice import MIN_MARKS, TESTED_ANGLE, Lattice, refit
from model.register.spacing import even_steps

INLIER_RESIDUAL = 0.25
"""A mark takes part in the lattice fit when it lies within this fraction of the pitch."""

ROW_SEARCH_DEG = 20.0
"""Rows are looked for within this angle of the image x axis (rotation is tested to 12°)."""

_GROWTH = 1.5
_NEIGHBOURS = 8


def choose_lattice(points: np.ndarray, spacing: float, rows: int, cols: int) -> Lattice:
    """The lattice that best explains the marks as one rows x cols acquisition raster.

    Two starting bases: nearest-neighbour vectors (plain grids) and the rows seen as dense
    parallel lines (robust to strong anisotropy and serpentine row offsets, where a diagonal
    neighbour can be nearer than the next mark in the row). Each is fitted; the winner holds
    the most marks on nodes inside one rows x cols window (a diagonal or half-pitch basis
    cannot), then the smaller residual. A rotation beyond TESTED_ANGLE only wins when no
    candidate within it comes close.
    """
    starts: list[tuple[np.ndarray, np.ndarray]] = []
    failure: RegistrationError | None = None
    try:
        starts.append(_initial_lattice(points, spacing))
    except RegistrationError as error:
        failure = error
    if rows >= 3:
        by_rows = _row_lattice(points, spacing)
        if by_rows is not None and not any(_same_basis(by_rows, start) for start in starts):
            starts.append(by_rows)
    if not starts:
        assert failure is not None
        raise failure
    fitted: list[Lattice] = []
    for a_x, a_y in starts:
        lattice = _fit_lattice(points, spacing, a_x, a_y)
        _fit_row_offsets(lattice, points)
        lattice = _with_even_steps(lattice, points, rows, cols)
        fitted.append(lattice)
        # Odd rows shifted by about half a pitch: which mark of an odd row shares the column
        # of an even row's first mark is then only told by the grid's width.
        along = float(lattice.shift @ lattice.a_x) / float(lattice.a_x @ lattice.a_x)
        if abs(along) > 0.3:
            fitted.append(replace(lattice, shift=lattice.shift - np.sign(along) * lattice.a_x))
    scored: list[tuple[int, float, float, Lattice]] = []
    for lattice in fitted:
        count, rms = _lattice_score(lattice, points, rows, cols)
        angle = abs(float(np.degrees(np.arctan2(lattice.a_x[1], lattice.a_x[0]))))
        scored.append((count, rms, angle, lattice))
    if len(scored) == 1:
        return scored[0][3]
    best_count = max(s[0] for s in scored)
    tested = [s for s in scored if s[2] <= TESTED_ANGLE]
    pool = tested if tested and max(s[0] for s in tested) >= 0.9 * best_count else scored
    return min(pool, key=lambda s: (-s[0], s[1]))[3]


def _with_even_steps(lattice: Lattice, points: np.ndarray, rows: int, cols: int) -> Lattice:
    """The lattice renumbered by the lines the marks form (uneven steps between rows or
    columns), when that holds at least as many marks in one rows x cols window."""
    evened = even_steps(lattice, points, rows, cols)
    if evened is None:
        return lattice
    _fit_row_offsets(evened, points)  # the rows' offsets along themselves too
    before = _lattice_score(lattice, points, rows, cols)[0]
    return evened if _lattice_score(evened, points, rows, cols)[0] >= before else lattice


def _same_basis(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Nearly the same row vector and row height (the fit would end up in the same place)."""
    length_a, length_b = np.hypot(*a[0]), np.hypot(*b[0])
    cosine = float(a[0] @ b[0]) / (length_a * length_b)
    height_a = abs(a[0][0] * a[1][1] - a[0][1] * a[1][0]) / length_a
    height_b = abs(b[0][0] * b[1][1] - b[0][1] * b[1][0]) / length_b
    return bool(
        cosine > np.cos(np.radians(2.0))
        and abs(length_a - length_b) < 0.05 * length_b
        and abs(height_a - height_b) < 0.05 * height_b
    )


def _axis_vector(
    vectors: np.ndarray, valid: np.ndarray, reference: np.ndarray, cone_deg: float
) -> np.ndarray | None:
    """Robust lattice vector along `reference`: per point the shortest neighbour vector inside
    the cone on the positive side, then a trimmed mean around the median of those.

    One side only (right or down), so that alternately shifted rows contribute both of their
    vectors (a_y + shift, a_y - shift) equally and the mean stays unbiased.
    """
    along = vectors @ reference
    length = np.hypot(vectors[..., 0], vectors[..., 1])
    cosine = along / np.maximum(length, 1e-12)
    inside = valid & (cosine >= np.cos(np.radians(cone_deg)))
    length = np.where(inside, length, np.inf)
    best = np.argmin(length, axis=1)
    rows = np.arange(length.shape[0])
    has = np.isfinite(length[rows, best])
    if has.sum() < 1:
        return None
    chosen = vectors[rows, best][has]
    centre = np.median(chosen, axis=0)
    close = np.hypot(*(chosen - centre).T) <= 0.45 * np.hypot(*centre)
    return chosen[close].mean(axis=0) if close.any() else centre


def _initial_lattice(points: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """a_x from same-row neighbours; a_y perpendicular to it with the row-to-row distance.

    Only the across-row component of a_y is taken from the neighbours: alternate rows may be
    shifted along the rows (serpentine rasters), which makes the up/down neighbour vectors
    bimodal. The along-row part (shear) is measured later from the row phases.
    """
    k = min(_NEIGHBOURS + 1, points.shape[0])
    distances, neighbours = cKDTree(points).query(points, k=k)
    vectors = points[neighbours[:, 1:]] - points[:, None, :]
    # Unmerged fragments or duplicates would give short vectors.
    valid = distances[:, 1:] > 0.5 * spacing
    a_x = _axis_vector(vectors, valid, np.array([1.0, 0.0]), 35.0)
    if a_x is not None:
        # Second pass: a cone centred on the first estimate (tolerates larger rotations).
        a_x = _axis_vector(vectors, valid, a_x / np.hypot(*a_x), 20.0)
    a_y = _axis_vector(vectors, valid, np.array([0.0, 1.0]), 35.0)
    if a_x is None and a_y is None:
        raise RegistrationError("cannot find a regular spacing between the marks")
    if a_x is None:
        # A single column: no vector along the rows; assume a square, orthogonal pitch.
        return np.array([a_y[1], -a_y[0]]), a_y
    normal = np.array([-a_x[1], a_x[0]]) / np.hypot(*a_x)
    if a_y is None:
        # A single row: no vector across the rows; assume a square pitch.
        return a_x, normal * np.hypot(*a_x)
    down = vectors @ normal
    along = np.abs(vectors @ (a_x / np.hypot(*a_x)))
    across = valid & (down > 0.5 * (a_y @ normal)) & (down < 1.5 * (a_y @ normal))
    across &= along < 0.75 * np.hypot(*a_x)
    height = float(np.median(down[across])) if across.any() else float(a_y @ normal)
    return a_x, normal * height


def _circular_mean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean of values modulo 1, in (-0.5, 0.5]."""
    return np.angle(np.exp(2j * np.pi * values).mean(axis=axis)) / (2 * np.pi)


def _row_lattice(points: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Row direction and row height from the projection of the marks across the rows, then
    the spacing along the rows from same-row neighbours.

    For each trial angle the marks are projected on the normal of the rows; at the true angle
    the projections bunch at the row positions, which the Fourier amplitude at the row
    frequency measures (a shift of a row along itself changes nothing). Of the strong peaks
    the lowest frequency is the row spacing (higher ones are harmonics or other lattice
    planes). None when there is no clear row structure.
    """
    n = points.shape[0]
    if n < 8:
        return None
    angles = np.radians(np.arange(-ROW_SEARCH_DEG, ROW_SEARCH_DEG + 1e-9, 0.25))
    normals = np.column_stack([-np.sin(angles), np.cos(angles)])
    projection = (points - points.mean(axis=0)) @ normals.T  # (n, angles)
    low = projection.min(axis=0)
    span = projection.max(axis=0) - low
    step = max(spacing / 32.0, float(span.max()) / 8192.0)
    bins = ((projection - low) / step).astype(np.int64)
    size = 1 << int(np.ceil(np.log2(2 * (int(bins.max()) + 1))))
    flat = (bins + np.arange(angles.size) * size).ravel()
    histogram = np.bincount(flat, minlength=angles.size * size).reshape(angles.size, size)
    amplitude = np.abs(np.fft.rfft(histogram, axis=1)) / n
    frequency = np.fft.rfftfreq(size, d=step)
    lowest = np.maximum(1.0 / (5.0 * spacing), 1.5 / np.maximum(span, 1e-9))
    usable = (frequency[None, :] >= lowest[:, None]) & (frequency[None, :] <= 2.0 / spacing)
    amplitude = np.where(usable, amplitude, 0.0)
    top = float(amplitude.max())
    if top < 0.3:
        return None
    strong = amplitude >= 0.5 * top
    f_min = float(frequency[np.nonzero(strong)[1]].min())
    near = strong & (frequency[None, :] <= 1.15 * f_min)
    a, f = np.unravel_index(int(np.argmax(np.where(near, amplitude, 0.0))), amplitude.shape)
    theta, period = float(angles[a]), 1.0 / float(frequency[f])
    along_unit = np.array([np.cos(theta), np.sin(theta)])
    normal = normals[a]

    k = min(21, n)
    distances, neighbours = cKDTree(points).query(points, k=k)
    vectors = points[neighbours[:, 1:]] - points[:, None, :]
    valid = (distances[:, 1:] > 0.5 * spacing) & (np.abs(vectors @ normal) < 0.3 * period)
    a_x = _axis_vector(vectors, valid, along_unit, 60.0)
    if a_x is None:
        return None
    return a_x, normal * period


def _lattice_score(lattice: Lattice, points: np.ndarray, rows: int, cols: int) -> tuple[int, float]:
    """Marks on distinct nodes inside the best rows x cols window, and the RMS residual of
    the on-node marks (fraction of the pitch)."""
    node = np.rint(lattice.fractional(points))
    residual = np.hypot(*(points - lattice.position(node)).T)
    inlier = residual < INLIER_RESIDUAL * lattice.pitch
    if not inlier.any():
        return 0, np.inf
    rms = float(np.sqrt(np.mean(residual[inlier] ** 2))) / lattice.pitch
    nodes = np.unique(node[inlier].astype(np.int64), axis=0)
    return _best_window_count(nodes, rows, cols), rms


def _best_window_count(nodes: np.ndarray, rows: int, cols: int) -> int:
    """Most of the (j, i) `nodes` that one rows x cols window of the lattice can hold."""
    low = nodes.min(axis=0)
    width, height = (nodes.max(axis=0) - low + 1).tolist()
    if width * height > 20_000_000:
        return 0  # an absurd lattice (pitch far below the mark spacing)
    occupied = np.zeros((height, width), dtype=np.int64)
    occupied[nodes[:, 1] - low[1], nodes[:, 0] - low[0]] = 1
    summed = np.zeros((height + 1, width + 1), dtype=np.int64)
    summed[1:, 1:] = occupied.cumsum(axis=0).cumsum(axis=1)
    tops = np.arange(-(rows - 1), height)
    lefts = np.arange(-(cols - 1), width)
    r1, r2 = np.clip(tops, 0, height), np.clip(tops + rows, 0, height)
    c1, c2 = np.clip(lefts, 0, width), np.clip(lefts + cols, 0, width)
    counts = (
        summed[np.ix_(r2, c2)] - summed[np.ix_(r1, c2)] - summed[np.ix_(r2, c1)]
        + summed[np.ix_(r1, c1)]
    )  # fmt: skip
    return int(counts.max())


def _fit_row_offsets(lattice: Lattice, points: np.ndarray) -> None:
    """Per-row offsets (pixels): the median residual of each row's marks, alternating with a
    refit of the global lattice. Rows are laid down one by one, so a whole row can sit a
    little off (row spacing jitter, uneven serpentine offsets)."""
    for _ in range(2):
        frac = lattice.fractional(points)
        node = np.rint(frac)
        close = np.all(np.abs(frac - node) < 0.4, axis=1)
        if close.sum() < MIN_MARKS:
            return
        residual = points - lattice.position(node)
        total = lattice.own_offset(node[:, 1]) + residual
        row = node[close, 1].astype(np.int64)
        total = total[close]
        base = int(row.min())
        # Rows with too few marks keep the offset they had (none at first).
        table = lattice.own_offset(np.arange(base, int(row.max()) + 1, dtype=np.float64))
        order = np.argsort(row, kind="stable")
        uniques, starts, counts = np.unique(row[order], return_index=True, return_counts=True)
        for r, start, count in zip(uniques, starts, counts, strict=True):
            if count >= 3:
                table[r - base] = np.median(total[order[start : start + count]], axis=0)
        lattice.row_offset, lattice.row_base = table, base
        refit(lattice, node[close], points[close])


def _fit_lattice(points: np.ndarray, spacing: float, a_x: np.ndarray, a_y: np.ndarray) -> Lattice:
    """Lattice fitted on inliers in a region growing outwards from the central mark."""
    centre = points[np.argmin(np.hypot(*(points - np.median(points, axis=0)).T))]
    lattice = Lattice(origin=centre.copy(), a_x=a_x, a_y=a_y, shift=np.zeros(2))
    frac = lattice.fractional(points)
    reach = np.hypot(frac[:, 0], frac[:, 1])
    radius = max(4.0, float(np.sort(reach)[min(reach.size - 1, 24)]))
    near = reach <= radius
    _initial_phase(lattice, centre, frac[near])

    max_reach = float(reach.max())
    while True:
        frac = lattice.fractional(points)
        index = np.rint(frac)
        residual = np.hypot(*(points - lattice.position(index)).T)
        centre_index = np.rint(lattice.fractional(centre[None, :]))[0]
        inside = np.hypot(*(index - centre_index).T) <= radius
        inliers = inside & (residual < INLIER_RESIDUAL * lattice.pitch)
        refit(lattice, index[inliers], points[inliers])
        if radius > max_reach + 1:
            break
        radius *= _GROWTH
    # The refits may carry an odd-row shift near half a pitch across the boundary.
    _smallest_shear(lattice)
    return lattice


def _initial_phase(lattice: Lattice, centre: np.ndarray, frac: np.ndarray) -> None:
    """Origin, column drift per row and odd-row shift from the marks near the centre.

    Phases are circular means of fractional coordinates, so no single jittered mark decides
    and a half-pitch ambiguity cannot creep in: rows first (robust to shifts along the rows),
    then the column phase of each row; rows two apart share their parity, so their phase
    difference gives the drift (shear error) and even vs odd rows give the serpentine shift.
    """
    row_phase = _circular_mean(frac[:, 1])
    row = np.rint(frac[:, 1] - row_phase).astype(np.int64)
    rows = np.unique(row)
    phase = np.array([_circular_mean(frac[row == r, 0]) for r in rows])
    pairs = np.searchsorted(rows, rows + 2)
    has_pair = (pairs < rows.size) & (rows[np.minimum(pairs, rows.size - 1)] == rows + 2)
    if has_pair.any():
        step = phase[pairs[has_pair]] - phase[has_pair]
        drift = _circular_mean(step) / 2.0
        lattice.a_y = lattice.a_y + drift * lattice.a_x
        frac = frac - np.column_stack([drift * frac[:, 1], np.zeros(frac.shape[0])])
    even = np.mod(row, 2) == 0
    even_phase = _circular_mean(frac[even, 0]) if even.any() else 0.0
    if (~even).any() and even.any():
        odd_phase = _circular_mean(frac[~even, 0])
        offset = float(np.angle(np.exp(2j * np.pi * (odd_phase - even_phase))) / (2 * np.pi))
        lattice.shift = offset * lattice.a_x
    lattice.origin = centre + lattice.matrix @ np.array([even_phase, row_phase])
    _smallest_shear(lattice)


def _smallest_shear(lattice: Lattice) -> None:
    """Among the equivalent descriptions of the same nodes, keep |shear| <= 1/4 and the odd-row
    shift within half a pitch: columns run roughly across the rows (this fixes the numbering).

    (a_y, shift) and (a_y - m/2 a_x, shift + m/2 a_x) place the same nodes; they only number
    the columns differently from row to row.
    """
    width = float(np.hypot(*lattice.a_x))
    unit = lattice.a_x / width
    halves = round(2.0 * float(lattice.a_y @ unit) / width)
    lattice.a_y = lattice.a_y - 0.5 * halves * lattice.a_x
    lattice.shift = lattice.shift + 0.5 * halves * lattice.a_x
    lattice.shift = lattice.shift - round(float(lattice.shift @ unit) / width) * lattice.a_x
