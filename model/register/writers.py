"""Writing a registration: the id image (am_coordinates.png, 16-bit, while the grid's ids fit;
else am_coordinates.tiff, 32-bit), ams.csv, qc.json and overlay.png; on request the id image as
a 32-bit TIFF that napari opens as labels, and marks.geojson for QuPath."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from model.image.io import write_labels_tiff, write_png, write_text
from model.register.geojson import write_geojson
from model.register.overlay import render_overlay
from model.register.records import Registration

CSV_COLUMNS = ("id", "row", "col", "x", "y", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")
SPECTRUM_COLUMN = "spectrum"  # added when an acquisition was joined
LABELS_PNG, LABELS_TIFF = "am_coordinates.png", "am_coordinates.tiff"


def write_registration(
    out_dir: Path,
    registration: Registration,
    source: np.ndarray | None = None,
    *,
    tiff: bool = False,
    geojson: bool = False,
) -> dict[str, Path]:
    """Write the id image, ams.csv, qc.json and overlay.png into `out_dir`; with `tiff` also
    am_coordinates.tiff (32-bit, for napari), with `geojson` marks.geojson (for QuPath).

    The id image is am_coordinates.png (16-bit) while the ids fit, else am_coordinates.tiff
    (32-bit). ams.csv has a `spectrum` column when an acquisition was joined. The overlay shows
    `source` (resized to the label image when it differs) or else the marks themselves.
    Returns the paths by kind: labels, csv, qc, overlay, and labels_tiff, geojson when
    written (labels_tiff is labels when that is the TIFF).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = registration.labels
    paths = _write_ids(out_dir, labels, tiff)
    joined = "acquisition" in registration.qc
    paths["csv"] = write_text(out_dir / "ams.csv", _csv_text(registration, joined))
    qc_text = json.dumps(registration.qc, indent=2) + "\n"
    paths["qc"] = write_text(out_dir / "qc.json", qc_text)
    if geojson:
        paths["geojson"] = write_geojson(
            out_dir / "marks.geojson", labels, registration.marks, joined
        )
    background = labels > 0 if source is None else source
    overlay = render_overlay(background, labels, registration.marks)
    paths["overlay"] = write_png(out_dir / "overlay.png", overlay)
    return paths


def _write_ids(out_dir: Path, labels: np.ndarray, tiff: bool) -> dict[str, Path]:
    """The id image as 16-bit PNG when its type allows, else (and with `tiff`) 32-bit TIFF."""
    paths = {}
    if labels.dtype == np.uint16:
        paths["labels"] = write_png(out_dir / LABELS_PNG, labels)
    if tiff or labels.dtype != np.uint16:
        paths["labels_tiff"] = write_labels_tiff(out_dir / LABELS_TIFF, labels)
        paths.setdefault("labels", paths["labels_tiff"])
    return paths


def _csv_text(registration: Registration, joined: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow((*CSV_COLUMNS, SPECTRUM_COLUMN) if joined else CSV_COLUMNS)
    for m in registration.marks:
        row = (m.id, m.row, m.col, f"{m.x:.2f}", f"{m.y:.2f}", m.area, *m.bbox)
        # An empty cell where the node has no spectrum.
        writer.writerow((*row, "" if m.spectrum is None else m.spectrum) if joined else row)
    return buffer.getvalue()
