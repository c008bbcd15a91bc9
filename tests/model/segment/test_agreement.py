"""Reduced precision keeps the trained model's masks (Dice against eager fp32)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from model.image.io import read_image
from model.segment import neural
from model.segment.agreement import reduced_precision_agreement
from model.segment.card import WEIGHTS_FILE


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "backend"), [("bf16", "auto"), ("int8", "openvino")])
def test_reduced_precision_keeps_the_masks_of_the_trained_model(real_crops, precision, backend):
    """int8 (the auto choice for a model whose card records this check) and bf16 (auto on
    CPUs with native bf16 for a model without it) must agree with fp32: Dice >= 0.99.

    Checks $AMSEG_MODEL_DIR when set, else the default model; skips when there is none.
    """
    directory = Path(os.environ.get("AMSEG_MODEL_DIR") or neural.DEFAULT_MODEL_DIR)
    if not (directory / WEIGHTS_FILE).is_file():
        pytest.skip(f"no trained model in {directory}")
    if precision == "int8" and not all(map(importlib.util.find_spec, ("openvino", "nncf"))):
        pytest.skip("int8 needs openvino and nncf")
    images = [(path.name, read_image(path)) for path in real_crops]
    report = reduced_precision_agreement(directory, images, precision=precision, backend=backend)
    assert report["ok"], report
