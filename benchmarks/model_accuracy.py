"""Dice and object F1 of a model on synthetic validation slides with unseen seeds, per runtime,
and the agreement of reduced precision with fp32 on the real crops.

    .venv/bin/python benchmarks/model_accuracy.py [--model DIR] [--slides 12] [--size 1024]
        [--scale S]   (default: the auto scale of amseg predict; e.g. 1.5 to enlarge first)
        [--accurate]  (the auto scale of amseg predict --accurate: small marks enlarged)
        [--per-slide] (a line per slide: mark size, scale the network ran at, mask share, Dice)
        [--error-kinds] (where the wrong pixels are: model.metrics.error_kinds, per runtime)

Slide seeds start at 900000, far from the seeds training data are made with (amseg synth
--seed 1000 for the shipped model). Slides have marks of 8-60 px, 8- and 16-bit, every
background style of the generator.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from model.image.io import read_image
from model.metrics import (
    ERROR_KINDS,
    dice_counts,
    dice_from_counts,
    error_kinds,
    f1_from_counts,
    object_counts,
)
from model.segment.agreement import reduced_precision_agreement
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.runtime import RuntimeChoice
from model.segment.single_pass import SegmentOptions
from model.synth.slide import generate_slide
from model.synth.styles import random_spec

REAL_CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
RUNTIMES = {
    "auto": RuntimeChoice(),  # OpenVINO: a checked int8, else native bf16, else fp32
    "OpenVINO fp32": RuntimeChoice(backend="openvino", precision="fp32"),
    "torch fp32": RuntimeChoice(backend="torch", precision="fp32"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: shipped)")
    parser.add_argument("--slides", type=int, default=12)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--first-seed", type=int, default=900_000)
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated names")
    parser.add_argument("--scale", type=float, default=None, help="default: auto")
    parser.add_argument("--accurate", action="store_true", help="as amseg predict --accurate")
    parser.add_argument("--per-slide", action="store_true", help="print every slide's result")
    parser.add_argument("--style", default=None, help="slide style of amseg synth --style")
    parser.add_argument(
        "--error-kinds", action="store_true", help="split the wrong pixels by where they are"
    )
    args = parser.parse_args()

    slides = []
    for index in range(args.slides):
        seed = args.first_seed + index
        spec = random_spec(seed, height=args.size, width=args.size, style=args.style)
        slides.append((seed, generate_slide(spec, seed)))
    sizes = [s.spec.mark_size for _, s in slides]
    print(
        f"{len(slides)} slides {args.size}², mark size {min(sizes):.0f}-{max(sizes):.0f} px, "
        f"scale {args.scale or ('auto, accurate' if args.accurate else 'auto')}"
    )

    for name in args.runtimes.split(","):
        segmenter = TorchSegmenter.from_model_dir(args.model, runtime=RUNTIMES[name])
        options = SegmentOptions(tile_size=segmenter.tile_size, accurate=args.accurate)
        pixels, objects, per_slide, seconds = np.zeros(3), np.zeros(3), [], 0.0
        kinds = np.zeros(len(ERROR_KINDS))
        for seed, slide in slides:
            start = time.perf_counter()
            result = predict_image(
                slide.image, segmenter, dataclasses.replace(options, scale=args.scale)
            )
            seconds += time.perf_counter() - start
            counts = dice_counts(result.mask, slide.mask)
            pixels += counts
            objects += object_counts(result.mask, slide.mask)
            if args.error_kinds:
                kinds += error_kinds(result.mask, slide.mask)
            per_slide.append(dice_from_counts(counts))
            if args.per_slide:
                print(
                    f"  seed {seed}: marks {slide.spec.mark_size:4.1f} px, scale "
                    f"{result.scale:.2f}, mask share {result.mask.mean():.4f} (truth "
                    f"{slide.mask.mean():.4f}), Dice {per_slide[-1]:.3f}"
                )
        print(
            f"{name:<22} Dice {dice_from_counts(pixels):.4f} (per slide min "
            f"{min(per_slide):.3f}, median {np.median(per_slide):.3f}), object F1 "
            f"{f1_from_counts(objects):.4f}, {seconds:.1f} s [{segmenter.describe()}]"
        )
        if args.error_kinds:
            wrong = max(kinds.sum(), 1.0)
            shares = ", ".join(
                f"{k} {n / wrong:.1%}" for k, n in zip(ERROR_KINDS, kinds, strict=True)
            )
            print(
                f"  wrong pixels {int(kinds.sum())} (fp + fn; within 2 px of an outline = "
                f"outline): {shares}"
            )

    crops = sorted(REAL_CROPS.glob("*.png"))
    if crops:
        images = [(p.name, read_image(p)) for p in crops]
        for precision, backend in (("bf16", "auto"), ("int8", "openvino")):
            agreement = reduced_precision_agreement(
                args.model, images, precision=precision, backend=backend
            )
            per_image = ", ".join(f"{k} {v:.4f}" for k, v in agreement["per_image"].items())
            print(
                f"{precision} vs fp32 mask Dice on real crops: {per_image} (ok: {agreement['ok']})"
            )


if __name__ == "__main__":
    main()
