"""The marks of a binary mask: connected components, specks set aside, fragments of one mark
merged into clusters; and the area of one whole mark."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from model.errors import RegistrationError
from model.register.lattice import MATCH_CUTOFF, MIN_MARKS, Lattice

SPECK_FRACTION = 0.15
"""Components smaller than this fraction of the typical component area are specks (stay 0)."""

FRAGMENT_MERGE = 0.35
"""Centroids closer than this fraction of the pitch are fragments of one mark."""

MARK_LIKE_AREA = 0.3
"""Clusters below this fraction of the typical mark area are dust-like for anchoring."""

DOUBLE_AREA = 1.2
"""A double mark (fainter copy of a mark, displaced) is at most this multiple of a mark."""


@dataclass
class Units:
    """Things to match to nodes: clusters of components, or per-node parts of touching marks."""

    centroid: np.ndarray  # (n, 2) x, y
    area: np.ndarray  # (n,) pixels
    bbox: np.ndarray  # (n, 4) x0, y0, x1, y1 exclusive
    pixels: dict[int, tuple[np.ndarray, np.ndarray]]  # unit -> (ys, xs) for split parts only
    parent: np.ndarray  # (n,) cluster a split part came from, -1 for whole clusters


@dataclass
class FoundMarks:
    """The components of a mask and the clusters (whole marks) made of those that are no specks."""

    components: np.ndarray  # (H, W) int32 component labels, 0 = background
    count: int  # component labels, background included
    areas: np.ndarray  # (count - 1,) pixels of components 1 .. count - 1
    kept: np.ndarray  # indices into `areas` of the components that are no specks
    cluster_of: np.ndarray  # cluster index of each kept component
    clusters: Units
    spacing: float  # about the smaller pitch, from the kept components


def find_marks(mask: np.ndarray) -> FoundMarks:
    """Components of the mask, specks set aside and fragments of one mark merged into clusters.

    Raises RegistrationError for a mask that is not 2-D, is empty, or holds fewer than
    MIN_MARKS marks.
    """
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
    return FoundMarks(components, count, areas, kept, cluster_of, clusters, spacing)


def count_objects(mask: np.ndarray) -> dict[str, int]:
    """What a mask holds, counted as a registration counts it but without a grid: `found`
    mark-sized objects (the fragments of one mark together), `small_objects` below
    MARK_LIKE_AREA of the typical one, and `specks`, set aside first."""
    _, _, stats, centroids = cv2.connectedComponentsWithStats(
        _binary(mask), connectivity=8, ltype=cv2.CV_32S
    )
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    if areas.size == 0:
        return {"found": 0, "small_objects": 0, "specks": 0}
    kept = np.flatnonzero(areas >= SPECK_FRACTION * _weighted_median(areas))
    points = centroids[1:][kept].astype(np.float64)
    if kept.size >= 2:
        cluster_of = _merge_fragments(points, FRAGMENT_MERGE * _mark_spacing(points))
    else:
        cluster_of = np.zeros(kept.size, dtype=np.int64)
    cluster_area = np.bincount(cluster_of, weights=areas[kept])
    mark_like = cluster_area >= MARK_LIKE_AREA * _weighted_median(cluster_area)
    return {
        "found": int(mark_like.sum()),
        "small_objects": int((~mark_like).sum()),
        "specks": int(areas.size - kept.size),
    }


def well_shaped(clusters: Units) -> np.ndarray:
    """Clusters of about one mark's area, the ones to fit the lattice to: touching pairs and dust
    sit off the nodes. All clusters when fewer than MIN_MARKS are well shaped."""
    cluster_area = _weighted_median(clusters.area)
    core = (clusters.area >= 0.5 * cluster_area) & (clusters.area <= 1.6 * cluster_area)
    if core.sum() < MIN_MARKS:
        core = np.ones(clusters.area.size, dtype=bool)
    return core


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


def node_area(clusters: Units, lattice: Lattice) -> float:
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
) -> Units:
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
    return Units(
        centroid=centroid,
        area=area.astype(np.int64),
        bbox=box,
        pixels={},
        parent=np.full(n, -1, dtype=np.int64),
    )
