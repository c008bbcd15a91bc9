"""Writing a registration: am_coordinates.png (uint16 ids), ams.csv, qc.json and overlay.png."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from model.image.io import write_png, write_text
from model.register.overlay import render_overlay
from model.register.records import Registration

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
    write_text(paths["csv"], _csv_text(rows))
    write_text(paths["qc"], json.dumps(registration.qc, indent=2) + "\n")

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
