"""Number ablation marks by their place on the acquisition grid (id = row * cols + col + 1).

A lattice is fitted to the mark centroids (no image warps), then whole components are painted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from model.errors import RegistrationError
from model.imageio import write_png
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
    """Node (i, j) sits at origin + j * a_x + i * a_y + (i mod 2) * shift (x, y pixels).

    i = row, j = col. `shift` is the offset of odd rows against even ones: a serpentine raster
    (stage backlash) moves alternate rows along the scan direction; it is zero on plain grids.
    """

    origin: np.ndarray
    a_x: np.ndarray
    a_y: np.ndarray
    shift: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        return np.column_stack([self.a_x, self.a_y])

    @property
    def pitch(self) -> float:
        return float(min(np.hypot(*self.a_x), np.hypot(*self.a_y)))

    def fractional(self, points: np.ndarray) -> np.ndarray:
        """Lattice coordinates (j, i) of (x, y) points; j corrected for the row's parity."""
        inverse = np.linalg.inv(self.matrix)
        raw = (points - self.origin) @ inverse.T
        along, across = inverse @ self.shift
        # The row comes first (the shift barely moves points across rows), then the column.
        odd = np.mod(np.rint(raw[:, 1]), 2)
        return raw - odd[:, None] * np.array([along, across])

    def position(self, ji: np.ndarray) -> np.ndarray:
        """(x, y) position of lattice coordinates (j, i)."""
        odd = np.mod(np.rint(ji[:, 1]), 2)
        return self.origin + ji @ self.matrix.T + odd[:, None] * self.shift

    def candidates(self, points: np.ndarray) -> np.ndarray:
        """(n, 4, 2) nearby nodes (j, i): two rows around each point, two columns in each."""
        inverse = np.linalg.inv(self.matrix)
        raw = (points - self.origin) @ inverse.T
        along = (inverse @ self.shift)[0]
        row = np.floor(raw[:, 1])[:, None] + np.array([0.0, 0.0, 1.0, 1.0])
        col_frac = raw[:, :1] - np.mod(row, 2) * along
        col = np.floor(col_frac) + np.array([0.0, 1.0, 0.0, 1.0])
        return np.stack([col, row], axis=-1)

    def reindexed(self, j0: int, i0: int) -> None:
        """Renumber so that node (j0, i0) becomes (0, 0)."""
        self.origin = self.origin + self.matrix @ np.array([j0, i0], dtype=np.float64)
        if i0 % 2:
            self.origin = self.origin + self.shift
            self.shift = -self.shift


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
    lattice = _fit_lattice(clusters.centroid[core], spacing)
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


def _fit_lattice(points: np.ndarray, spacing: float) -> _Lattice:
    """Lattice fitted on inliers in a region growing outwards from the central mark."""
    a_x, a_y = _initial_lattice(points, spacing)
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
    target = points.copy()
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
    candidates = np.flatnonzero(
        (clusters.area > SPLIT_AREA * mark_area)
        | ((offset > SPLIT_OFFSET * lattice.pitch) & (clusters.area >= 0.5 * mark_area))
    )
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
        nodes, inverse, share = np.unique(node, axis=0, return_inverse=True, return_counts=True)
        big = np.flatnonzero(share >= PART_MIN_AREA * mark_area)
        if big.size <= 1:
            continue
        # Each pixel goes to the nearest node that holds a real part of the component.
        inverse = inverse.ravel()
        node_xy = lattice.position(nodes[big])
        distance = ((xy[:, None, :] - node_xy[None, :, :]) ** 2).sum(axis=2)
        part = np.argmin(distance, axis=1)
        drop[cluster] = True
        split_count += 1
        for k in range(big.size):
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
    candidate = lattice.candidates(np.where(finite[:, None], centroid, 0.0))  # (n, 4, 2)
    position = lattice.position(candidate.reshape(-1, 2)).reshape(n, 4, 2)
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
    pair into an occupied cell). A leftover cluster at a matched node joins it when both together
    are no bigger than one mark (fragments farther apart than the merge radius); anything else
    (dust, a second mark-sized object) stays unmatched.
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
    nearest = np.rint(frac[leftovers])
    distance = np.hypot(*(units.centroid[leftovers] - lattice.position(nearest)).T)
    absorbed = 0
    for k in np.argsort(distance, kind="stable"):
        unit = int(leftovers[k])
        parent = units.parent[unit]
        if parent >= 0:
            siblings = matched[units.parent[matched] == parent]
            if siblings.size:
                gap = np.hypot(*(units.centroid[siblings] - units.centroid[unit]).T)
                node_of_unit[unit] = node_of_unit[siblings[np.argmin(gap)]]
                absorbed += 1
            continue
        row, col = int(nearest[k, 1]) - i0, int(nearest[k, 0]) - j0
        if not (0 <= row < rows and 0 <= col < cols) or distance[k] >= MATCH_CUTOFF * lattice.pitch:
            continue
        node = row * cols + col
        if winner[node] >= 0 and node_area[node] + units.area[unit] <= 1.6 * mark_area:
            node_of_unit[unit] = node
            node_area[node] += units.area[unit]
            absorbed += 1
    return node_of_unit, absorbed


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
