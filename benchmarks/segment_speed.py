"""End-to-end `amseg segment` on a 5000x5000 dataset with a 60x60 grid: wall time of the whole
process (normalize → tiles → segment → stitch → register, all outputs written) and id accuracy.

    .venv/bin/python benchmarks/segment_speed.py [--size 5000] [--grid 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model.image.io import read_image
from model.metrics import mark_id_accuracy
from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from model.synth.writers import write_dataset_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--grid", type=int, default=60)
    parser.add_argument("--mark-size", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="extra amseg segment options (after --)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="amseg-segment-speed-"))
    spec = random_spec(
        args.seed,
        height=args.size,
        width=args.size,
        rows=args.grid,
        cols=args.grid,
        mark_size=args.mark_size,
        bit_depth=16,
    )
    slide = generate_slide(fit_grid_inside(spec), args.seed)
    write_dataset_layout(root, slide, group="slide")
    amseg = Path(sys.executable).with_name("amseg")
    command = [str(amseg), "segment", str(root), "--rows", str(args.grid), "--cols", str(args.grid)]
    command += args.extra
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
        print(f"  run: {times[-1]:.1f} s")
    labels = read_image(root / "am_coords" / "slide" / "am_coordinates.png")
    accuracy = mark_id_accuracy(labels, slide.labels)
    print(
        f"amseg segment {args.size}x{args.size}, {args.grid}x{args.grid} grid, marks "
        f"~{slide.spec.mark_size:.0f} px: median {statistics.median(times):.1f} s "
        f"(min {min(times):.1f}), marks with the right id {accuracy:.2%} ({root})"
    )


if __name__ == "__main__":
    main()
