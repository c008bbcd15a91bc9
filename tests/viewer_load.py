"""Huge slides in the viewer, for tests/api/test_viewer_memory.py and
benchmarks/viewer_memory.py: the stored files of a FINISHED 20000² task as a worker makes them
(its tile packs, made by the worker's own code, and a mark table of 90 000 marks), what a
person's viewer asks for when it opens one, and the API process's memory meanwhile."""

from __future__ import annotations

import json
import struct
import threading
import zlib
from pathlib import Path

import httpx
import numpy as np

from model.image.pyramid import PyramidShape
from model.image.tilepack import write_image_pack, write_mask_packs

# A slide's texture: noise like a real slide's (its tiles PNG-encode to 50-60 KB, as the real
# crops' do), repeated, over a slow gradient.
TEXTURE_SIDE = 1000
MARK_PITCH = 64  # a grid of square marks
MARK_SIDE = 18


def zeros_png(width: int, height: int) -> bytes:
    """A valid 8-bit gray PNG of zeros, compressed row block by row block (never whole):
    a 400 MP upload of a few hundred kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    block_rows = 500
    rows = b"\x00" * (width + 1) * block_rows  # filter byte + pixels, per row
    parts = [compressor.compress(rows) for _ in range(height // block_rows)]
    parts += [compressor.compress(rows[: (width + 1) * (height % block_rows)]), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def slide_views(directory: Path, side: int) -> dict[str, Path]:
    """The viewer's files of a side² slide, by result name: the image's, the mask's and the
    outlines' tile packs (worker code: model/image/tilepack.py) and the mark table."""
    noise = np.random.default_rng(38).integers(0, 120, (TEXTURE_SIDE, TEXTURE_SIDE), np.uint8)
    image = np.empty((side, side), np.uint8)
    for top in range(0, side, TEXTURE_SIDE):
        rows = min(TEXTURE_SIDE, side - top)
        for left in range(0, side, TEXTURE_SIDE):
            cols = min(TEXTURE_SIDE, side - left)
            image[top : top + rows, left : left + cols] = noise[:rows, :cols] + (
                (top + left) * 100 // (2 * side)
            )
    views = {"views/image.tiles": write_image_pack(image, directory / "image.tiles")}
    del image
    on = (np.arange(side) % MARK_PITCH) < MARK_SIDE
    mask = np.zeros((side, side), bool)
    mask[on] = on
    mask_path, outline_path = write_mask_packs(
        mask, directory / "mask.tiles", directory / "outline.tiles"
    )
    del mask
    views["views/mask.tiles"], views["views/outline.tiles"] = mask_path, outline_path
    views["views/marks.json"] = _mark_table(directory / "marks.json", side)
    return views


def _mark_table(path: Path, side: int, rows: int = 300, cols: int = 300) -> Path:
    """A mark table as the worker writes it (model/register/mark_table.py's record)."""
    pitch = side / max(rows, cols)
    marks = [
        {
            "id": row * cols + col + 1,
            "row": row,
            "col": col,
            "x": round((col + 0.5) * pitch, 2),
            "y": round((row + 0.5) * pitch, 2),
            "area": MARK_SIDE**2,
            "bbox": [x0 := int(col * pitch), y0 := int(row * pitch), x0 + 18, y0 + 18],
        }
        for row in range(rows)
        for col in range(cols)
    ]
    record = {
        "rows": rows,
        "cols": cols,
        "expected": rows * cols,
        "found": len(marks),
        "marks": marks,
        "missing": [],
        "extra": [],
        "extra_total": 0,
    }
    path.write_text(json.dumps(record, separators=(",", ":")))
    return path


def open_viewer(base_url: str, task_id: str, *, marks: bool = True) -> int:
    """What the page asks for when a person opens a FINISHED task and looks around: the task,
    its pyramid and (with `marks`) mark table, every tile of the levels a screen shows the
    whole slide at (and coarser) for the image, the mask and the outlines, then the full-size
    tiles of two screens (1792 x 1024 px) of image and mask, and a preview. Raises on any
    failed answer; the number of requests."""
    count = 0
    with httpx.Client(base_url=base_url, timeout=600) as client:

        def get(path: str) -> httpx.Response:
            nonlocal count
            count += 1
            response = client.get(path)
            response.raise_for_status()
            return response

        get(f"/tasks/{task_id}")
        pyramid = get(f"/tasks/{task_id}/pyramid").json()
        assert pyramid.get("state", "ready") == "ready", pyramid  # (earlier versions: none)
        if marks:
            assert len(get(f"/tasks/{task_id}/marks").content) > 1_000_000
        levels = pyramid["levels"]
        for layer in ("image", "mask", "outline"):
            for level in levels[4:]:
                for row in range(level["rows"]):
                    for col in range(level["cols"]):
                        get(f"/tasks/{task_id}/tiles/{layer}/{level['level']}/{col}_{row}.png")
        full = levels[0]
        for first_col, first_row in ((3, 5), (full["cols"] - 8, full["rows"] // 2)):
            for layer in ("image", "mask"):
                for row in range(first_row, first_row + 4):
                    for col in range(first_col, first_col + 7):
                        get(f"/tasks/{task_id}/tiles/{layer}/0/{col}_{row}.png")
        get(f"/tasks/{task_id}/preview.png")
    return count


def tile_count(side: int) -> int:
    shape = PyramidShape(side, side)
    return sum(cols * rows for cols, rows in map(shape.grid, range(len(shape.level_sizes))))


class MemoryWatch:
    """A process's resident memory: sampled every 20 ms while watching (VmRSS), and its peak
    since it started (VmHWM, from the kernel)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise LookupError(f"no {field} in /proc/{self.pid}/status")

    def rss(self) -> int:
        return self._status("VmRSS")

    def peak(self) -> int:
        return self._status("VmHWM")

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append(self.rss())

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
