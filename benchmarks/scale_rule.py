"""What resampling costs: mask Dice after a down/up round trip vs the mark size it leaves.

The best a network run at scale s can do is a perfect soft mask at the reduced size; upsampled
(linear) and thresholded at 0.5 it differs from the full-resolution truth by the round-trip
loss measured here, on synthetic slides with ground truth. Also checks the pitch estimate and
the scale `auto_scale` picks for each slide. With --network it also measures what the model
itself loses at each scale on unseen slides with large marks (35-60 px, pitch >= 110 px), the
slides a scale rule could shrink.

    .venv/bin/python benchmarks/scale_rule.py [--network [--model DIR]]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.metrics import dice as mask_dice
from model.metrics import dice_counts, dice_from_counts
from model.segment.pitch import TARGET_PITCH_PX, auto_scale, estimate_mark_pitch
from model.synth.slide import generate_slide
from model.synth.styles import random_spec

SCALES = (1 / 1.5, 1 / 2, 1 / 2.5, 1 / 3, 1 / 4)


def round_trip(mask: np.ndarray, scale: float) -> np.ndarray:
    height, width = mask.shape
    small = cv2.resize(
        mask.astype(np.float32),
        (round(width * scale), round(height * scale)),
        interpolation=cv2.INTER_AREA,
    )
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR) > 0.5


def network_at_scales(model: Path | None, slides: int = 14) -> None:
    """Pooled Dice of the model run at fixed scales on unseen large-mark slides."""
    from model.segment.neural import TorchSegmenter
    from model.segment.predict import predict_image
    from model.segment.single_pass import SegmentOptions

    segmenter = TorchSegmenter.from_model_dir(model)
    options = SegmentOptions(tile_size=segmenter.tile_size)
    scales = (1.0, 0.8, 1 / 1.5, 0.5)
    totals = {scale: np.zeros(3) for scale in scales}
    rng = np.random.default_rng(5)
    print(f"\nnetwork Dice by scale ({segmenter.describe()})")
    print(
        f"{'seed':>6s} {'mark':>5s} {'pitch':>6s} {'auto':>5s} "
        + " ".join(f"{s:>6.2f}" for s in scales)
    )
    used = 0
    for seed in range(910_000, 910_100):
        mark = float(rng.uniform(35, 60))
        spec = random_spec(seed, height=1024, width=1024, mark_size=mark)
        if spec.pitch_x < 110:
            continue
        slide = generate_slide(spec, seed)
        cells = []
        for scale in scales:
            counts = dice_counts(
                predict_image(
                    slide.image, segmenter, dataclasses.replace(options, scale=scale)
                ).mask,
                slide.mask,
            )
            totals[scale] += counts
            cells.append(f"{dice_from_counts(counts):6.3f}")
        chosen = auto_scale(estimate_mark_pitch(slide.image))
        print(f"{seed:6d} {mark:5.0f} {spec.pitch_x:6.0f} {chosen:5.2f} " + " ".join(cells))
        used += 1
        if used == slides:
            break
    pooled = " ".join(f"{dice_from_counts(totals[s]):6.3f}" for s in scales)
    print(f"{'pooled':>6s} {'':>5s} {'':>6s} {'':>5s} {pooled}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", action="store_true", help="also run the model at each scale")
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: shipped)")
    args = parser.parse_args()
    print(f"target pitch {TARGET_PITCH_PX} px; rows: slide, columns: scale (mark px after it)")
    print(
        f"{'mark':>5s} {'pitch':>6s} {'est.':>6s} {'auto':>5s} "
        + " ".join(f"{'1/' + format(1 / s, 'g'):>13s}" for s in SCALES)
    )
    worst_at_auto = 1.0
    for seed, mark in enumerate((12, 18, 24, 30, 36, 45, 55, 60)):
        spec = random_spec(seed, height=1536, width=1536, mark_size=float(mark))
        slide = generate_slide(spec, seed)
        pitch = estimate_mark_pitch(slide.image)
        chosen = auto_scale(pitch)
        cells = []
        for scale in SCALES:
            dice = mask_dice(slide.mask, round_trip(slide.mask, scale))
            cells.append(f"{dice:.3f} ({mark * scale:4.1f})")
        if chosen < 1:
            worst_at_auto = min(
                worst_at_auto, mask_dice(slide.mask, round_trip(slide.mask, chosen))
            )
        estimate = f"{pitch:6.1f}" if pitch else "  none"
        print(
            f"{mark:5d} {min(spec.pitch_x, spec.pitch_y):6.1f} {estimate} {chosen:5.2f} "
            + " ".join(f"{c:>13s}" for c in cells)
        )
    print(f"worst round-trip Dice at the auto scale: {worst_at_auto:.3f}")
    if args.network:
        network_at_scales(args.model)


if __name__ == "__main__":
    main()
