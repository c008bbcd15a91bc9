"""The files a registration is written to: am_coordinates.png, ams.csv, qc.json, overlay.png."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np

from model.image.io import read_image
from model.register.records import MarkRecord
from model.register.writers import write_registration
from tests.model.grid_masks import make_grid_mask
from tests.model.register.cases import HARD, register_grid


def test_write_registration_outputs(tmp_path) -> None:
    grid = make_grid_mask(dataclasses.replace(HARD, seed=53))
    registration = register_grid(grid)
    source = np.random.default_rng(0).random(grid.mask.shape).astype(np.float32)
    written = write_registration(tmp_path / "out", registration, source=source)
    assert set(written) == {"labels", "csv", "qc", "overlay"}
    labels = read_image(written["labels"])
    assert written["labels"].name == "am_coordinates.png"
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, registration.labels)
    with written["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "id",
        "row",
        "col",
        "x",
        "y",
        "area",
        "bbox_x0",
        "bbox_y0",
        "bbox_x1",
        "bbox_y1",
    ]
    assert len(rows) == len(registration.marks)
    first: MarkRecord = registration.marks[0]
    assert int(rows[0]["id"]) == first.id and int(rows[0]["bbox_x1"]) == first.bbox[2]
    qc = json.loads(written["qc"].read_text())
    assert set(qc) >= {
        "rows",
        "cols",
        "expected",
        "found",
        "missing",
        "missing_ids",
        "extra",
        "small_objects",
        "specks",
        "empty_rows",
        "empty_cols",
        "angle_deg",
        "pitch_px",
        "shear",
        "residual_rms_px",
        "warnings",
        "ambiguous_anchor",
    }
    overlay = read_image(written["overlay"])
    assert overlay.shape == (*grid.mask.shape, 3) and overlay.dtype == np.uint8
    # Without a source the mask is the background; a source of another size is resized.
    write_registration(tmp_path / "plain", registration)
    small = (np.random.default_rng(1).random((50, 70)) * 255).astype(np.uint8)
    resized = write_registration(tmp_path / "small", registration, source=small)
    assert read_image(resized["overlay"]).shape == (*grid.mask.shape, 3)
