"""The web viewer's tiles as the worker makes them: time and memory of a slide's tile packs, their
size, and what one tile costs the API to send.

    .venv/bin/python benchmarks/viewer_pyramid.py [--side 5000] [--side 20000] [--threads N]

For each side, writes a 16-bit PNG of that size (a 1000² noise tile repeated: tiles as heavy as
real ones, the worst case for PNG), then, in a fresh process, decodes it as a worker does
(read_gray) and makes the image's tile pack (model/image/tilepack.py: normalize, halve level by
level into memory-mapped files, PNG-encode every tile) and, from a grid of square marks, the
mask's and the outlines' packs. Peak memory is the process's peak resident size while it makes
each (VmHWM, reset first) above what it held with the decoded image (or mask); it counts the
pages of the levels' memory-mapped files it touched. A tile's cost is the API's: read its bytes
from a local blob store by the pack's index (no decode, no encode).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_slide(path: Path, side: int) -> None:
    tile = np.random.default_rng(0).integers(0, 4000, (1000, 1000), dtype=np.uint16)
    repeats = -(-side // 1000)
    slide = np.tile(tile, (repeats, repeats))[:side, :side]
    cv2.imwrite(str(path), slide, [cv2.IMWRITE_PNG_COMPRESSION, 1])


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def reset_peak() -> int:
    """Start the kernel's peak resident size (VmHWM) again from now; the size now."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_bytes("VmRSS")


def measure(slide: Path, threads: int | None) -> str:
    """Make the packs of `slide` in this process; one line of figures."""
    from model.image.gray import read_gray
    from model.image.tilepack import (
        read_index,
        tile_order,
        write_image_pack,
        write_mask_packs,
    )
    from store.blobs import LocalBlobStore

    image = read_gray(slide)
    side = image.shape[0]
    with tempfile.TemporaryDirectory(prefix="amseg-viewer-bench-") as scratch:
        work = Path(scratch)
        before = reset_peak()
        start = time.perf_counter()
        image_pack = write_image_pack(image, work / "image.tiles", threads=threads)
        image_s = time.perf_counter() - start
        image_peak = status_bytes("VmHWM") - before
        del image
        on = (np.arange(side) % 64) < 18
        mask = np.zeros((side, side), bool)
        mask[on] = on
        before = reset_peak()
        start = time.perf_counter()
        write_mask_packs(mask, work / "mask.tiles", work / "outline.tiles", threads=threads)
        mask_s = time.perf_counter() - start
        mask_peak = status_bytes("VmHWM") - before
        del mask
        sizes = [(work / f"{name}.tiles").stat().st_size / 1e6 for name in ("image", "mask")]

        blobs = LocalBlobStore(work / "blobs")
        key = "tasks/bench/views/image.tiles"
        blobs.put_file(key, image_pack)
        start = time.perf_counter()
        index = read_index(
            lambda n: blobs.get_tail(key, n), lambda s, n: blobs.get_range(key, s, n)
        )
        index_ms = (time.perf_counter() - start) * 1000
        tiles = list(tile_order(index.shape))[::7]
        start = time.perf_counter()
        for level, col, row in tiles:
            blobs.get_range(key, *index.tile_span(level, col, row))
        per_tile = (time.perf_counter() - start) / len(tiles) * 1000
    count = len(index.offsets) - 1
    return (
        f"| {side}² 16-bit | {count} | {image_s:.1f} s | {mask_s:.1f} s "
        f"| +{image_peak / 2**20:.0f} MB, +{mask_peak / 2**20:.0f} MB "
        f"| {sizes[0]:.0f} MB + {sizes[1]:.1f} MB | {index_ms:.1f} ms | {per_tile:.2f} ms |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, action="append", help="slide side, px (repeatable)")
    parser.add_argument("--threads", type=int, help="encoding threads (default: up to 4)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure:
        print(measure(args.measure, args.threads))
        return
    print(
        "| slide | tiles a layer | image pack | mask + outline packs | peak memory (image, mask) "
        "| image + mask pack size | index read | one tile read |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="amseg-viewer-slides-") as scratch:
        for side in args.side or [5000, 20000]:
            slide = Path(scratch) / f"slide_{side}.png"
            write_slide(slide, side)
            command = [sys.executable, __file__, "--measure", str(slide)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
