"""The registered marks as GeoJSON that QuPath imports (File > Import objects, or a drop on the
image) and GIS tools read: a FeatureCollection of one feature per mark, its outline a Polygon
(a MultiPolygon for a mark in pieces) in the image's pixel coordinates.

Coordinates are QuPath's: pixel units, origin at the top-left corner of the top-left pixel, so
an outline runs along pixel edges and encloses exactly the mark's pixels. QuPath reads
`objectType` (a detection: light, for tens of thousands of marks), `name`, `classification`
and `measurements` (shown in its measurement tables); id, row, col and spectrum are also plain
properties for other tools. Exterior rings turn counter-clockwise in (x, y), as RFC 7946 asks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from model.image.io import write_text
from model.register.records import MarkRecord

MARK_CLASS = {"name": "Ablation mark", "color": [255, 200, 0]}
WITHOUT_SPECTRUM_CLASS = {"name": "Ablation mark without spectrum", "color": [255, 60, 60]}

Ring = list[list[int]]


def mark_outlines(labels: np.ndarray, mark: MarkRecord) -> list[Ring]:
    """The outer outline of each piece of the mark, along pixel edges (holes filled).

    Traced on the mark's box enlarged 2x: there every boundary pixel's centre sits a quarter
    pixel inside an edge, so ceil(u / 2) is the pixel corner it belongs to."""
    x0, y0, x1, y1 = mark.bbox
    crop = np.zeros((y1 - y0 + 2, x1 - x0 + 2), np.uint8)  # a margin, so outlines close
    crop[1:-1, 1:-1] = labels[y0:y1, x0:x1] == mark.id
    doubled = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for contour in contours:
        corners = _corners_only((contour[:, 0, :] + 1) // 2 + np.array([x0 - 1, y0 - 1]))
        if _signed_area(corners) < 0:
            corners = corners[::-1]
        rings.append([*corners.tolist(), corners[0].tolist()])
    return rings


def _previous(points: np.ndarray) -> np.ndarray:
    return np.concatenate((points[-1:], points[:-1]))


def _corners_only(points: np.ndarray) -> np.ndarray:
    """Drop repeated points, then points on a straight run (the 2x trace leaves both)."""
    points = points[np.any(points != _previous(points), axis=1)]
    into = points - _previous(points)
    out = np.concatenate((into[1:], into[:1]))
    turn = into[:, 0] * out[:, 1] - into[:, 1] * out[:, 0]
    return points[turn != 0] if np.count_nonzero(turn) >= 3 else points


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area, positive when the ring turns counter-clockwise in (x, y)."""
    before = _previous(ring)
    return 0.5 * float(np.sum(before[:, 0] * ring[:, 1] - before[:, 1] * ring[:, 0]))


def mark_feature(mark: MarkRecord, rings: list[Ring], joined: bool) -> dict:
    """One mark as a GeoJSON feature; `joined`: an acquisition was joined, so a mark without
    a spectrum is classed apart."""
    geometry = (
        {"type": "Polygon", "coordinates": [rings[0]]}
        if len(rings) == 1
        else {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]}
    )
    numbers = {"id": mark.id, "row": mark.row, "col": mark.col}
    if mark.spectrum is not None:
        numbers["spectrum"] = mark.spectrum
    classification = MARK_CLASS if mark.spectrum is not None or not joined else None
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "objectType": "detection",
            "name": str(mark.id),
            "classification": classification or WITHOUT_SPECTRUM_CLASS,
            "id": mark.id,
            "row": mark.row,
            "col": mark.col,
            "spectrum": mark.spectrum,
            "measurements": numbers,  # QuPath keeps numbers here, not in plain properties
        },
    }


def mark_features(
    labels: np.ndarray, marks: Sequence[MarkRecord], joined: bool = False
) -> Iterator[dict]:
    """A feature per mark that has pixels in `labels`, in the order of `marks`."""
    for mark in marks:
        rings = mark_outlines(labels, mark)
        if rings:
            yield mark_feature(mark, rings, joined)


def geojson_text(labels: np.ndarray, marks: Sequence[MarkRecord], joined: bool = False) -> str:
    """The FeatureCollection as compact JSON text, built a feature at a time."""
    parts = [
        json.dumps(feature, separators=(",", ":"))
        for feature in mark_features(labels, marks, joined)
    ]
    return '{"type":"FeatureCollection","features":[' + ",\n".join(parts) + "]}\n"


def write_geojson(
    path: str | Path, labels: np.ndarray, marks: Sequence[MarkRecord], joined: bool = False
) -> Path:
    """Write the marks' FeatureCollection to `path` (atomically)."""
    return write_text(Path(path), geojson_text(labels, marks, joined))
