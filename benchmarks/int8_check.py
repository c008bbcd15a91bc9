"""The int8 check of a model: int8 against fp32 on the real crops and on generated slides,
optionally recorded in its card, where precision="auto" looks before it picks int8.

    .venv/bin/python benchmarks/int8_check.py [--model DIR] [--slides 48]
        [--first-seeds 600000,700000,800000,900000] [--write]

Passes when int8's masks agree with eager fp32's on every real crop (mask Dice >=
MIN_REDUCED_PRECISION_DICE) and int8's pooled Dice on each generated set is at most
MAX_INT8_DICE_DROP below OpenVINO fp32's (model/segment/runtime.py). --write stores the worst
real-crop Dice and the largest drop in the card's metrics, with how they were measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from model.image.io import read_image
from model.metrics import dice_counts, dice_from_counts
from model.segment.agreement import reduced_precision_agreement
from model.segment.card import CARD_FILE, DEFAULT_MODEL_DIR
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.runtime import (
    INT8_DICE_DROP_METRIC,
    INT8_DICE_METRIC,
    RuntimeChoice,
    cpu_description,
    int8_check_passed,
)
from model.segment.single_pass import SegmentOptions
from model.synth.slide import generate_slide
from model.synth.styles import random_spec

REAL_CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
PRECISIONS = {
    "fp32": RuntimeChoice(backend="openvino", precision="fp32"),
    "int8": RuntimeChoice(backend="openvino", precision="int8"),
}


def pooled_dice(model: Path, slides: list, choice: RuntimeChoice) -> tuple[float, float]:
    """Pooled pixel Dice of `slides` (as amseg predict runs them) and the seconds it took."""
    segmenter = TorchSegmenter.from_model_dir(model, runtime=choice)
    options = SegmentOptions(tile_size=segmenter.tile_size)
    counts, start = np.zeros(3), time.perf_counter()
    for slide in slides:
        counts += dice_counts(predict_image(slide.image, segmenter, options).mask, slide.mask)
    return dice_from_counts(counts), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--slides", type=int, default=48, help="slides per generated set")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--first-seeds", default="600000,700000,800000,900000")
    parser.add_argument("--write", action="store_true", help="record the check in the card")
    args = parser.parse_args()
    print(cpu_description())

    crops = sorted(REAL_CROPS.glob("*.png"))
    if not crops:
        raise SystemExit(f"no real crops in {REAL_CROPS}")
    images = [(path.name, read_image(path)) for path in crops]
    agreement = reduced_precision_agreement(
        args.model, images, precision="int8", backend="openvino"
    )
    per_image = ", ".join(f"{k} {v:.4f}" for k, v in agreement["per_image"].items())
    print(f"int8 vs eager fp32 mask Dice on real crops: {per_image}")

    drops = {}
    for first in (int(seed) for seed in args.first_seeds.split(",")):
        seeds = range(first, first + args.slides)
        slides = [
            generate_slide(random_spec(s, height=args.size, width=args.size), s) for s in seeds
        ]
        (fp32, fp32_s), (int8, int8_s) = (
            pooled_dice(args.model, slides, choice) for choice in PRECISIONS.values()
        )
        drops[first] = fp32 - int8
        print(
            f"seeds {first}+ ({args.slides} slides {args.size}²): Dice fp32 {fp32:.4f} "
            f"({fp32_s:.0f} s), int8 {int8:.4f} ({int8_s:.0f} s), drop {drops[first]:+.4f}"
        )

    metrics = {
        INT8_DICE_METRIC: round(agreement["min_dice"], 4),
        INT8_DICE_DROP_METRIC: round(max(drops.values()), 4),
    }
    print(f"{metrics} -> {'passed' if int8_check_passed(metrics) else 'FAILED'}")
    if args.write:
        sets = ", ".join(f"{seed}+ {drop:+.4f}" for seed, drop in drops.items())
        metrics["int8_check"] = (
            f"min mask Dice int8 vs eager fp32 on shared/data/real ({per_image}); largest "
            f"pooled-Dice drop vs OpenVINO fp32 on {args.slides} generated {args.size}² slides "
            f"per set ({sets}); benchmarks/int8_check.py --slides {args.slides} --first-seeds "
            f"{args.first_seeds} on {cpu_description()}"
        )
        card_path = args.model / CARD_FILE
        card = json.loads(card_path.read_text())
        card.setdefault("metrics", {}).update(metrics)
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"recorded in {card_path}")


if __name__ == "__main__":
    main()
