"""Touching marks: a component whose pixels fill several lattice nodes is split into per-node
parts, at the narrow neck between its blobs where it has one, else by nearest node."""

from __future__ import annotations

import cv2
import numpy as np

from model.register.lattice import Lattice
from model.register.marks import DOUBLE_AREA, Units

SPLIT_AREA = 1.4
"""Marks larger than this multiple of the typical area are checked for touching neighbours."""

SPLIT_OFFSET = 0.3
"""... as are marks whose centroid is this fraction of the pitch away from every node."""

PART_MIN_AREA = 0.25
"""A node takes its own share of a touching component when it holds this much typical area."""


def split_touching(
    clusters: Units,
    cluster_of: np.ndarray,
    kept: np.ndarray,
    components: np.ndarray,
    lattice: Lattice,
    mark_area: float,
) -> tuple[Units, list[np.ndarray], int]:
    """Split clusters whose pixels fill several nodes (touching marks) into per-node parts.

    Returns the units, the component labels behind each unit, and how many clusters were split.
    """
    n = clusters.area.size
    unit_components = _cluster_components(cluster_of, kept, n)

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
        split = _split_pixels(
            clusters.bbox[cluster],
            unit_components[cluster],
            components,
            lattice,
            mark_area,
            by_node=bool(clear[cluster]),
        )
        if split is None:
            continue
        xs, ys, part = split
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
    units = Units(
        centroid=np.concatenate(centroid).astype(np.float64),
        area=np.concatenate(area).astype(np.int64),
        bbox=np.concatenate(bbox).astype(np.int64),
        pixels=pixels,
        parent=np.concatenate([clusters.parent, np.array(parent, dtype=np.int64)]),
    )
    # Split clusters stay in the arrays (indices stable) but can never match a node.
    units.centroid[np.flatnonzero(drop)] = np.nan
    return units, unit_components, split_count


def _cluster_components(cluster_of: np.ndarray, kept: np.ndarray, n: int) -> list[np.ndarray]:
    """The component labels of each of the n clusters."""
    members: list[list[int]] = [[] for _ in range(n)]
    for position, cluster in enumerate(cluster_of):
        members[cluster].append(int(kept[position]) + 1)
    return [np.array(m, dtype=np.int64) for m in members]


def _split_pixels(
    bbox: np.ndarray,
    labels: np.ndarray,
    components: np.ndarray,
    lattice: Lattice,
    mark_area: float,
    *,
    by_node: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The pixels (xs, ys) of the cluster made of components `labels` inside `bbox`, and a part
    index per pixel; None when the cluster stays whole.

    A cluster is split when it fills several nodes: at its blobs when it has one per node, else
    (only when `by_node`) each pixel to the nearest of those nodes.
    """
    x0, y0, x1, y1 = bbox
    window = components[y0:y1, x0:x1]
    ys, xs = np.nonzero(np.isin(window, labels))
    ys, xs = ys + y0, xs + x0
    xy = np.column_stack([xs, ys]).astype(np.float64)
    node = np.rint(lattice.fractional(xy))
    nodes, share = np.unique(node, axis=0, return_counts=True)
    big = np.flatnonzero(share >= PART_MIN_AREA * mark_area)
    if big.size <= 1:
        return None
    # The component's blobs (marks touch by a narrow neck) when there are as many as the
    # nodes it covers; otherwise each pixel goes to the nearest node that holds a real
    # part of the component.
    part = _blobs(xs - x0, ys - y0, (y1 - y0, x1 - x0))
    if part is not None and part.max() + 1 < big.size:
        part = None  # fewer blobs than marks: some still touch broadly, split by node
    if part is None and not by_node:
        return None
    if part is None:
        node_xy = lattice.position(nodes[big])
        distance = ((xy[:, None, :] - node_xy[None, :, :]) ** 2).sum(axis=2)
        part = np.argmin(distance, axis=1)
    return xs, ys, part


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
