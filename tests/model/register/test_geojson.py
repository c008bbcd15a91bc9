"""marks.geojson: valid GeoJSON with one feature per mark, outlines along pixel edges that
enclose exactly the mark's pixels, and the properties QuPath reads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from model.register.acquisition import read_imzml
from model.register.geojson import MARK_CLASS, WITHOUT_SPECTRUM_CLASS, mark_outlines
from model.register.records import MarkRecord
from model.register.registration import register_marks
from model.register.writers import write_registration
from tests.model.grid_masks import make_grid_mask
from tests.model.register.cases import HARD, register_grid
from tests.model.register.imzml_files import serpentine, write_imzml


def signed_area(ring: list[list[int]]) -> float:
    points = np.array(ring[:-1], dtype=np.float64)
    before = np.roll(points, 1, axis=0)
    return 0.5 * float(np.sum(before[:, 0] * points[:, 1] - before[:, 1] * points[:, 0]))


def polygons(geometry: dict) -> list[list[list[list[int]]]]:
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"]]
    assert geometry["type"] == "MultiPolygon"
    return geometry["coordinates"]


def test_one_valid_feature_per_mark_with_its_properties(tmp_path: Path) -> None:
    grid = make_grid_mask(dataclasses.replace(HARD, seed=59))
    registration = register_grid(grid)
    written = write_registration(tmp_path, registration, geojson=True)
    collection = json.loads(written["geojson"].read_text())

    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == len(registration.marks)
    kinds = set()
    for feature, mark in zip(features, registration.marks, strict=True):
        assert feature["type"] == "Feature"
        properties = feature["properties"]
        assert (properties["id"], properties["row"], properties["col"]) == (
            mark.id,
            mark.row,
            mark.col,
        )
        assert properties["spectrum"] is None  # no acquisition joined
        assert properties["objectType"] == "detection"
        assert properties["classification"] == MARK_CLASS
        assert properties["measurements"] == {"id": mark.id, "row": mark.row, "col": mark.col}
        kinds.add(feature["geometry"]["type"])
        area = 0.0
        for polygon in polygons(feature["geometry"]):
            ring = polygon[0]
            assert ring[0] == ring[-1] and len(ring) >= 5  # closed, at least a square
            assert signed_area(ring) > 0  # counter-clockwise, RFC 7946
            steps = np.diff(np.array(ring), axis=0)
            assert np.all((steps == 0).sum(axis=1) == 1)  # along pixel edges only
            area += signed_area(ring)
        pixels = ndimage.binary_fill_holes(registration.labels == mark.id)
        assert area == np.count_nonzero(pixels)  # exactly the mark's pixels
    assert kinds == {"Polygon", "MultiPolygon"}  # fragments stay one feature


def test_outline_in_image_pixel_coordinates() -> None:
    labels = np.zeros((10, 12), np.uint32)
    labels[2:5, 3:7] = 70_001  # ids past 16 bits
    mark = MarkRecord(70_001, 7, 1, 4.5, 3.0, 12, (3, 2, 7, 5))
    (ring,) = mark_outlines(labels, mark)
    assert sorted(map(tuple, ring[:-1])) == [(3, 2), (3, 5), (7, 2), (7, 5)]


def test_spectrum_and_marks_without_one(tmp_path: Path) -> None:
    grid = make_grid_mask(dataclasses.replace(HARD, missing_fraction=0.0, seed=61))
    rows, cols = HARD.rows, HARD.cols
    acquisition = read_imzml(write_imzml(tmp_path / "a.imzML", serpentine(rows, cols, {(0, 2)})))
    registration = register_marks(grid.mask, rows, cols, acquisition=acquisition)
    written = write_registration(tmp_path, registration, geojson=True)
    by_id = {
        f["properties"]["id"]: f["properties"]
        for f in json.load(written["geojson"].open())["features"]
    }
    for mark in registration.marks:
        assert by_id[mark.id]["spectrum"] == mark.spectrum
        assert by_id[mark.id]["measurements"].get("spectrum") == mark.spectrum
    # The mark at row 0, column 2, where nothing was shot.
    assert by_id[3]["spectrum"] is None
    assert by_id[3]["classification"] == WITHOUT_SPECTRUM_CLASS
    assert by_id[1]["spectrum"] == 0 and by_id[1]["classification"] == MARK_CLASS
