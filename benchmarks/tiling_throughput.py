"""Tile → stitch throughput (MP/s) and peak RSS on a large 8-bit image.

The "network" is the identity, so this measures only normalization, tiling, blending and
stitching. Each repetition runs in a fresh process so that its peak RSS is its own.

    .venv/bin/python benchmarks/tiling_throughput.py --size 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def run_once(size: int, tile: int, overlap: int) -> dict:
    import numpy as np

    from model.image.normalize import intensity_window
    from model.segment.tiles import plan_tiles, predict_tiled

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size), dtype=np.uint8)
    start = time.perf_counter()
    window = intensity_window(image)
    grid = plan_tiles(size, size, tile, overlap)
    out = predict_tiled(image, lambda batch: batch, grid, transform=window.apply, batch_size=8)
    seconds = time.perf_counter() - start
    expected = window.apply(image[:512, :512])
    assert np.allclose(out[:512, :512], expected, atol=1e-5), "round trip broken"
    return {
        "seconds": seconds,
        "tiles": len(grid),
        "mp_per_s": size * size / 1e6 / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_at_start_mb": rss_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000, help="image edge in px")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_once(args.size, args.tile, args.overlap)))
        return
    runs = []
    for _ in range(args.repeat):
        command = [sys.executable, __file__, "--child", f"--size={args.size}"]
        command += [f"--tile={args.tile}", f"--overlap={args.overlap}"]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(output))
        print(f"  run: {runs[-1]}")
    print(
        f"tile→stitch {args.size}x{args.size} uint8, tile {args.tile}, overlap {args.overlap}, "
        f"{runs[0]['tiles']} tiles: median {statistics.median(r['seconds'] for r in runs):.2f} s, "
        f"{statistics.median(r['mp_per_s'] for r in runs):.1f} MP/s, "
        f"peak RSS {max(r['peak_rss_mb'] for r in runs):.0f} MB "
        f"(interpreter + imports {runs[0]['rss_at_start_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()
