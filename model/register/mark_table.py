"""The mark table of a registered task as JSON (what `GET /tasks/{id}/marks` serves): every
registered mark from ams.csv, where the grid's missing nodes should be, and the mask's objects
that got no id. The worker writes it with the ids (worker/viewing.py).
"""

from __future__ import annotations

import csv
import io
import math

import cv2
import numpy as np

from model.register.records import MarkRecord

# Extra objects are looked for on a copy of at most this many pixels (larger masks are reduced
# by an integer factor first, any mark pixel in a block counting), so a 20000² mask needs no
# 32-bit component labels at full size.
EXTRA_SEARCH_PIXELS = 16_000_000
# Objects smaller than this (full-size pixels) are specks, not extra marks.
MIN_EXTRA_AREA = 9
# At most this many extra objects are listed (largest first); `extra_total` says how many.
MAX_EXTRA = 5000


def read_ams_csv(text: str) -> list[dict]:
    """ams.csv's rows as records: id, row, col, x, y, area and bbox [x0, y0, x1, y1); and
    `spectrum` (an int, or None where the node has none) when an imzML was joined."""
    marks = []
    for row in csv.DictReader(io.StringIO(text)):
        mark = {
            "id": int(row["id"]),
            "row": int(row["row"]),
            "col": int(row["col"]),
            "x": float(row["x"]),
            "y": float(row["y"]),
            "area": int(row["area"]),
            "bbox": [int(row[f"bbox_{corner}"]) for corner in ("x0", "y0", "x1", "y1")],
        }
        if "spectrum" in row:
            mark["spectrum"] = int(row["spectrum"]) if row["spectrum"] else None
        marks.append(mark)
    return marks


def mark_records(marks: list[dict]) -> list[MarkRecord]:
    """read_ams_csv's records as the library's MarkRecords (for the GeoJSON export)."""
    return [
        MarkRecord(
            id=m["id"],
            row=m["row"],
            col=m["col"],
            x=m["x"],
            y=m["y"],
            area=m["area"],
            bbox=tuple(m["bbox"]),
            spectrum=m.get("spectrum"),
        )
        for m in marks
    ]


def missing_nodes(
    marks: list[dict], missing_ids: list[int], cols: int, shape: tuple[int, ...] | None = None
) -> list[dict]:
    """Where each missing id's node lies: the affine map (row, col) -> (x, y) fitted to the
    registered marks by least squares; x and y are None when the marks do not fix a plane.
    `inside`: whether the node lies on the image of `shape` (height, width); a node off it
    means the grid given is larger than the image shows (None: position or shape unknown)."""
    fit = None
    if len(marks) >= 3:
        design = np.array([[1.0, m["col"], m["row"]] for m in marks])
        centres = np.array([[m["x"], m["y"]] for m in marks])
        if np.linalg.matrix_rank(design) == 3:
            fit = np.linalg.lstsq(design, centres, rcond=None)[0]
    nodes = []
    for mark_id in missing_ids:
        row, col = divmod(mark_id - 1, cols)
        x = y = inside = None
        if fit is not None:
            x, y = (round(float(v), 1) for v in np.array([1.0, col, row]) @ fit)
            if shape is not None:
                inside = bool(0 <= x < shape[1] and 0 <= y < shape[0])
        nodes.append({"id": mark_id, "row": row, "col": col, "x": x, "y": y, "inside": inside})
    return nodes


def extra_objects(mask: np.ndarray, labels: np.ndarray) -> tuple[list[dict], int]:
    """Objects of the mask with no id (components of mask & labels == 0), largest first, at
    most MAX_EXTRA; their centre, approximate area and bbox in full-size pixels. Also how many
    there are in all."""
    unlabelled = (mask > 0) & (labels == 0)
    height, width = unlabelled.shape
    factor = max(1, math.ceil(math.sqrt(height * width / EXTRA_SEARCH_PIXELS)))
    if factor > 1:
        unlabelled = _any_in_blocks(unlabelled, factor)
    count, _, stats, centres = cv2.connectedComponentsWithStats(
        unlabelled.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    del unlabelled
    found = []
    for index in range(1, count):
        x0, y0, w, h, area = (int(v) for v in stats[index])
        area *= factor * factor
        if area < MIN_EXTRA_AREA:
            continue
        cx, cy = (float(v) for v in centres[index])
        found.append(
            {
                "x": round((cx + 0.5) * factor - 0.5, 1),
                "y": round((cy + 0.5) * factor - 0.5, 1),
                "area": area,
                "bbox": [
                    x0 * factor,
                    y0 * factor,
                    min((x0 + w) * factor, width),
                    min((y0 + h) * factor, height),
                ],
            }
        )
    found.sort(key=lambda item: -item["area"])
    return found[:MAX_EXTRA], len(found)


def _any_in_blocks(flags: np.ndarray, factor: int) -> np.ndarray:
    """bool (ceil(H/f), ceil(W/f)): whether any pixel of each f x f block is set."""
    height, width = flags.shape
    rows, cols = -(-height // factor), -(-width // factor)
    reduced = np.zeros((rows, cols), dtype=bool)
    for top in range(0, height, factor * 256):  # strips, to keep the copies small
        strip = flags[top : top + factor * 256]
        padded = np.zeros((-(-strip.shape[0] // factor) * factor, cols * factor), dtype=bool)
        padded[: strip.shape[0], :width] = strip
        blocks = padded.reshape(padded.shape[0] // factor, factor, cols, factor)
        reduced[top // factor : top // factor + blocks.shape[0]] = blocks.any(axis=(1, 3))
    return reduced


def marks_record(ams_csv: str, qc: dict, mask: np.ndarray, labels: np.ndarray) -> dict:
    """The JSON body of `GET /tasks/{id}/marks`."""
    marks = read_ams_csv(ams_csv)
    rows, cols = int(qc["rows"]), int(qc["cols"])
    extra, extra_total = extra_objects(mask, labels)
    return {
        "rows": rows,
        "cols": cols,
        "expected": rows * cols,
        "found": len(marks),
        "marks": marks,
        "missing": missing_nodes(marks, list(qc.get("missing_ids", [])), cols, mask.shape),
        "extra": extra,
        "extra_total": extra_total,
    }
