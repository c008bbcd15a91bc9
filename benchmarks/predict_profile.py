"""Where a whole `amseg predict` process spends its time: py-spy samples it, stages are named
from the sampled stacks (issue 38 §2).

py-spy is not a dependency: `.venv/bin/pip install py-spy`. The slide is the one
benchmarks/predict_speed.py and first_run.py generate (4097² by default); the process is
`amseg predict` on the shipped model, warm cache (one run first fills it). Stages, by the
first frame of a sampled stack that names one (`--idle` samples included, so time a thread
waits on OpenVINO's workers counts as network):

    startup  imports and the command line, before the model loads
    load     the model: card, fingerprint, OpenVINO compile (or compiled-cache load)
    decode   reading the image file              pitch    the grid pitch estimate (auto scale)
    padding  finding uniform padding             window   the intensity window (percentiles)
    tiles    cutting and normalizing tiles       network  OpenVINO's inference
    stitch   blending tiles into the map         threshold  threshold + small components
    look     the second-look decision            write    the mask PNG

    .venv/bin/python benchmarks/predict_profile.py [--precision int8] [--simulate-isa AVX2]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import predict_speed  # noqa: E402

# (stage, substrings of a frame), looked for from the stack's root to its leaf: the first
# frame that matches names the stage, so `network` inside `predict_tiled` is network.
STAGES = [
    ("write", ("write_png",)),
    ("decode", ("read_image", "read_gray")),
    ("load", ("from_model_dir", "get_segmenter")),
    ("pitch", ("estimate_mark_pitch",)),
    ("padding", ("find_padding", "fill_padding")),
    ("window", ("intensity_window",)),
    ("network", ("predict_batch", "OpenVinoRunner.__call__", "timed (")),
    ("stitch", ("TileStitcher", "stitch_tiles", "finish (")),
    ("tiles", ("iter_tiles", "extract_tile", "apply (")),
    ("threshold", ("remove_small_components",)),
    ("look", ("outline_uncertainty", "missed_grid_retry_scale", "uncertain_outline")),
]


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in frames:
        for stage, needles in STAGES:
            if any(needle in frame for needle in needles):
                return stage
    if any("_find_and_load" in frame for frame in frames):  # imports outside the stages
        return "startup"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4097)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--scale", default=None, help="--scale for amseg predict")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--simulate-isa", choices=sorted(predict_speed.ISA_ENV))
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")

    from model.segment.runtime import cpu_description

    workdir = Path(tempfile.mkdtemp(prefix="amseg-profile-"))
    slide, _, _, what = predict_speed.make_inputs(workdir, args.size, args.seed, None)
    env = os.environ | {"AMSEG_CACHE_DIR": str(workdir / "cache")}
    if args.simulate_isa:
        env |= predict_speed.ISA_ENV[args.simulate_isa] | {predict_speed.NO_BF16_ENV: "1"}
    argv = [str(slide), "-o", str(workdir / "out"), "--precision", args.precision]
    argv += ["--scale", args.scale] if args.scale else []
    child = [sys.executable, predict_speed.__file__, "--child", "new", "--", *argv]
    print(cpu_description() + (f", simulated {args.simulate_isa}" if args.simulate_isa else ""))
    print(f"{args.size}² {what}; amseg predict --precision {args.precision}")
    subprocess.run(child, env=env, check=True, capture_output=True)  # fills the cache

    raw = workdir / "stacks.txt"
    start = time.perf_counter()
    command = [py_spy, "record", "--rate", str(args.rate), "--format", "raw", "--idle", "--threads"]
    command += ["--output", str(raw), "--", *child]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    print(next((line for line in result.stdout.splitlines() if line.startswith("model:")), ""))

    # Stacks start with "thread (TID): NAME" (NAME missing in the first samples); only the
    # main thread's count (OpenVINO's threads are native, the progress bar's sleeps).
    lines = [line.rpartition(" ") for line in raw.read_text().splitlines()]
    main_root = next(s.split(";")[0] for s, _, _ in lines if "MainThread" in s.split(";")[0])
    main_tid = main_root.split(")")[0]
    per_stage: collections.Counter[str] = collections.Counter()
    for stack, _, count in lines:
        if stack.split(";")[0].split(")")[0] == main_tid:
            per_stage[stage_of(stack)] += int(count)
    total = sum(per_stage.values())
    print(f"wall {wall:.1f} s under py-spy ({total} main-thread samples at {args.rate}/s)")
    for stage, count in per_stage.most_common():
        print(f"  {stage:10s} {count / args.rate:6.2f} s  {count / total:6.1%}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
