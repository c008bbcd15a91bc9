"""From ids per unit to the outputs: the label image and one record per registered mark."""

from __future__ import annotations

import numpy as np

from model.register.marks import Units
from model.register.records import MarkRecord


def mark_records(units: Units, unit_id: np.ndarray, cols: int) -> list[MarkRecord]:
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


def paint(
    components: np.ndarray,
    count: int,
    unit_components: list[np.ndarray],
    units: Units,
    unit_id: np.ndarray,
    dtype: type[np.unsignedinteger] = np.uint16,
) -> np.ndarray:
    """Label image of `dtype` (records.id_dtype: uint16 while the grid's ids fit, else uint32):
    whole components via a lookup table, split parts pixel by pixel."""
    lut = np.zeros(count, dtype=dtype)
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
