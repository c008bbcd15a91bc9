"""How `amseg segment` scales with the slide: wall time and peak memory (max RSS) of the whole
process on 16-bit TIFF slides of growing size with the same pitch, so the work grows with the
area. Slides are generated once per size and cached in --cache.

    .venv/bin/python benchmarks/segment_scale.py [--sizes 2000,5000,10000,20000] [--pitch 80]
        [--cache /tmp/amseg-scale] [--repeat 1] [-- extra amseg segment options]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from model.image.io import read_image
from model.metrics import mark_id_accuracy
from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from model.synth.writers import write_dataset_layout


def slide_dataset(cache: Path, size: int, pitch: float, seed: int) -> tuple[Path, int]:
    """A dataset folder with one 16-bit slide of `size`² and a grid of pitch ~`pitch` px."""
    grid = max(2, int(size * 0.84 / pitch))
    root = cache / f"slide-{size}-g{grid}-s{seed}"
    truth = root / "truth_ids.npy"
    if not truth.is_file():
        shutil.rmtree(root, ignore_errors=True)
        spec = random_spec(
            seed, height=size, width=size, rows=grid, cols=grid, mark_size=pitch * 0.35,
            bit_depth=16, low_contrast_fraction=0.0, background="smooth",
        )  # fmt: skip
        slide = generate_slide(fit_grid_inside(spec), seed)
        write_dataset_layout(root, slide, group="slide")
        np.save(truth, slide.labels)
    return root, grid


def run_segment(root: Path, grid: int, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one `amseg segment` process."""
    amseg = Path(sys.executable).with_name("amseg")
    command = [str(amseg), "segment", str(root), "--rows", str(grid), "--cols", str(grid), *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def id_accuracy(root: Path) -> float:
    labels = read_image(root / "am_coords" / "slide" / "am_coordinates.png")
    return mark_id_accuracy(labels, np.load(root / "truth_ids.npy"))


def in_child(args: argparse.Namespace, size: int, task: str) -> str:
    """Run `task` for one size in a child process and return what it printed.

    Linux hands a child the peak RSS of its parent at fork, so the process that starts
    `amseg segment` must stay small: generating a 20000² slide takes ~10 GiB, scoring it ~3.
    """
    command = [sys.executable, __file__, f"--{task}", "--sizes", str(size)]
    command += ["--pitch", str(args.pitch), "--seed", str(args.seed), "--cache", str(args.cache)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,5000,10000,20000")
    parser.add_argument("--pitch", type=float, default=80.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/amseg-scale"))
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--score", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="extra amseg segment options (after --)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.generate or args.score:
        root, _ = slide_dataset(args.cache, sizes[0], args.pitch, args.seed)
        print(f"{id_accuracy(root):.4f}" if args.score else root)
        return

    datasets = {}
    for size in sizes:
        in_child(args, size, "generate")
        datasets[size] = slide_dataset(args.cache, size, args.pitch, args.seed)  # cached now
    run_segment(*datasets[sizes[0]], args.extra)  # warm-up: the OpenVINO export is cached once
    print(f"# {' '.join(sys.argv)}")
    print("| slide | grid | MP | time s (median) | s per MP | peak RSS GiB | ids right |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        root, grid = datasets[size]
        runs = [run_segment(root, grid, args.extra) for _ in range(args.repeat)]
        seconds = statistics.median(r[0] for r in runs)
        peak = max(r[1] for r in runs)
        accuracy = float(in_child(args, size, "score"))
        megapixels = size * size / 1e6
        print(
            f"| {size}² | {grid}x{grid} | {megapixels:.0f} | {seconds:.1f} | "
            f"{seconds / megapixels:.3f} | {peak:.2f} | {accuracy:.2%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
