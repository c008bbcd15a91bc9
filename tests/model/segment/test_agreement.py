"""Reduced precision keeps the trained model's masks (Dice against eager fp32)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.image.io import read_image
from model.segment import neural
from model.segment.agreement import reduced_precision_agreement
from model.segment.card import WEIGHTS_FILE


@pytest.mark.slow
def test_reduced_precision_keeps_the_masks_of_the_trained_model(real_crops):
    """bf16 (the auto choice on CPUs with native bf16) must agree with fp32: Dice >= 0.99.

    Checks $AMSEG_MODEL_DIR when set, else the default model; skips when there is none.
    """
    directory = Path(os.environ.get("AMSEG_MODEL_DIR") or neural.DEFAULT_MODEL_DIR)
    if not (directory / WEIGHTS_FILE).is_file():
        pytest.skip(f"no trained model in {directory}")
    images = [(path.name, read_image(path)) for path in real_crops]
    report = reduced_precision_agreement(directory, images, precision="bf16", backend="auto")
    assert report["ok"], report
