"""Pick a model's probability threshold on synthetic calibration slides (not the benchmark ones).

    .venv/bin/python benchmarks/threshold_sweep.py [--model DIR] [--slides 48] [--write]

Calibration slides use seeds from 800000, apart from both the training seeds (amseg synth
--seed 1000/2000) and the benchmark seeds of model_accuracy.py (900000+), so the threshold is
not tuned on the slides it is then scored on. Prints the pooled pixel Dice per threshold;
--write stores the best one as "threshold" in the model card. 48 slides by default: with 12,
which slides were drawn moved the Dice more than the threshold did.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from model.metrics import dice_counts, dice_from_counts
from model.segment.card import DEFAULT_MODEL_DIR
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.single_pass import SegmentOptions, remove_small_components
from model.synth.slide import generate_slide
from model.synth.styles import random_spec

THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--slides", type=int, default=48)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--first-seed", type=int, default=800_000)
    parser.add_argument("--write", action="store_true", help="store the best in the card")
    args = parser.parse_args()

    segmenter = TorchSegmenter.from_model_dir(args.model)
    counts = {threshold: np.zeros(3) for threshold in THRESHOLDS}
    for index in range(args.slides):
        seed = args.first_seed + index
        slide = generate_slide(random_spec(seed, height=args.size, width=args.size), seed)
        options = SegmentOptions(tile_size=segmenter.tile_size)
        probabilities = predict_image(slide.image, segmenter, options).probabilities
        for threshold in THRESHOLDS:
            # As the pipeline does: threshold, then drop specks below the minimum mark area.
            mask = remove_small_components(probabilities > threshold, options.min_mark_area)
            counts[threshold] += dice_counts(mask, slide.mask)
    scores = {threshold: dice_from_counts(c) for threshold, c in counts.items()}
    best = max(scores, key=scores.get)
    for threshold, score in scores.items():
        print(
            f"threshold {threshold:.2f}: Dice {score:.4f}{'  <- best' if threshold == best else ''}"
        )
    print(
        f"[{segmenter.describe()}], {args.slides} slides {args.size}² from seed {args.first_seed}"
    )
    if args.write:
        card_path = args.model / "model_card.json"
        card = json.loads(card_path.read_text())
        previous = card.get("threshold")
        card["threshold"] = best
        card.setdefault("metrics", {})["threshold_calibration"] = {
            # The threshold replaced: for a model fresh from training, the one its
            # validation metrics were taken at.
            "previous_threshold": previous,
            "slides": args.slides,
            "size": args.size,
            "first_seed": args.first_seed,
            "dice_by_threshold": {f"{t:.2f}": round(s, 4) for t, s in scores.items()},
            "command": f"benchmarks/threshold_sweep.py --slides {args.slides} --write",
        }
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"wrote threshold {best} to {card_path}")


if __name__ == "__main__":
    main()
