"""The web viewer's pyramid: build time and peak memory for a slide, and the cost of one tile.

    .venv/bin/python benchmarks/viewer_pyramid.py [--side 5000] [--side 20000]

For each side, writes a 16-bit PNG of that size (a 1000² noise tile repeated), then, in a fresh
process, builds its image pyramid the way the API does on the first tile request (download the
input from a local blob store, decode, normalize, halve level by level into memory-mapped files)
and reads and PNG-encodes tiles spread over every level. Peak memory is the build process's
maximum resident set size above what it held before the build.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

import anyio
import cv2
import numpy as np


def write_slide(path: Path, side: int) -> None:
    tile = np.random.default_rng(0).integers(0, 4000, (1000, 1000), dtype=np.uint16)
    repeats = -(-side // 1000)
    slide = np.tile(tile, (repeats, repeats))[:side, :side]
    cv2.imwrite(str(path), slide, [cv2.IMWRITE_PNG_COMPRESSION, 1])


def measure(slide: Path) -> str:
    """Build the pyramid of `slide` in this process; one line of figures."""
    from api.pyramid import encode_png
    from api.view_cache import ViewCache
    from store.blobs import LocalBlobStore, TaskBlob, task_blob_key

    root = Path(tempfile.mkdtemp(prefix="amseg-viewer-bench-"))
    try:
        blobs = LocalBlobStore(root / "blobs")
        task = types.SimpleNamespace(id=uuid.uuid4())
        task.input_key = task_blob_key(task.id, TaskBlob.INPUT)
        target = blobs.path_for(task.input_key)
        target.parent.mkdir(parents=True)
        shutil.copy(slide, target)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cache = ViewCache(root / "views", blobs, max_pixels=400_000_000)
        start = time.perf_counter()
        pyramid = anyio.run(cache.image, task)
        build = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        tiles = [
            (level, col, row)
            for level in range(len(pyramid.shape.level_sizes))
            for col in range(0, pyramid.shape.grid(level)[0], 3)
            for row in range(0, pyramid.shape.grid(level)[1], 3)
        ]
        start = time.perf_counter()
        for level, col, row in tiles:
            encode_png(pyramid.tile(level, col, row))
        per_tile = (time.perf_counter() - start) / len(tiles) * 1000
        side = pyramid.shape.width
        return (
            f"| {side}² 16-bit | {len(pyramid.shape.level_sizes)} | {build:.1f} s "
            f"| {peak / 1024:.0f} MB | {per_tile:.1f} ms ({len(tiles)} tiles) |"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, action="append", help="slide side, px (repeatable)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure:
        print(measure(args.measure))
        return
    print("| slide | levels | first build | peak memory | one tile, read + encode |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="amseg-viewer-slides-") as scratch:
        for side in args.side or [5000, 20000]:
            slide = Path(scratch) / f"slide_{side}.png"
            write_slide(slide, side)
            command = [sys.executable, __file__, "--measure", str(slide)]
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
