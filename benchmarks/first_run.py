"""First run vs warm run of `amseg predict` (issue 38 §1), and both against the old configuration.

Whole processes on one generated slide (4097² by default, as in the issue), each run its own
process (benchmarks/predict_speed.py runs them, and the old configuration: ResNeXt-50 U-Net,
3-channel input, 512 px tiles on a square canvas, fp32 eager PyTorch). For each precision path:

- first: the shipped model with an empty AMSEG_CACHE_DIR, as after a fresh install (the IR
  shipped in model/weights/default/openvino, nothing exported or quantized);
- warm: the same cache afterwards (median of --reps);
- before: the first run as it was before the IR shipped: a copy of the model without it, an
  empty cache, so the network is exported with PyTorch (and quantized with NNCF for int8).

Paths: `auto` (what this CPU picks), `nobf16` (auto as on a CPU without native bf16: int8,
what AVX2 and AVX-512 VNNI CPUs run), with --simulate-isa AVX2 every run, the old one's
included, capped at AVX2 (oneDNN's cap on this CPU, not a real AVX2 CPU). Goal: first/warm at
most 1.5. The OS page cache is not dropped: a first run from a cold disk also reads ~25 MB of IR
and the Python packages.

    .venv/bin/python benchmarks/first_run.py --reps 3
    .venv/bin/python benchmarks/first_run.py --reps 2 --simulate-isa AVX2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import predict_speed  # noqa: E402  (benchmarks/ on the path: the whole-process runners)

PATHS = {"auto": {}, "nobf16": {predict_speed.NO_BF16_ENV: "1"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4097)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--paths", default="auto,nobf16", help="auto, nobf16")
    parser.add_argument("--no-before", action="store_true", help="skip the runs without the IR")
    parser.add_argument("--simulate-isa", choices=sorted(predict_speed.ISA_ENV))
    args = parser.parse_args()

    from model.segment.runtime import cpu_description

    workdir = Path(tempfile.mkdtemp(prefix="amseg-first-run-"))
    slide, copy_dir, old_dir, what = predict_speed.make_inputs(workdir, args.size, args.seed, None)
    shutil.rmtree(copy_dir / "openvino", ignore_errors=True)  # the model as it shipped before
    isa_env = (
        predict_speed.ISA_ENV[args.simulate_isa] | {predict_speed.NO_BF16_ENV: "1"}
        if args.simulate_isa
        else {}
    )
    print(cpu_description() + (f", simulated {args.simulate_isa}" if args.simulate_isa else ""))
    print(f"{args.size}x{args.size} {what}; warm: median of {args.reps}")
    image_mp = args.size * args.size / 1e6

    def run(name: str, model: Path | None, cache: Path, env: dict) -> dict:
        argv = [str(slide), "-o", str(workdir / "out")]
        if model is not None:
            argv += ["--model", str(model)]
        record = predict_speed.run_child(
            "new", argv, isa_env | env | {"AMSEG_CACHE_DIR": str(cache)}
        )
        print(f"  {name}: {record['wall_s']:.1f} s", flush=True)
        return record

    # First runs first (each path its own empty cache), then warm runs alternating with the
    # old configuration's, so that load from other processes hits them alike; runs without
    # the shipped IR last.
    paths = args.paths.split(",")
    caches = {path: workdir / f"cache-{path}" for path in paths}
    results = {path: {"warm": [], "before": None} for path in paths}
    for path in paths:
        print(f"{path}:")
        results[path]["first"] = run("first run, shipped IR, empty cache", None, caches[path],
                                     PATHS[path])  # fmt: skip
    old_argv = [str(slide), str(workdir / "old.png"), str(old_dir)]
    old = []
    for rep in range(args.reps):
        old.append(predict_speed.run_child("legacy", old_argv, isa_env))
        print(f"  old configuration: {old[-1]['wall_s']:.1f} s", flush=True)
        for path in paths:
            warm = run(f"{path} warm run {rep + 1}", None, caches[path], PATHS[path])
            results[path]["warm"].append(warm)
    if not args.no_before:
        for path in paths:
            cold = workdir / f"cold-{path}"
            results[path]["before"] = run(f"{path} first run without the shipped IR", copy_dir,
                                          cold, PATHS[path])  # fmt: skip
    old_s = statistics.median(r["wall_s"] for r in old)
    print(f"old configuration: {old_s:.1f} s (median of {len(old)})\n")

    header = f"{'path':8s} {'first s':>8s} {'warm s':>7s} {'first/warm':>11s} {'x old warm':>11s} "
    header += f"{'x old first':>12s} {'before s':>9s} {'x old before':>13s}"
    print(header)
    rows = []
    for path, result in results.items():
        first_s = result["first"]["wall_s"]
        warm_s = statistics.median(r["wall_s"] for r in result["warm"])
        before_s = result["before"]["wall_s"] if result["before"] else float("nan")
        row = {
            "path": path,
            "first_s": first_s,
            "warm_s": warm_s,
            "first_over_warm": first_s / warm_s,
            "x_old_warm": old_s / warm_s,
            "x_old_first": old_s / first_s,
            "before_first_s": before_s,
            "x_old_before_first": old_s / before_s,
            "old_s": old_s,
            "image_mp": image_mp,
        }
        rows.append(row)
        print(
            f"{path:8s} {first_s:8.1f} {warm_s:7.1f} {row['first_over_warm']:11.2f} "
            f"{row['x_old_warm']:11.1f} {row['x_old_first']:12.1f} {before_s:9.1f} "
            f"{row['x_old_before_first']:13.1f}"
        )
    print(json.dumps(rows))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
