"""Reduced precision must not change the masks: bf16 (or fp16) against eager fp32."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from model.metrics import dice
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.runtime import MIN_REDUCED_PRECISION_DICE, RuntimeChoice
from model.segment.single_pass import SegmentOptions


def reduced_precision_agreement(
    model_dir: Path | str | None,
    images: Iterable[tuple[str, np.ndarray]],
    *,
    precision: str = "bf16",
    backend: str = "auto",
    options: SegmentOptions | None = None,
) -> dict:
    """Mask Dice of `precision` on `backend` against eager fp32, per image and the minimum.

    Only meaningful for trained weights: a random network's logits sit near 0, so tiny
    numeric differences flip many pixels. `ok` is min Dice >= MIN_REDUCED_PRECISION_DICE.
    """
    reference = TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(precision="fp32", backend="torch")
    )
    candidate = TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(precision=precision, backend=backend)
    )
    options = options or SegmentOptions(tile_size=reference.tile_size, scale=1.0)
    per_image = {}
    for name, image in images:
        expected = predict_image(image, reference, options).mask
        got = predict_image(image, candidate, options).mask
        per_image[name] = dice(expected, got)
    worst = min(per_image.values()) if per_image else 1.0
    return {
        "reference": reference.describe(),
        "candidate": candidate.describe(),
        "per_image": per_image,
        "min_dice": worst,
        "ok": worst >= MIN_REDUCED_PRECISION_DICE,
    }
