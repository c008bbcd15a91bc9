"""The device pipeline (model/segment/device_pipeline.py) against the CPU path on one device.

Four measurements, printed as one table (and written as JSON with --json):

1. in-process, a generated 4096x4096 slide (16.8 MP): load and warm-up time, the first
   `predict_image` after the warm-up, then the warm median in MP/s, with the device pipeline
   and with the CPU path (numpy tiles + TileStitcher) on the same network; the network alone
   on random batches as the ceiling; a profile of one warm call (where the time goes);
2. whole `amseg predict --device D --backend torch` processes on that slide (PNG), pipeline on
   and off;
3. the worker's calls (worker/segmenting.run_segment without its database and blob store) on
   generated 5000x5000 slides with a registered 60x60 grid: read, predict_image (mask only),
   mask PNG, register_marks, write_registration; slides/minute and the share of marks with the
   right id.

On a GPU (the numbers issue 31 asks for):

    .venv/bin/python benchmarks/gpu_pipeline.py --device cuda --slides /tmp/gpu-slides

Generating the slides takes ~15 s (--slides keeps them for the next run; `--prepare-only`
makes them and stops). Only the model's own packages are needed (not the service's), so it
runs on a bare machine with torch: there, carry the segmentation-models-pytorch wheel
(`pip download --no-deps segmentation-models-pytorch==0.6.0 -d out/whl`) and run

    python3 -m pip install -q --no-index --no-deps --target /tmp/site out/whl/*.whl &&
    PYTHONPATH=/tmp/site python3 benchmarks/gpu_pipeline.py --device cuda --json $OUT/gpu.json

`--smoke` runs every step on tiny slides with a tiny random-weight model on the CPU, the
device pipeline forced on (tests/benchmarks/test_gpu_pipeline.py runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PIPELINE_ENV = "AMSEG_DEVICE_PIPELINE"  # model.segment.device_pipeline.PIPELINE_ENV (no torch)


@dataclass(frozen=True)
class Sizes:
    """What one run measures on."""

    slide: int  # side of the in-process / whole-process slide
    grid_slide: int  # side of the worker's registered slides
    grid: int  # marks per row and column on those
    mark_size: float
    grid_slides: int  # distinct registered slides
    reps: int  # warm repeats of each timing


FULL = Sizes(slide=4096, grid_slide=5000, grid=60, mark_size=25.0, grid_slides=1, reps=5)
SMOKE = Sizes(slide=128, grid_slide=160, grid=4, mark_size=10.0, grid_slides=1, reps=1)
SEED = 31


# --------------------------------------------------------------------------------------------
# Inputs


def prepare_slides(
    folder: Path, sizes: Sizes, parts: set[str]
) -> tuple[Path, list[tuple[Path, Path]]]:
    """The 4096² slide and the registered slides as PNGs in `folder` (made once, then reused,
    those that `parts` need): (slide, [(registered slide, its true ids)])."""
    from model.image.io import write_png
    from model.synth.grid import fit_grid_inside
    from model.synth.slide import generate_slide
    from model.synth.styles import random_spec

    folder.mkdir(parents=True, exist_ok=True)
    slide = folder / f"slide-{sizes.slide}-{SEED}.png"
    if not slide.is_file() and parts & {"in-process", "processes"}:
        spec = random_spec(SEED, height=sizes.slide, width=sizes.slide, bit_depth=16)
        write_png(slide, generate_slide(spec, SEED).image)
    registered = []
    for seed in range(SEED, SEED + sizes.grid_slides if "worker" in parts else SEED):
        stem = f"grid-{sizes.grid_slide}-{sizes.grid}-{seed}"
        image, labels = folder / f"{stem}.png", folder / f"{stem}-ids.png"
        if not (image.is_file() and labels.is_file()):
            spec = random_spec(
                seed,
                height=sizes.grid_slide,
                width=sizes.grid_slide,
                rows=sizes.grid,
                cols=sizes.grid,
                mark_size=sizes.mark_size,
                bit_depth=16,
            )
            generated = generate_slide(fit_grid_inside(spec), seed)
            write_png(image, generated.image)
            write_png(labels, generated.labels)
        registered.append((image, labels))
    return slide, registered


def tiny_model(folder: Path) -> Path:
    """A random-weight U-Net small enough for the smoke run (64-px tiles)."""
    import torch

    from model.segment.card import ModelCard
    from model.segment.network import build_from_card, save_model

    torch.manual_seed(0)
    card = ModelCard(encoder="resnet18", decoder_channels=(16, 8, 8, 8, 8), tile_size=64)
    return save_model(folder / "tiny-model", build_from_card(card), card)


@contextlib.contextmanager
def pipeline_setting(value: str) -> Iterator[None]:
    before = os.environ.get(PIPELINE_ENV)
    os.environ[PIPELINE_ENV] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PIPELINE_ENV, None)
        else:
            os.environ[PIPELINE_ENV] = before


# --------------------------------------------------------------------------------------------
# Timing


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(call: Callable[[], object], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def median_time(call: Callable[[], object], device: str, reps: int) -> float:
    return statistics.median(timed(call, device) for _ in range(reps))


def in_process(
    slide: Path, model_dir: Path | None, runtime: dict, reps: int, stub_network: bool = False
) -> dict:
    """Load, warm-up, first call and warm MP/s of predict_image, pipeline on and off."""
    import torch

    from model.image.io import read_image
    from model.segment.neural import TorchSegmenter
    from model.segment.predict import device_pipeline, options_for, predict_image
    from model.segment.runtime import RuntimeChoice
    from model.segment.single_pass import SegmentOptions

    image = read_image(slide)
    megapixels = image.shape[0] * image.shape[1] / 1e6
    device = runtime["device"]
    start = time.perf_counter()
    segmenter = TorchSegmenter.from_model_dir(model_dir, runtime=RuntimeChoice(**runtime))
    out = {"load_s": time.perf_counter() - start, "megapixels": megapixels}
    out["runtime"] = segmenter.describe() + (" (network stubbed)" if stub_network else "")
    if stub_network:  # both paths call run_tensor (the CPU path through the runner's __call__)
        segmenter._run.run_tensor = lambda x: torch.sigmoid(x[:, 0] * 4.0 - 2.0)
    options = SegmentOptions(tile_size=segmenter.tile_size, scale=1.0)
    with pipeline_setting("on"):
        pipeline = device_pipeline(segmenter)
        out["warm_up_s"] = timed(lambda: pipeline.warm_up(options.tile_size), device)
        run = lambda: predict_image(image, segmenter, options, keep_probabilities=False)  # noqa: E731
        out["first_call_s"] = timed(run, device)
        out["pipeline_s"] = median_time(run, device, reps)
        auto = SegmentOptions(tile_size=segmenter.tile_size)  # the scale from the grid pitch
        found = predict_image(image, segmenter, auto, keep_probabilities=False)
        out["auto_scale"] = found.scale
        out["pipeline_auto_s"] = median_time(
            lambda: predict_image(image, segmenter, auto, keep_probabilities=False), device, reps
        )
        out["profile"] = profile_call(run, device)
        out["profile_auto"] = profile_call(
            lambda: predict_image(image, segmenter, auto, keep_probabilities=False), device
        )
    with pipeline_setting("off"):
        out["cpu_path_s"] = median_time(run, device, max(1, reps // 2))
    out |= agreement(image, segmenter, options)
    out["network_mp_s"] = network_ceiling(pipeline, options_for(segmenter, options), device)
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def agreement(image, segmenter, options) -> dict:
    """How far the device pipeline's result is from the CPU path's on the same network."""
    import numpy as np

    from model.segment.predict import predict_image

    with pipeline_setting("off"):
        reference = predict_image(image, segmenter, options)
    with pipeline_setting("on"):
        got = predict_image(image, segmenter, options)
    difference = np.abs(got.probabilities.astype(np.float32) - reference.probabilities)
    return {
        "max_probability_difference": float(difference.max()),
        "mask_pixels_differing": int(np.count_nonzero(got.mask != reference.mask)),
        "mask_pixels": int(np.count_nonzero(reference.mask)),
    }


def network_ceiling(pipeline, options, device: str) -> float:
    """MP/s of the network alone: full batches of random tiles, already on the device."""
    import torch

    size, batch = options.tile_size, pipeline.batch_size
    tiles = torch.rand(batch, 1, size, size, device=pipeline.device)
    pipeline.runner.run_tensor(tiles)
    batches = 8 if device == "cuda" else 2
    seconds = timed(lambda: [pipeline.runner.run_tensor(tiles) for _ in range(batches)], device)
    return batches * batch * size * size / 1e6 / seconds


def profile_call(run: Callable[[], object], device: str) -> dict[str, float]:
    """Seconds per step of one call, each step waited for (so a little slower than a run)."""
    from model.segment import device_pipeline, predict

    steps: dict[str, float] = {}
    patched = [
        (predict, "find_padding", "padding search (host)"),
        (predict, "estimate_mark_pitch", "grid pitch (host)"),
        (device_pipeline.DevicePipeline, "_normalized", "upload + window + normalize"),
        (device_pipeline.DevicePipeline, "_predict_tiled", "tiles + network + stitch"),
        (device_pipeline, "remove_small_components", "small components (host)"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]

    def wrap(function, label):
        def step(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            result = function(*args, **kwargs)
            synchronize(device)
            steps[label] = steps.get(label, 0.0) + time.perf_counter() - start
            return result

        return step

    for (owner, name, label), (_, _, original) in zip(patched, originals, strict=True):
        setattr(owner, name, wrap(original, label))
    try:
        steps["whole call"] = timed(run, device)
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    steps["rest (resample, threshold, mask download, ...)"] = steps["whole call"] - sum(
        v for k, v in steps.items() if k != "whole call"
    )
    return steps


def whole_processes(
    slide: Path, model_dir: Path | None, runtime: dict, reps: int, settings: tuple[str, ...]
) -> dict:
    """Wall time of `amseg predict` processes (spawn to exit), the pipeline on and off."""
    # `amseg` itself, also where amseg is not installed (a bare machine with torch)
    amseg = [sys.executable, "-c", "from model.cli import main; main()"]
    out = {}
    with tempfile.TemporaryDirectory(prefix="amseg-gpu-bench-") as folder:
        command = [*amseg, "predict", str(slide), "-o", folder, "--scale", "1"]
        command += [f"--{name}={value}" for name, value in runtime.items()]
        if model_dir is not None:
            command += ["--model", str(model_dir)]
        for setting in settings:
            env = os.environ | {PIPELINE_ENV: setting}
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
                times.append(time.perf_counter() - start)
            out[f"process_{setting}_s"] = statistics.median(times)
    return out


def worker_path(registered, model_dir: Path | None, runtime: dict, grid: int, reps: int) -> dict:
    """The calls of worker/segmenting.run_segment, per registered slide (without importing
    the worker, whose database and queue packages a bare GPU machine lacks)."""
    from model.image.io import read_image, write_png
    from model.metrics import mark_id_accuracy
    from model.register.registration import register_marks
    from model.register.writers import write_registration
    from model.segment.neural import TorchSegmenter
    from model.segment.predict import device_pipeline, predict_image
    from model.segment.runtime import RuntimeChoice
    from model.segment.single_pass import SegmentOptions

    segmenter = TorchSegmenter.from_model_dir(model_dir, runtime=RuntimeChoice(**runtime))
    pipeline = device_pipeline(segmenter)
    if pipeline is not None:  # what a worker does at start (worker.segmenting.warm_up_segmenter)
        pipeline.warm_up(segmenter.tile_size)
    times, accuracies = {"read": [], "segment": [], "register + write": []}, []
    with tempfile.TemporaryDirectory(prefix="amseg-gpu-worker-") as folder:
        for _ in range(reps):
            for image_path, ids_path in registered:
                start = time.perf_counter()
                image = read_image(image_path)
                times["read"].append(time.perf_counter() - start)
                options = SegmentOptions(tile_size=segmenter.tile_size)
                start = time.perf_counter()
                found = predict_image(
                    image, segmenter, options, on_progress=lambda n: None, keep_probabilities=False
                )
                times["segment"].append(time.perf_counter() - start)
                start = time.perf_counter()
                write_png(Path(folder) / "mask.png", found.mask)
                try:
                    registration = register_marks(found.mask, grid, grid)
                except Exception as error:  # a random-weight model finds no grid
                    accuracies.append(float("nan"))
                    print(f"  registration failed: {error}")
                else:
                    write_registration(Path(folder) / "registration", registration, image)
                    accuracies.append(mark_id_accuracy(registration.labels, read_image(ids_path)))
                times["register + write"].append(time.perf_counter() - start)
    per_slide = {name: statistics.median(values) for name, values in times.items()}
    total = sum(per_slide.values())
    return {
        "per_slide_s": per_slide,
        "slide_s": total,
        "slides_per_minute": 60.0 / total,
        "id_accuracy": statistics.median(accuracies),
    }


# --------------------------------------------------------------------------------------------
# Report


def print_table(record: dict) -> None:
    rows = [("device", record["device"])]
    if "in_process" in record:
        rows += in_process_rows(record["in_process"])
    for key, seconds in record.get("processes", {}).items():
        setting = key.split("_")[1]
        rows.append((f"`amseg predict` process, pipeline {setting}", f"{seconds:.2f} s"))
    if "worker" in record:
        worker = record["worker"]
        per_slide = ", ".join(f"{k} {v:.2f} s" for k, v in worker["per_slide_s"].items())
        rows += [
            (f"worker path per slide ({record['grid_slide']}², {record['grid']}²)", per_slide),
            ("worker path slides/minute", f"{worker['slides_per_minute']:.1f}"),
            ("marks with the right id (median)", f"{worker['id_accuracy']:.2%}"),
        ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def in_process_rows(process: dict) -> list[tuple[str, str]]:
    mp = process["megapixels"]

    def rate(key: str) -> str:
        return f"{process[key]:.3f} s = {mp / process[key]:.3g} MP/s"

    rows = [
        ("runtime", process["runtime"]),
        ("model load", f"{process['load_s']:.2f} s"),
        ("warm-up (one batch + pipeline kernels)", f"{process['warm_up_s']:.2f} s"),
        ("first predict_image after warm-up", f"{process['first_call_s']:.2f} s"),
        (f"device pipeline, warm, scale 1 ({mp:.1f} MP)", rate("pipeline_s")),
        (f"device pipeline, warm, auto scale ({process['auto_scale']:g})", rate("pipeline_auto_s")),
        ("CPU path on the same network, warm, scale 1", rate("cpu_path_s")),
        ("network alone (full batches on the device)", f"{process['network_mp_s']:.3g} MP/s"),
        (
            "pipeline vs CPU path: mask px differing / marked",
            f"{process['mask_pixels_differing']} / {process['mask_pixels']} "
            f"(max |dp| {process['max_probability_difference']:.2g})",
        ),
    ]
    if "peak_gpu_mb" in process:
        rows.append(("peak GPU memory allocated", f"{process['peak_gpu_mb']:.0f} MiB"))
    for name, key in (("scale 1", "profile"), ("auto scale", "profile_auto")):
        rows += [(f"  {name}: {step}", f"{s:.3f} s") for step, s in process[key].items()]
    return rows


PARTS = ("in-process", "processes", "worker")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and model, CPU")
    parser.add_argument("--slides", type=Path, help="folder of generated slides (kept)")
    parser.add_argument("--prepare-only", action="store_true", help="make the slides, stop")
    parser.add_argument("--model", type=Path, help="model directory (default: shipped)")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    parser.add_argument("--reps", type=int, help="warm repeats (default: 5, smoke 1)")
    parser.add_argument("--slide-size", type=int, help="side of the in-process slide")
    parser.add_argument("--parts", default=",".join(PARTS), help="which of " + ", ".join(PARTS))
    parser.add_argument(
        "--stub-network",
        action="store_true",
        help="in-process only: the network replaced by a sigmoid of its input (what the "
        "steps around the network cost)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - set(PARTS) or (args.stub_network and parts != {"in-process"}):
        parser.error(f"--parts takes {', '.join(PARTS)}; --stub-network only with in-process")
    sizes = SMOKE if args.smoke else FULL
    if args.slide_size:
        sizes = dataclasses.replace(sizes, slide=args.slide_size)
    reps = args.reps or sizes.reps
    device = "cpu" if args.smoke else args.device
    precision = "fp32" if args.smoke else args.precision  # emulated bf16 is slow on most CPUs
    scratch = Path(tempfile.mkdtemp(prefix="amseg-gpu-pipeline-"))
    os.environ.setdefault("AMSEG_CACHE_DIR", str(scratch / "cache"))
    slide, registered = prepare_slides(args.slides or scratch / "slides", sizes, parts)
    if args.prepare_only:
        print(f"slides in {slide.parent}")
        return {}
    model_dir = args.model or (tiny_model(scratch) if args.smoke else None)
    if device == "cpu":
        os.environ[PIPELINE_ENV] = "on"  # the device pipeline on the CPU device, for reference
    record: dict = {"device": device, "grid_slide": sizes.grid_slide, "grid": sizes.grid}
    runtime = {"device": device, "backend": "torch", "precision": precision}
    if "in-process" in parts:
        record["in_process"] = in_process(slide, model_dir, runtime, reps, args.stub_network)
    if "processes" in parts:
        settings = ("on",) if args.smoke else ("on", "off")
        record["processes"] = whole_processes(slide, model_dir, runtime, reps, settings)
    if "worker" in parts:
        record["worker"] = worker_path(registered, model_dir, runtime, sizes.grid, reps)
    print_table(record)
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
