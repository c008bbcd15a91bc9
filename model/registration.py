"""Number ablation marks by their place on the acquisition grid (id = row * cols + col + 1).

A lattice is fitted to the mark centroids (no image warps), then whole components are painted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from model.errors import RegistrationError
from model.image.io import write_png
from model.overlay import render_overlay

MAX_ID = 65535
"""Largest id a uint16 label image can hold, so rows * cols may not exceed it."""

MIN_MARKS = 4
"""Fewer marks than this cannot pin down a lattice (origin + two vectors)."""

SPECK_FRACTION = 0.15
"""Components smaller than this fraction of the typical component area are specks (stay 0)."""

FRAGMENT_MERGE = 0.35
"""Centroids closer than this fraction of the pitch are fragments of one mark."""

INLIER_RESIDUAL = 0.25
"""A mark takes part in the lattice fit when it lies within this fraction of the pitch."""

MATCH_CUTOFF = 0.5
"""A mark is matched to a node only within this fraction of the pitch."""

SPLIT_AREA = 1.4
"""Marks larger than this multiple of the typical area are checked for touching neighbours."""

SPLIT_OFFSET = 0.3
"""... as are marks whose centroid is this fraction of the pitch away from every node."""

PART_MIN_AREA = 0.25
"""A node takes its own share of a touching component when it holds this much typical area."""

MARK_LIKE_AREA = 0.3
"""Clusters below this fraction of the typical mark area are dust-like for anchoring."""

DOUBLE_AREA = 1.2
"""A double mark (fainter copy of a mark, displaced) is at most this multiple of a mark."""

HIGH_RESIDUAL = 0.15
"""Residual RMS above this fraction of the pitch is reported as a distorted lattice."""

TESTED_ANGLE = 12.0
"""Rotations beyond this (degrees) are outside the range the registration was tested on."""

_GROWTH = 1.5
_NEIGHBOURS = 8


@dataclass(frozen=True)
class MarkRecord:
    """One registered mark: x, y = pixel centroid, bbox = (x0, y0, x1, y1) with x1, y1 exclusive."""

    id: int
    row: int
    col: int
    x: float
    y: float
    area: int
    bbox: tuple[int, int, int, int]


@dataclass
class Registration:
    """Label image (uint16, 0 = background), the registered marks sorted by id, and QC figures."""

    labels: np.ndarray
    marks: list[MarkRecord]
    qc: dict


@dataclass
class _Lattice:
    """Node (i, j) sits at origin + j * a_x + i * a_y + (i mod 2) * shift + row_offset[i].

    i = row, j = col. `shift` is the offset of odd rows against even ones: a serpentine raster
    (stage backlash) moves alternate rows along the scan direction; it is zero on plain grids.
    `row_offset` holds what is left per row (rows laid down a little off their place, in
    pixels) for lattice rows row_base, row_base + 1, ...; rows outside the table have none.
    """

    origin: np.ndarray
    a_x: np.ndarray
    a_y: np.ndarray
    shift: np.ndarray
    row_offset: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    row_base: int = 0

    @property
    def matrix(self) -> np.ndarray:
        return np.column_stack([self.a_x, self.a_y])

    @property
    def pitch(self) -> float:
        return float(min(np.hypot(*self.a_x), np.hypot(*self.a_y)))

    def own_offset(self, row: np.ndarray) -> np.ndarray:
        """(n, 2) per-row offsets (pixels) of lattice rows `row` (float, NaN allowed)."""
        offset = np.zeros((row.shape[0], 2))
        if self.row_offset.shape[0] == 0:
            return offset
        index = np.where(np.isfinite(row), row, -1.0) - self.row_base
        inside = (index >= 0) & (index < self.row_offset.shape[0])
        offset[inside] = self.row_offset[index[inside].astype(np.int64)]
        return offset

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

    def fractional(self, points: np.ndarray) -> np.ndarray:
        """Lattice coordinates (j, i) of (x, y) points, corrected for the shift of their row."""
        _, raw, corr = self._rows_and_raw(points)
        return raw - corr

    def position(self, ji: np.ndarray) -> np.ndarray:
        """(x, y) position of lattice coordinates (j, i)."""
        return self.origin + ji @ self.matrix.T + self.row_correction(np.rint(ji[:, 1]))

    def candidates(self, points: np.ndarray) -> np.ndarray:
        """(n, 6, 2) nearby nodes (j, i): the point's row and those around it, two columns in
        each."""
        inverse = np.linalg.inv(self.matrix)
        row, raw, _ = self._rows_and_raw(points)
        out = np.empty((points.shape[0], 6, 2))
        for k, step in enumerate((-1.0, 0.0, 1.0)):
            r = row + step
            col_frac = raw[:, 0] - (self.row_correction(r) @ inverse.T)[:, 0]
            base = np.floor(col_frac)
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


@dataclass
class _Units:
    """Things to match to nodes: clusters of components, or per-node parts of touching marks."""

    centroid: np.ndarray  # (n, 2) x, y
    area: np.ndarray  # (n,) pixels
    bbox: np.ndarray  # (n, 4) x0, y0, x1, y1 exclusive
    pixels: dict[int, tuple[np.ndarray, np.ndarray]]  # unit -> (ys, xs) for split parts only
    parent: np.ndarray  # (n,) cluster a split part came from, -1 for whole clusters


def register_marks(mask: np.ndarray, rows: int, cols: int) -> Registration:
    """Find the marks in a binary mask and number them on a rows x cols acquisition grid.

    `mask` may be bool, 0/1 or 0/255 (float masks are thresholded at 0.5). Raises
    RegistrationError for an impossible grid, an empty mask or fewer than 4 marks.
    """
    _check_grid(rows, cols)
    binary = _binary(mask)
    count, components, stats, centroids = cv2.connectedComponentsWithStats(
        binary, connectivity=8, ltype=cv2.CV_32S
    )
    if count <= 1:
        raise RegistrationError("the mask has no foreground pixels: there are no marks to register")
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    points = centroids[1:].astype(np.float64)
    comp_bbox = np.column_stack(
        [
            stats[1:, cv2.CC_STAT_LEFT],
            stats[1:, cv2.CC_STAT_TOP],
            stats[1:, cv2.CC_STAT_LEFT] + stats[1:, cv2.CC_STAT_WIDTH],
            stats[1:, cv2.CC_STAT_TOP] + stats[1:, cv2.CC_STAT_HEIGHT],
        ]
    ).astype(np.int64)

    # Specks: tiny relative to the area that holds most foreground pixels (robust to many specks).
    component_area = _weighted_median(areas)
    kept = np.flatnonzero(areas >= SPECK_FRACTION * component_area)
    if kept.size < MIN_MARKS:
        raise RegistrationError(
            f"only {kept.size} mark(s) found in the mask; at least {MIN_MARKS} are needed to fit "
            "the acquisition grid"
        )

    # Fragments of one mark: merge components whose centroids are much closer than the pitch.
    spacing = _mark_spacing(points[kept])
    cluster_of = _merge_fragments(points[kept], FRAGMENT_MERGE * spacing)
    clusters = _cluster_units(cluster_of, points[kept], areas[kept], comp_bbox[kept])
    n_clusters = clusters.area.size
    if n_clusters < MIN_MARKS:
        raise RegistrationError(
            f"only {n_clusters} mark(s) found in the mask; at least {MIN_MARKS} are needed to fit "
            "the acquisition grid"
        )
    cluster_area = _weighted_median(clusters.area)

    # Lattice from well-shaped marks only: touching pairs and dust sit off the nodes.
    core = (clusters.area >= 0.5 * cluster_area) & (clusters.area <= 1.6 * cluster_area)
    if core.sum() < MIN_MARKS:
        core = np.ones(n_clusters, dtype=bool)
    lattice = _choose_lattice(clusters.centroid[core], spacing, rows, cols)
    # The area of one whole mark: all clusters at a node summed (unmerged fragments included).
    mark_area = _node_area(clusters, lattice)

    units, unit_components, split_count = _split_touching(
        clusters, cluster_of, kept, components, lattice, mark_area
    )
    frac = lattice.fractional(units.centroid)
    nearest = np.rint(frac)
    offset = np.hypot(*(units.centroid - lattice.position(nearest)).T)
    near_node = offset < MATCH_CUTOFF * lattice.pitch

    # Anchor: the rows x cols window over the occupied nodes that holds the most marks.
    mark_like = near_node & (units.area >= MARK_LIKE_AREA * mark_area)
    r0, c0, anchor_note = _anchor(nearest[mark_like], nearest[near_node], rows, cols)

    node_of_unit = _assign(units.centroid, frac, lattice, r0, c0, rows, cols)
    node_of_unit, absorbed = _absorb_leftovers(
        units, node_of_unit, frac, lattice, r0, c0, rows, cols, mark_area
    )
    unit_id = np.where(node_of_unit >= 0, node_of_unit + 1, 0).astype(np.int64)

    labels = _paint(components, count, unit_components, units, unit_id)
    marks = _mark_records(units, unit_id, cols)

    # Final figures from the whole marks (fragments pooled) against their grid positions.
    mark_xy = np.array([(m.x, m.y) for m in marks], dtype=np.float64).reshape(-1, 2)
    mark_ji = np.array([(m.col, m.row) for m in marks], dtype=np.float64).reshape(-1, 2)
    lattice.reindexed(c0, r0)
    _refit(lattice, mark_ji, mark_xy)
    residual = mark_xy - lattice.position(mark_ji)
    residual_rms = float(np.sqrt(np.mean(np.sum(residual**2, axis=1)))) if len(marks) else 0.0

    # Components that carry no id at all (specks, dust, marks outside the grid).
    component_has_id = np.zeros(count, dtype=bool)
    component_has_id[1:] = _components_with_id(unit_components, unit_id, count)
    extra_components = int(count - 1 - component_has_id[1:].sum())

    qc = _quality(
        rows=rows,
        cols=cols,
        marks=marks,
        lattice=lattice,
        residual_rms=residual_rms,
        extra_components=extra_components,
        specks=int(areas.size - kept.size),
        merged_fragments=int(kept.size - n_clusters + absorbed),
        split_components=split_count,
        anchor_note=anchor_note,
        outside=int(np.count_nonzero(mark_like) - np.count_nonzero(unit_id[mark_like] > 0)),
    )
    return Registration(labels=labels, marks=marks, qc=qc)


def _components_with_id(
    unit_components: list[np.ndarray], unit_id: np.ndarray, count: int
) -> np.ndarray:
    """For each component label 1..count-1: does any unit built from it carry an id?"""
    has_id = np.zeros(count, dtype=bool)
    for unit in np.flatnonzero(unit_id > 0):
        has_id[unit_components[unit]] = True
    return has_id[1:]


def _check_grid(rows: int, cols: int) -> None:
    if int(rows) != rows or int(cols) != cols or rows < 1 or cols < 1:
        raise RegistrationError(f"the grid needs at least 1 row and 1 column, got {rows}x{cols}")
    if rows * cols > MAX_ID:
        raise RegistrationError(
            f"a {rows}x{cols} grid has {rows * cols} positions, more than the {MAX_ID} that "
            "16-bit label images can number"
        )


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise RegistrationError(f"the mask must be a 2-D image, got shape {mask.shape}")
    if mask.size == 0:
        raise RegistrationError("the mask is empty (0 pixels)")
    if mask.dtype == np.bool_:
        binary = mask
    elif mask.dtype.kind == "f":
        binary = mask > 0.5
    else:
        binary = mask > 0
    return np.ascontiguousarray(binary).view(np.uint8)


def _weighted_median(areas: np.ndarray) -> float:
    """Area such that half of all foreground pixels lie in objects at least this large."""
    ordered = np.sort(areas)
    cumulative = np.cumsum(ordered)
    return float(ordered[np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def _mark_spacing(points: np.ndarray) -> float:
    """Median distance to the second-nearest neighbour (about the smaller pitch).

    The nearest neighbour of a fragment is often its sibling; the second one is a neighbouring
    mark, so this stays near the pitch even when most marks are broken in two.
    """
    k = min(3, points.shape[0])
    distances, _ = cKDTree(points).query(points, k=k)
    return float(np.median(distances[:, k - 1]))


def _node_area(clusters: _Units, lattice: _Lattice) -> float:
    """Median over occupied nodes of the summed area of the clusters near that node."""
    frac = lattice.fractional(clusters.centroid)
    node = np.rint(frac)
    near = np.hypot(*(clusters.centroid - lattice.position(node)).T) < MATCH_CUTOFF * lattice.pitch
    if not near.any():
        return float(np.median(clusters.area))
    _, group = np.unique(node[near], axis=0, return_inverse=True)
    return float(np.median(np.bincount(group.ravel(), weights=clusters.area[near])))


def _merge_fragments(points: np.ndarray, radius: float) -> np.ndarray:
    """Cluster index per point: single-linkage clusters at `radius`."""
    n = points.shape[0]
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")
    graph = sparse.coo_matrix(
        (np.ones(pairs.shape[0], dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n)
    )
    _, cluster_of = connected_components(graph, directed=False)
    return cluster_of


def _cluster_units(
    cluster_of: np.ndarray, points: np.ndarray, areas: np.ndarray, bbox: np.ndarray
) -> _Units:
    n = int(cluster_of.max()) + 1
    area = np.bincount(cluster_of, weights=areas, minlength=n)
    centroid = np.column_stack(
        [
            np.bincount(cluster_of, weights=points[:, 0] * areas, minlength=n) / area,
            np.bincount(cluster_of, weights=points[:, 1] * areas, minlength=n) / area,
        ]
    )
    box = np.empty((n, 4), dtype=np.int64)
    box[:, :2] = np.iinfo(np.int64).max
    box[:, 2:] = np.iinfo(np.int64).min
    np.minimum.at(box[:, 0], cluster_of, bbox[:, 0])
    np.minimum.at(box[:, 1], cluster_of, bbox[:, 1])
    np.maximum.at(box[:, 2], cluster_of, bbox[:, 2])
    np.maximum.at(box[:, 3], cluster_of, bbox[:, 3])
    return _Units(
        centroid=centroid,
        area=area.astype(np.int64),
        bbox=box,
        pixels={},
        parent=np.full(n, -1, dtype=np.int64),
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


def _choose_lattice(points: np.ndarray, spacing: float, rows: int, cols: int) -> _Lattice:
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
    fitted: list[_Lattice] = []
    for a_x, a_y in starts:
        lattice = _fit_lattice(points, spacing, a_x, a_y)
        _fit_row_offsets(lattice, points)
        fitted.append(lattice)
        # Odd rows shifted by about half a pitch: which mark of an odd row shares the column
        # of an even row's first mark is then only told by the grid's width.
        along = float(lattice.shift @ lattice.a_x) / float(lattice.a_x @ lattice.a_x)
        if abs(along) > 0.3:
            fitted.append(replace(lattice, shift=lattice.shift - np.sign(along) * lattice.a_x))
    scored: list[tuple[int, float, float, _Lattice]] = []
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


ROW_SEARCH_DEG = 20.0
"""Rows are looked for within this angle of the image x axis (rotation is tested to 12°)."""


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


def _lattice_score(
    lattice: _Lattice, points: np.ndarray, rows: int, cols: int
) -> tuple[int, float]:
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


def _fit_row_offsets(lattice: _Lattice, points: np.ndarray) -> None:
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
        table = np.zeros((int(row.max()) - base + 1, 2))
        order = np.argsort(row, kind="stable")
        uniques, starts, counts = np.unique(row[order], return_index=True, return_counts=True)
        for r, start, count in zip(uniques, starts, counts, strict=True):
            if count >= 3:
                table[r - base] = np.median(total[order[start : start + count]], axis=0)
        lattice.row_offset, lattice.row_base = table, base
        _refit(lattice, node[close], points[close])


def _fit_lattice(points: np.ndarray, spacing: float, a_x: np.ndarray, a_y: np.ndarray) -> _Lattice:
    """Lattice fitted on inliers in a region growing outwards from the central mark."""
    centre = points[np.argmin(np.hypot(*(points - np.median(points, axis=0)).T))]
    lattice = _Lattice(origin=centre.copy(), a_x=a_x, a_y=a_y, shift=np.zeros(2))
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
        _refit(lattice, index[inliers], points[inliers])
        if radius > max_reach + 1:
            break
        radius *= _GROWTH
    # The refits may carry an odd-row shift near half a pitch across the boundary.
    _smallest_shear(lattice)
    return lattice


def _initial_phase(lattice: _Lattice, centre: np.ndarray, frac: np.ndarray) -> None:
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


def _smallest_shear(lattice: _Lattice) -> None:
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


def _refit(lattice: _Lattice, index: np.ndarray, points: np.ndarray) -> None:
    """Least-squares origin, vectors and odd-row shift from integer indices; keeps what the
    points cannot determine (a single row, a single column, a single parity)."""
    if index.shape[0] < 2:
        return
    odd = np.mod(index[:, 1], 2)
    has_cols = np.unique(index[:, 0]).size >= 2
    has_rows = np.unique(index[:, 1]).size >= 2
    has_parity = 0 < odd.sum() < odd.size and np.unique(index[:, 1]).size >= 3
    columns = [np.ones(index.shape[0])]
    target = points - lattice.own_offset(index[:, 1])
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


def _split_touching(
    clusters: _Units,
    cluster_of: np.ndarray,
    kept: np.ndarray,
    components: np.ndarray,
    lattice: _Lattice,
    mark_area: float,
) -> tuple[_Units, list[np.ndarray], int]:
    """Split clusters whose pixels fill several nodes (touching marks) into per-node parts.

    Returns the units, the component labels behind each unit, and how many clusters were split.
    """
    n = clusters.area.size
    members: list[list[int]] = [[] for _ in range(n)]
    for position, cluster in enumerate(cluster_of):
        members[cluster].append(int(kept[position]) + 1)
    unit_components = [np.array(m, dtype=np.int64) for m in members]

    frac = lattice.fractional(clusters.centroid)
    offset = np.hypot(*(clusters.centroid - lattice.position(np.rint(frac))).T)
    clear = (clusters.area > SPLIT_AREA * mark_area) | (
        (offset > SPLIT_OFFSET * lattice.pitch) & (clusters.area > DOUBLE_AREA * mark_area)
    )
    # A mark with a touching double: split only where the shape really has two blobs.
    candidates = np.flatnonzero(clear | (clusters.area > DOUBLE_AREA * mark_area))
    centroid, area, bbox = [clusters.centroid], [clusters.area], [clusters.bbox]
    drop = np.zeros(n, dtype=bool)
    pixels: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    parent: list[int] = []
    next_unit = n
    split_count = 0
    for cluster in candidates:
        x0, y0, x1, y1 = clusters.bbox[cluster]
        window = components[y0:y1, x0:x1]
        ys, xs = np.nonzero(np.isin(window, unit_components[cluster]))
        ys, xs = ys + y0, xs + x0
        xy = np.column_stack([xs, ys]).astype(np.float64)
        node = np.rint(lattice.fractional(xy))
        nodes, share = np.unique(node, axis=0, return_counts=True)
        big = np.flatnonzero(share >= PART_MIN_AREA * mark_area)
        if big.size <= 1:
            continue
        # The component's blobs (marks touch by a narrow neck) when there are as many as the
        # nodes it covers; otherwise each pixel goes to the nearest node that holds a real
        # part of the component.
        part = _blobs(xs - x0, ys - y0, (y1 - y0, x1 - x0))
        if part is not None and part.max() + 1 < big.size:
            part = None  # fewer blobs than marks: some still touch broadly, split by node
        if part is None and not clear[cluster]:
            continue
        if part is None:
            node_xy = lattice.position(nodes[big])
            distance = ((xy[:, None, :] - node_xy[None, :, :]) ** 2).sum(axis=2)
            part = np.argmin(distance, axis=1)
        drop[cluster] = True
        split_count += 1
        for k in range(int(part.max()) + 1):
            sel = part == k
            if not sel.any():
                continue
            px, py = xs[sel], ys[sel]
            centroid.append(np.array([[px.mean(), py.mean()]]))
            area.append(np.array([sel.sum()], dtype=np.int64))
            bbox.append(np.array([[px.min(), py.min(), px.max() + 1, py.max() + 1]]))
            pixels[next_unit] = (py, px)
            parent.append(int(cluster))
            unit_components.append(unit_components[cluster])
            next_unit += 1
    units = _Units(
        centroid=np.concatenate(centroid).astype(np.float64),
        area=np.concatenate(area).astype(np.int64),
        bbox=np.concatenate(bbox).astype(np.int64),
        pixels=pixels,
        parent=np.concatenate([clusters.parent, np.array(parent, dtype=np.int64)]),
    )
    # Split clusters stay in the arrays (indices stable) but can never match a node.
    units.centroid[np.flatnonzero(drop)] = np.nan
    return units, unit_components, split_count


def _blobs(xs: np.ndarray, ys: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Part index per pixel: the blobs of a shape, or None when it is one blob.

    The shape is eroded level by level (distance to the background); at the level where it
    falls into the most cores, every pixel joins its nearest core. Touching marks meet at a
    neck thinner than the marks themselves, so each keeps its own pixels, whatever the nodes.
    """
    patch = np.zeros(shape, np.uint8)
    patch[ys, xs] = 1
    depth = cv2.distanceTransform(patch, cv2.DIST_L2, 3)
    best_count, best = 1, None
    top = float(depth.max())
    for level in np.arange(0.5, top, max(0.5, top / 16.0)):
        _, cores, stats, _ = cv2.connectedComponentsWithStats(
            (depth > level).astype(np.uint8), connectivity=8
        )
        sizable = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= 3) + 1
        if sizable.size > best_count:
            best_count, best = sizable.size, np.isin(cores, sizable) * cores
    if best is None:
        return None
    _, nearest = cv2.distanceTransformWithLabels(
        (best == 0).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_CCOMP
    )
    # Map the labels of the nearest core to 0..count-1.
    core_ids = np.unique(best[best > 0])
    lookup = np.zeros(int(nearest.max()) + 1, dtype=np.int64)
    for k, core in enumerate(core_ids):
        lookup[nearest[best == core][0]] = k
    return lookup[nearest[ys, xs]]


def _anchor(
    marks: np.ndarray, anything: np.ndarray, rows: int, cols: int
) -> tuple[int, int, str | None]:
    """Top-left lattice index (i0, j0) of the rows x cols window holding the most marks.

    `marks` and `anything` are (n, 2) integer (j, i) node indices of mark-like clusters and of
    all clusters near a node. Ties are broken by the small clusters, then by preferring the
    window whose first row/column is the first occupied one; a tie in mark count is reported.
    """
    primary = marks if marks.shape[0] else anything
    if primary.shape[0] == 0:
        raise RegistrationError("no mark lies on the fitted lattice")
    j_min, i_min = primary.min(axis=0).astype(np.int64)
    i_base = int(min(i_min, anything[:, 1].min())) - (rows - 1)
    j_base = int(min(j_min, anything[:, 0].min())) - (cols - 1)
    i_top = int(max(primary[:, 1].max(), anything[:, 1].max()))
    j_top = int(max(primary[:, 0].max(), anything[:, 0].max()))
    shape = (i_top - i_base + rows, j_top - j_base + cols)

    def window_counts(nodes: np.ndarray) -> np.ndarray:
        occupied = np.zeros(shape, dtype=np.int64)
        unique = np.unique(nodes.astype(np.int64), axis=0)
        occupied[unique[:, 1] - i_base, unique[:, 0] - j_base] = 1
        summed = np.zeros((shape[0] + 1, shape[1] + 1), dtype=np.int64)
        summed[1:, 1:] = occupied.cumsum(axis=0).cumsum(axis=1)
        # counts[a, b] = marks in occupied[a:a+rows, b:b+cols]
        return (
            summed[rows:, cols:]
            - summed[:-rows, cols:]
            - summed[rows:, :-cols]
            + summed[:-rows, :-cols]
        )

    counts = window_counts(primary)
    secondary = window_counts(anything)
    tops = np.arange(counts.shape[0]) + i_base
    lefts = np.arange(counts.shape[1]) + j_base
    best = counts == counts.max()
    tie_rows, tie_cols = np.nonzero(best)
    key = np.lexsort(
        (
            np.abs(lefts[tie_cols] - j_min),
            np.abs(tops[tie_rows] - i_min),
            -secondary[tie_rows, tie_cols],
        )
    )
    chosen = key[0]
    i0, j0 = int(tops[tie_rows[chosen]]), int(lefts[tie_cols[chosen]])
    note = None
    if tie_rows.size > 1:
        ambiguous_rows = np.unique(tie_rows).size > 1
        ambiguous_cols = np.unique(tie_cols).size > 1
        what = " and ".join(
            w for w, flag in (("rows", ambiguous_rows), ("columns", ambiguous_cols)) if flag
        )
        span_i = int(primary[:, 1].max() - i_min + 1)
        span_j = int(primary[:, 0].max() - j_min + 1)
        note = (
            f"ambiguous anchoring of the {what}: the marks span {span_i} rows x {span_j} "
            f"columns of the {rows}x{cols} grid, so {tie_rows.size} placements fit equally well; "
            "ids assume the first occupied row/column is row/column 0 (check the overlay)"
        )
    return i0, j0, note


def _assign(
    centroid: np.ndarray,
    frac: np.ndarray,
    lattice: _Lattice,
    i0: int,
    j0: int,
    rows: int,
    cols: int,
) -> np.ndarray:
    """One-to-one unit -> node (row * cols + col, or -1) by distance with a cutoff."""
    n = centroid.shape[0]
    finite = np.isfinite(frac).all(axis=1)
    candidate = lattice.candidates(np.where(finite[:, None], centroid, 0.0))  # (n, k, 2)
    position = lattice.position(candidate.reshape(-1, 2)).reshape(candidate.shape)
    distance = np.hypot(*(position - centroid[:, None, :]).transpose(2, 0, 1))
    row = candidate[..., 1] - i0
    col = candidate[..., 0] - j0
    valid = (
        finite[:, None]
        & (row >= 0)
        & (row < rows)
        & (col >= 0)
        & (col < cols)
        & (distance < MATCH_CUTOFF * lattice.pitch)
    )
    unit_index, slot = np.nonzero(valid)
    node = (row[unit_index, slot] * cols + col[unit_index, slot]).astype(np.int64)
    cost = distance[unit_index, slot]
    node_of_unit = np.full(n, -1, dtype=np.int64)
    if unit_index.size == 0:
        return node_of_unit

    unit_degree = np.bincount(unit_index, minlength=n)
    node_degree = np.bincount(node, minlength=rows * cols)
    simple = (unit_degree[unit_index] == 1) & (node_degree[node] == 1)
    node_of_unit[unit_index[simple]] = node[simple]

    # Contested edges: solve each connected conflict group with the Hungarian algorithm.
    hard = ~simple
    if hard.any():
        hu, hn, hc = unit_index[hard], node[hard], cost[hard]
        unit_keys, hu_local = np.unique(hu, return_inverse=True)
        node_keys, hn_local = np.unique(hn, return_inverse=True)
        nu = unit_keys.size
        graph = sparse.coo_matrix(
            (np.ones(hu.size), (hu_local, hn_local + nu)),
            shape=(nu + node_keys.size, nu + node_keys.size),
        )
        _, group = connected_components(graph, directed=False)
        edge_group = group[hu_local]
        for g in np.unique(edge_group):
            sel = edge_group == g
            us, u_inv = np.unique(hu_local[sel], return_inverse=True)
            ns, n_inv = np.unique(hn_local[sel], return_inverse=True)
            matrix = np.full((us.size, ns.size), 1e9)
            matrix[u_inv, n_inv] = hc[sel]
            r, c = linear_sum_assignment(matrix)
            ok = matrix[r, c] < 1e9
            node_of_unit[unit_keys[us[r[ok]]]] = node_keys[ns[c[ok]]]
    return node_of_unit


def _absorb_leftovers(
    units: _Units,
    node_of_unit: np.ndarray,
    frac: np.ndarray,
    lattice: _Lattice,
    i0: int,
    j0: int,
    rows: int,
    cols: int,
    mark_area: float,
) -> tuple[np.ndarray, int]:
    """Give unmatched pieces the id of the mark they belong to; returns nodes and their count.

    A leftover part of a split component joins its nearest matched sibling (spill of a touching
    pair into an occupied cell). Other leftovers join a matched node nearby when they fit one of
    two kinds of piece: a fragment near its node (both together no bigger than one mark), or
    a double mark, a second copy displaced from its node by the offset that the slide's
    doubles share (estimated from the leftovers themselves, so a double half a pitch away goes
    to its own node, not to the neighbour it is as close to). Anything else (dust, a second
    mark-sized object) stays unmatched.
    """
    node_of_unit = node_of_unit.copy()
    leftovers = np.flatnonzero((node_of_unit < 0) & np.isfinite(frac).all(axis=1))
    if leftovers.size == 0:
        return node_of_unit, 0
    winner = np.full(rows * cols, -1, dtype=np.int64)
    matched = np.flatnonzero(node_of_unit >= 0)
    winner[node_of_unit[matched]] = matched
    node_area = np.zeros(rows * cols, dtype=np.int64)
    np.add.at(node_area, node_of_unit[matched], units.area[matched])
    absorbed = 0
    pieces = leftovers
    pitch = lattice.pitch
    # Loose marks: matched, but far from their node (a double that took an empty node).
    own_gap = np.hypot(
        *(units.centroid[matched] - _node_xy(lattice, node_of_unit[matched], i0, j0, cols)).T
    )
    loose = matched[
        (own_gap > SPLIT_OFFSET * pitch) & (units.area[matched] <= DOUBLE_AREA * mark_area)
    ]
    pool = np.concatenate([pieces[units.area[pieces] >= MARK_LIKE_AREA * mark_area], loose])
    double, spread = _double_offset(units, pool, frac, lattice, winner, i0, j0, rows, cols)
    if double is not None and loose.size:
        node, occupied, delta = _around(units, loose, frac, lattice, winner, i0, j0, rows, cols)
        fit = np.hypot(*(delta - double).transpose(2, 0, 1)) / (2.5 * spread)
        fit = np.where(occupied, fit, np.inf).min(axis=1)
        demoted = loose[fit < 1.0]
        for unit in demoted:
            target = node_of_unit[unit]
            winner[target] = -1
            node_area[target] -= units.area[unit]
            node_of_unit[unit] = -1
        pieces = np.concatenate([pieces, demoted])
        matched = np.flatnonzero(node_of_unit >= 0)
    if pieces.size == 0:
        return node_of_unit, absorbed
    node, occupied, delta = _around(units, pieces, frac, lattice, winner, i0, j0, rows, cols)
    # Scores below 1 accept: a fragment within MATCH_CUTOFF of its node, a double within
    # 2.5 spreads of the shared offset.
    fragment_score = np.hypot(*delta.transpose(2, 0, 1)) / (MATCH_CUTOFF * pitch)
    double_score = np.full_like(fragment_score, np.inf)
    if double is not None:
        double_score = np.hypot(*(delta - double).transpose(2, 0, 1)) / (2.5 * spread)
    score = np.where(occupied, np.minimum(fragment_score, double_score), np.inf)
    best = np.argmin(score, axis=1)
    rows_index = np.arange(pieces.size)
    best_score = score[rows_index, best]
    as_double = double_score[rows_index, best] < fragment_score[rows_index, best]
    for k in np.argsort(best_score, kind="stable"):
        if not best_score[k] < 1.0:
            break
        unit, target = int(pieces[k]), int(node[k, best[k]])
        area = units.area[unit]
        if as_double[k]:
            fits = (
                area <= DOUBLE_AREA * mark_area
                and node_area[target] + area <= (1.6 + DOUBLE_AREA) * mark_area
            )
        else:
            fits = node_area[target] + area <= 1.6 * mark_area
        if fits:
            node_of_unit[unit] = target
            node_area[target] += area
            absorbed += 1
    # A part of a split component that fits no node joins its nearest matched sibling (the
    # spill of a touching pair into an occupied cell).
    for unit in pieces[(node_of_unit[pieces] < 0) & (units.parent[pieces] >= 0)]:
        siblings = matched[units.parent[matched] == units.parent[unit]]
        if siblings.size:
            gap = np.hypot(*(units.centroid[siblings] - units.centroid[unit]).T)
            node_of_unit[unit] = node_of_unit[siblings[np.argmin(gap)]]
            absorbed += 1
    return node_of_unit, absorbed


def _node_xy(lattice: _Lattice, node: np.ndarray, i0: int, j0: int, cols: int) -> np.ndarray:
    """(x, y) of grid nodes given as row * cols + col."""
    ji = np.column_stack([node % cols + j0, node // cols + i0]).astype(np.float64)
    return lattice.position(ji)


def _around(
    units: _Units,
    which: np.ndarray,
    frac: np.ndarray,
    lattice: _Lattice,
    winner: np.ndarray,
    i0: int,
    j0: int,
    rows: int,
    cols: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each unit in `which`, its nearest node and the eight around it: node numbers
    (row * cols + col), whether a mark other than the unit itself holds the node, and the
    unit's offset (pixels) from each node. Shapes (n, 9), (n, 9), (n, 9, 2)."""
    steps = np.array([(dj, di) for di in (-1.0, 0.0, 1.0) for dj in (-1.0, 0.0, 1.0)])
    candidate = np.rint(frac[which])[:, None, :] + steps[None, :, :]
    position = lattice.position(candidate.reshape(-1, 2)).reshape(candidate.shape)
    delta = units.centroid[which][:, None, :] - position
    row = (candidate[..., 1] - i0).astype(np.int64)
    col = (candidate[..., 0] - j0).astype(np.int64)
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    node = np.where(inside, row * cols + col, 0)
    holder = winner[node]
    occupied = inside & (holder >= 0) & (holder != which[:, None])
    return node, occupied, delta


def _double_offset(
    units: _Units,
    pool: np.ndarray,
    frac: np.ndarray,
    lattice: _Lattice,
    winner: np.ndarray,
    i0: int,
    j0: int,
    rows: int,
    cols: int,
) -> tuple[np.ndarray | None, float]:
    """The offset (pixels) that double marks share from their node, and its spread.

    Double marks (a fainter copy of the mark a fixed step away, stage or laser artefact) all
    sit at about the same place relative to their own mark. Every mark-like object in `pool`
    votes for its offset from each marked node around it; the true offset collects a vote
    from every double, whereas the same place seen from the neighbouring node only collects
    the votes of doubles whose neighbour has a mark (edges, missing marks). This settles
    doubles half a pitch away. None when no offset stands out, when it lies at the node
    (fragments) or at a cell corner (no node can be told from the others).
    """
    if pool.size < 3:
        return None, 0.0
    _, occupied, delta = _around(units, pool, frac, lattice, winner, i0, j0, rows, cols)
    inverse = np.linalg.inv(lattice.matrix)
    in_cells = delta @ inverse.T
    keep = occupied & np.all(np.abs(in_cells) <= 0.75, axis=2)
    offsets, cells = delta[keep], in_cells[keep]
    if offsets.shape[0] < 3:
        return None, 0.0
    offsets, cells = offsets[:: -(-offsets.shape[0] // 3000)], cells[:: -(-cells.shape[0] // 3000)]
    gap = offsets[:, None, :] - offsets[None, :, :]
    near = np.hypot(gap[..., 0], gap[..., 1]) < 0.1 * lattice.pitch
    votes = near.sum(axis=1)
    seed = int(np.lexsort((np.hypot(*offsets.T), -votes))[0])
    if votes[seed] < max(5, 0.3 * pool.size):
        return None, 0.0
    members = near[seed]
    centre = cells[members].mean(axis=0)
    if np.all((np.abs(centre) >= 0.4) & (np.abs(centre) <= 0.6)):
        return None, 0.0
    offset = offsets[members].mean(axis=0)
    if np.hypot(*offset) < 0.2 * lattice.pitch:
        return None, 0.0
    spread = float(np.sqrt(np.mean(np.sum((offsets[members] - offset) ** 2, axis=1))))
    return offset, max(spread, 0.05 * lattice.pitch)


def _mark_records(units: _Units, unit_id: np.ndarray, cols: int) -> list[MarkRecord]:
    """One record per id, pooling all units (fragments, parts) that carry it."""
    with_id = np.flatnonzero(unit_id > 0)
    if with_id.size == 0:
        return []
    ids, group = np.unique(unit_id[with_id], return_inverse=True)
    area = np.bincount(group, weights=units.area[with_id])
    x = np.bincount(group, weights=units.centroid[with_id, 0] * units.area[with_id]) / area
    y = np.bincount(group, weights=units.centroid[with_id, 1] * units.area[with_id]) / area
    box = np.empty((ids.size, 4), dtype=np.int64)
    box[:, :2] = np.iinfo(np.int64).max
    box[:, 2:] = np.iinfo(np.int64).min
    for k in range(2):
        np.minimum.at(box[:, k], group, units.bbox[with_id, k])
        np.maximum.at(box[:, k + 2], group, units.bbox[with_id, k + 2])
    return [
        MarkRecord(
            id=int(mark_id),
            row=int((mark_id - 1) // cols),
            col=int((mark_id - 1) % cols),
            x=float(x[k]),
            y=float(y[k]),
            area=round(float(area[k])),
            bbox=(int(box[k, 0]), int(box[k, 1]), int(box[k, 2]), int(box[k, 3])),
        )
        for k, mark_id in enumerate(ids)
    ]


def _paint(
    components: np.ndarray,
    count: int,
    unit_components: list[np.ndarray],
    units: _Units,
    unit_id: np.ndarray,
) -> np.ndarray:
    """uint16 label image: whole components via a lookup table, split parts pixel by pixel."""
    lut = np.zeros(count, dtype=np.uint16)
    split_components: set[int] = set()
    for unit in units.pixels:
        split_components.update(int(c) for c in unit_components[unit])
    for unit in np.flatnonzero(unit_id > 0):
        if unit in units.pixels:
            continue
        lut[unit_components[unit]] = unit_id[unit]
    if split_components:
        lut[np.fromiter(split_components, dtype=np.int64)] = 0
    labels = lut[components]
    for unit, (ys, xs) in units.pixels.items():
        if unit_id[unit] > 0:
            labels[ys, xs] = unit_id[unit]
    return labels


def _quality(
    *,
    rows: int,
    cols: int,
    marks: list[MarkRecord],
    lattice: _Lattice,
    residual_rms: float,
    extra_components: int,
    specks: int,
    merged_fragments: int,
    split_components: int,
    anchor_note: str | None,
    outside: int,
) -> dict:
    expected = rows * cols
    found_ids = np.array([m.id for m in marks], dtype=np.int64)
    present = np.zeros(expected + 1, dtype=bool)
    present[found_ids] = True
    missing = (np.flatnonzero(~present[1:]) + 1).tolist()
    a_x, a_y = lattice.a_x, lattice.a_y
    pitch_x, pitch_y = float(np.hypot(*a_x)), float(np.hypot(*a_y))
    # Angle of the rows in image coordinates (y down): positive turns them clockwise on
    # screen, the convention of model.synth.
    angle = float(np.degrees(np.arctan2(a_x[1], a_x[0])))
    row_shift = float(np.dot(lattice.shift, a_x) / pitch_x)
    cross = float(a_x[0] * a_y[1] - a_x[1] * a_y[0])
    shear = float(np.dot(a_x, a_y) / cross) if cross else 0.0

    warnings: list[str] = []
    if len(marks) < 0.9 * expected:
        warnings.append(
            f"only {len(marks)} of {expected} grid positions have a mark "
            f"({100 * len(marks) / expected:.1f} %)"
        )
    if anchor_note:
        warnings.append(anchor_note)
    if rows > 1 and cols > 1 and len(marks):
        used_rows = max(m.row for m in marks) - min(m.row for m in marks) + 1
        used_cols = max(m.col for m in marks) - min(m.col for m in marks) + 1
        if used_rows < rows or used_cols < cols:
            warnings.append(
                f"the marks span only {used_rows} of {rows} rows and {used_cols} of {cols} "
                "columns: the grid is larger than the marked area"
            )
    if outside:
        warnings.append(
            f"{outside} mark-like objects near lattice nodes got no id (outside the "
            f"{rows}x{cols} grid, or a second object at an occupied node)"
        )
    if residual_rms > HIGH_RESIDUAL * lattice.pitch:
        warnings.append(
            f"high residual {residual_rms:.1f} px ({100 * residual_rms / lattice.pitch:.0f} % of "
            "the pitch): the grid may be distorted"
        )
    if abs(angle) > TESTED_ANGLE:
        warnings.append(f"rotation {angle:.1f}° is beyond the tested ±{TESTED_ANGLE:.0f}°")
    return {
        "rows": rows,
        "cols": cols,
        "expected": expected,
        "found": len(marks),
        "missing_ids": missing,
        "extra_components": extra_components,
        "specks": specks,
        "merged_fragments": merged_fragments,
        "split_components": split_components,
        "angle_deg": round(angle, 4),
        "pitch_px": [round(pitch_y, 3), round(pitch_x, 3)],
        "shear": round(shear, 5),
        "row_shift_px": round(row_shift, 3),
        "residual_rms_px": round(residual_rms, 3),
        "warnings": warnings,
        "ambiguous_anchor": anchor_note is not None,
    }


CSV_COLUMNS = ("id", "row", "col", "x", "y", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")


def write_registration(
    out_dir: Path, registration: Registration, source: np.ndarray | None = None
) -> dict[str, Path]:
    """Write am_coordinates.png (uint16 ids), ams.csv, qc.json and overlay.png into `out_dir`.

    The overlay shows `source` (resized to the label image when it differs) or else the marks
    themselves. Returns the paths by kind: labels, csv, qc, overlay.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = registration.labels
    paths = {
        "labels": out_dir / "am_coordinates.png",
        "csv": out_dir / "ams.csv",
        "qc": out_dir / "qc.json",
        "overlay": out_dir / "overlay.png",
    }
    write_png(paths["labels"], labels.astype(np.uint16, copy=False))

    rows = [
        (m.id, m.row, m.col, f"{m.x:.2f}", f"{m.y:.2f}", m.area, *m.bbox)
        for m in registration.marks
    ]
    _write_text(paths["csv"], _csv_text(rows))
    _write_text(paths["qc"], json.dumps(registration.qc, indent=2) + "\n")

    background = labels > 0 if source is None else source
    overlay = render_overlay(background, labels, registration.marks)
    write_png(paths["overlay"], overlay)
    return paths


def _csv_text(rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
