"""Whole-process `amseg predict` on a generated ~4000x4000 slide vs the old configuration.

Old: ResNeXt-50 U-Net, 3-channel ImageNet-normalized input, square nxn canvas of 512-px tiles
(reflect-101 centred padding, no overlap), fp32 eager, one tile per forward (`legacy_predict`).
New: `amseg predict` with the default architecture and the chosen options. Each run is its own
process (time from spawn to exit, the peak RSS of that process); runs alternate, medians are shown.
The new path runs the shipped weights (a copy of model/weights/default): since session 17 the
number of passes depends on the network's output. The old configuration has random weights.

Every CPU precision this machine offers runs side by side (fp32, bf16 where native, int8 where
OpenVINO and NNCF are installed), at --scale 1 so that they do the same work. `nobf16` is
`auto` on the same CPU told it has no native bf16: what a CPU with AVX-512 VNNI but no bf16
runs (int8 once the model card records a passed int8 check, else fp32). --simulate-isa AVX2
caps oneDNN in OpenVINO and PyTorch alike (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY) for every
run, the old one included: an AVX2-only laptop CPU, without bf16.

    .venv/bin/python benchmarks/predict_speed.py --reps 3
    .venv/bin/python benchmarks/predict_speed.py --reps 3 --simulate-isa AVX2
    .venv/bin/python benchmarks/predict_speed.py --reps 3 --simulate-isa AVX2 --no-old \
        --variants fp32,int8 --size 4097      # int8 against fp32 without VNNI
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NO_BF16_ENV = "AMSEG_BENCH_NO_BF16"  # read by the child: auto as on a CPU without bf16
# --simulate-isa: oneDNN's cap (OpenVINO's and PyTorch's) and PyTorch's own kernels' level.
ISA_ENV = {
    "AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "AVX512_CORE_VNNI": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "ATEN_CPU_CAPABILITY": "avx512"},
}


# --------------------------------------------------------------------------------------------
# The old path, faithfully (seed spec sections 3-5), minus its S3 round trip and tile files


def legacy_predict(image_path: Path, out_path: Path, model_dir: Path) -> dict:
    """Old am-segmentation inference: returns network seconds and megapixels it processed."""
    import cv2
    import numpy as np
    import torch

    from model.image.io import read_image, write_png
    from model.segment.network import load_model

    network, card = load_model(model_dir)
    image = read_image(image_path)
    # OpenCV's default read gave 8-bit, 3-channel data: 16-bit lost its low byte.
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    # 1st/99th percentile of all channels jointly, clip, stretch per channel, truncate to uint8.
    low, high = np.percentile(image, (1, 99))
    clipped = np.clip(image, low, high).astype(np.float64)
    minimum, maximum = clipped.min(axis=(0, 1)), clipped.max(axis=(0, 1))
    norm = ((clipped - minimum) / (maximum - minimum) * 255).astype(np.uint8)
    del clipped

    tile = 512
    height, width = norm.shape[:2]
    n = int(np.ceil(max(height, width) / tile))
    pad_y, pad_x = n * tile - height, n * tile - width
    canvas = cv2.copyMakeBorder(
        norm, pad_y // 2, pad_y - pad_y // 2, pad_x // 2, pad_x - pad_x // 2, cv2.BORDER_REFLECT_101
    )
    mean = np.array(card.input_mean, np.float32) * 255
    std = np.array(card.input_std, np.float32) * 255
    mask_canvas = np.zeros(canvas.shape[:2], np.uint8)
    network_seconds = 0.0
    with torch.no_grad():
        for row in range(n):
            for col in range(n):
                rows, cols = (
                    slice(row * tile, (row + 1) * tile),
                    slice(col * tile, (col + 1) * tile),
                )
                x = (canvas[rows, cols].astype(np.float32) - mean) / std  # albumentations Normalize
                x = torch.from_numpy(x.transpose(2, 0, 1))[None]
                start = time.perf_counter()
                probabilities = torch.sigmoid(network(x))[0, 0].numpy()
                network_seconds += time.perf_counter() - start
                mask_canvas[rows, cols] = (probabilities > 0.5).astype(np.uint8) * 255
    top, left = pad_y // 2, pad_x // 2
    write_png(out_path, mask_canvas[top : top + height, left : left + width])
    return {"network_s": network_seconds, "network_mp": n * n * tile * tile / 1e6, "tiles": n * n}


def new_predict(argv: list[str]) -> dict:
    """`amseg predict ARGV`, timing the network calls from inside the process."""
    import model.cli.predict  # noqa: F401  registers the command
    from model.cli.app import app
    from model.segment import runtime
    from model.segment.neural import TorchSegmenter

    if os.environ.get(NO_BF16_ENV):
        runtime.cpu_supports_bf16 = lambda: False  # as on a CPU without native bf16

    stats = {"network_s": 0.0, "network_mp": 0.0, "tiles": 0}
    original = TorchSegmenter.predict_batch

    def timed(self, tiles):
        start = time.perf_counter()
        out = original(self, tiles)
        stats["network_s"] += time.perf_counter() - start
        stats["network_mp"] += tiles.size / 1e6
        stats["tiles"] += len(tiles)
        return out

    TorchSegmenter.predict_batch = timed
    try:
        app(["predict", *argv], standalone_mode=False)
    finally:
        TorchSegmenter.predict_batch = original
    return stats


# --------------------------------------------------------------------------------------------
# Driver


def run_child(mode: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run one whole process; wall time from spawn to exit and its own peak RSS."""
    command = [sys.executable, __file__, "--child", mode, "--", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=out, stderr=err, text=True, env=os.environ | (env or {})
        )
        _, status, _ = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"{mode} failed ({process.returncode}):\n{stderr[-3000:]}")
    record = json.loads(stdout.strip().splitlines()[-1])
    record["wall_s"] = wall
    return record


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: reset at exec, unlike ru_maxrss, which a child
    inherits from the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_inputs(
    workdir: Path, size: int, seed: int, mark_size: float | None
) -> tuple[Path, Path, Path, str]:
    import numpy as np
    import torch

    from model.image.io import write_png
    from model.segment.card import CARD_FILE, DEFAULT_MODEL_DIR, ModelCard
    from model.segment.network import build_from_card, legacy_card, save_model

    try:
        from model.synth.slide import generate_slide
        from model.synth.styles import random_spec

        spec = random_spec(seed, height=size, width=size, mark_size=mark_size)
        image = generate_slide(spec, seed).image
        what = (
            f"synthetic {image.dtype} slide, marks {spec.mark_size:.0f} px, pitch "
            f"{spec.pitch_y:.0f}x{spec.pitch_x:.0f} px ({spec.shape})"
        )
    except ImportError:
        rng = np.random.default_rng(seed)
        image = rng.integers(0, 256, (size, size), dtype=np.uint8)
        what = "random texture (model.synth missing)"
    slide = write_png(workdir / "slide.png", image)
    torch.manual_seed(0)
    # The shipped model itself: how many passes predict_image runs depends on its output (a
    # second look at 2x for uncertain small-mark outlines), and random weights leave every
    # outline uncertain. Random weights of its architecture only when no model ships.
    shipped = DEFAULT_MODEL_DIR / CARD_FILE
    if shipped.is_file():
        new_dir = Path(shutil.copytree(DEFAULT_MODEL_DIR, workdir / "default-model"))
    else:
        new_dir = save_model(workdir / "default-model", build_from_card(ModelCard()), ModelCard())
    old_dir = save_model(workdir / "legacy-model", build_from_card(legacy_card()), legacy_card())
    return slide, new_dir, old_dir, what


def summarize(name: str, runs: list[dict], image_mp: float) -> dict:
    wall = statistics.median(r["wall_s"] for r in runs)
    network_s = statistics.median(r["network_s"] for r in runs)
    network_mp = runs[0]["network_mp"]
    return {
        "name": name,
        "wall_s": wall,
        "mp_per_s": image_mp / wall,
        "network_s": network_s,
        "network_mp": network_mp,
        "network_mp_per_s": network_mp / network_s,
        "tiles": runs[0]["tiles"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


VARIANTS = {  # name: (amseg predict options, runs the child as on a CPU without bf16)
    "auto": ([], False),
    "nobf16": ([], True),
    "scale1": (["--scale", "1"], False),
    "fp32": (["--scale", "1", "--precision", "fp32"], False),
    "bf16": (["--scale", "1", "--precision", "bf16"], False),
    "int8": (["--scale", "1", "--precision", "int8"], False),
    "torch": (["--scale", "1", "--backend", "torch"], False),
    "accurate": (["--accurate"], False),
}


def available_variants(names: list[str], isa: str | None) -> list[str]:
    """The asked-for variants this machine can run: bf16 needs native bf16 (emulated bf16 is
    slower than fp32, and crashes OpenVINO under a simulated AVX2 CPU), int8 OpenVINO+NNCF."""
    from model.segment.runtime import cpu_supports_bf16, nncf_available, openvino_available

    missing = {
        "bf16": isa is not None or not cpu_supports_bf16(),
        "int8": not (openvino_available() and nncf_available()),
    }
    skipped = [name for name in names if missing.get(name)]
    if skipped:
        print(f"not available on this CPU or install: {', '.join(skipped)}")
    return [name for name in names if not missing.get(name)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mark-size", type=float, help="mark diameter (default: drawn)")
    parser.add_argument(
        "--variants",
        default="auto,nobf16,fp32,bf16,int8,torch",
        help="new-path variants: auto (all defaults), nobf16 (auto on a CPU without bf16), "
        "scale1 (--scale 1), fp32, bf16, int8 (--precision P --scale 1), torch (--backend "
        "torch --scale 1), accurate (--accurate)",
    )
    parser.add_argument(
        "--simulate-isa", choices=sorted(ISA_ENV), help="cap every run at this instruction set"
    )
    parser.add_argument(
        "--no-old",
        action="store_true",
        help="leave the old configuration out: the ratios are then to the first variant",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="amseg-predict-speed-"))
    os.environ["AMSEG_CACHE_DIR"] = str(workdir / "cache")
    slide, new_dir, old_dir, what = make_inputs(workdir, args.size, args.seed, args.mark_size)
    from model.image.io import read_image
    from model.segment.pitch import auto_scale, estimate_mark_pitch
    from model.segment.runtime import cpu_description

    image = read_image(slide)
    pitch = estimate_mark_pitch(image)
    image_mp = image.shape[0] * image.shape[1] / 1e6
    print(cpu_description() + (f", simulated {args.simulate_isa}" if args.simulate_isa else ""))
    print(
        f"{image.shape[1]}x{image.shape[0]} {what}; estimated pitch {pitch}, auto scale "
        f"{auto_scale(pitch):.3f}; median of {args.reps}"
    )
    isa_env = ISA_ENV[args.simulate_isa] | {NO_BF16_ENV: "1"} if args.simulate_isa else {}
    base = [str(slide), "-o", str(workdir / "out"), "--model", str(new_dir)]
    chosen = {}
    for name in available_variants(args.variants.split(","), args.simulate_isa):
        options, no_bf16 = VARIANTS[name]
        chosen[name] = (base + options, isa_env | ({NO_BF16_ENV: "1"} if no_bf16 else {}))
    cold = run_child("new", [*base, "--scale", "1", "--precision", "fp32"], isa_env)
    # The copy carries the IR shipped with the model: nothing is exported or quantized
    # (benchmarks/first_run.py compares first and warm runs, and with the IR left out).
    print(f"first fp32 run, empty cache (shipped IR): {cold['wall_s']:.1f} s")
    if "int8" in chosen:
        cold = run_child("new", chosen["int8"][0], isa_env)
        print(f"first int8 run, empty cache (shipped IR): {cold['wall_s']:.1f} s")

    runs: dict[str, list[dict]] = ({} if args.no_old else {"legacy": []}) | {
        name: [] for name in chosen
    }
    legacy_argv = [str(slide), str(workdir / "legacy_mask.png"), str(old_dir)]
    for _ in range(args.reps):
        if not args.no_old:
            runs["legacy"].append(run_child("legacy", legacy_argv, isa_env))
        for name, (argv, env) in chosen.items():
            runs[name].append(run_child("new", argv, env))
    print_table([summarize(name, r, image_mp) for name, r in runs.items()])


def print_table(rows: list[dict]) -> None:
    """One line per run kind; "x old" is the ratio to the first row: the old configuration,
    or with --no-old the first variant."""
    legacy = rows[0]
    print(
        f"\n{'run':10s} {'wall s':>7s} {'MP/s':>6s} {'x old':>6s} {'tiles':>6s} "
        f"{'net MP':>7s} {'net s':>6s} {'net MP/s':>9s} {'x old':>6s} {'peak RSS MB':>12s}"
    )
    for row in rows:
        print(
            f"{row['name']:10s} {row['wall_s']:7.1f} {row['mp_per_s']:6.2f} "
            f"{row['mp_per_s'] / legacy['mp_per_s']:6.1f} {row['tiles']:6d} "
            f"{row['network_mp']:7.1f} {row['network_s']:6.1f} {row['network_mp_per_s']:9.2f} "
            f"{row['network_mp_per_s'] / legacy['network_mp_per_s']:6.1f} "
            f"{row['peak_rss_mb']:12.0f}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        mode, child_args = sys.argv[2], sys.argv[4:]
        if mode == "legacy":
            result = legacy_predict(Path(child_args[0]), Path(child_args[1]), Path(child_args[2]))
        else:
            result = new_predict(child_args)
        print(json.dumps(result | {"peak_rss_mb": peak_rss_mb()}))
    else:
        main()
