"""The OpenVINO IRs a fine-tuned model directory gets (model/train/tuned_ir.py): fp32 always,
int8 only with labels to check it on, the check in the card, and a failed NNCF or a failed check
said in words while the fp32 IR is still made. (A whole fine-tune with its int8 IR, and the
lean install running it, is in test_finetune.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.segment.card import ModelCard, read_card
from model.segment.network import build_from_card, save_model
from model.segment.runtime import (
    INT8_DICE_DROP_METRIC,
    INT8_DICE_METRIC,
    nncf_available,
    openvino_available,
)
from model.segment.shipped_ir import shipped_ir
from model.train import tuned_ir
from model.train.tuned_ir import makes_int8, ship_tuned_irs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed"),
]
TINY = {"encoder": "resnet18", "decoder_channels": (16, 8, 8, 8, 8), "tile_size": 128}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    card = ModelCard(**TINY)
    return save_model(tmp_path / "model", build_from_card(card), card)


@pytest.fixture
def few_calibration_tiles(monkeypatch):
    """Two tiles instead of the recipe's 48 cut from 12 generated slides (~20 s here)."""
    tiles = np.random.default_rng(2).random((2, 128, 128), dtype=np.float32)
    monkeypatch.setattr("model.segment.quantize.calibration_tiles", lambda size: tiles)


@pytest.fixture
def image_and_labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (160, 160), np.uint8)
    labels = np.full(image.shape, 128, np.uint8)
    labels[:80] = np.where(image[:80] > 200, 255, 0)
    return image, labels


def test_without_labels_or_when_not_asked_only_the_fp32_ir_is_made(model_dir, image_and_labels):
    image, labels = image_and_labels
    for masks, int8 in (([], True), ([labels], False)):
        irs = ship_tuned_irs(model_dir, [image], masks, int8=int8)
        assert irs.int8_check is None and irs.notes == []
        assert shipped_ir(model_dir, "fp32") is not None
        assert shipped_ir(model_dir, "int8") is None
        assert INT8_DICE_METRIC not in read_card(model_dir).metrics
        assert not makes_int8(int8, masks)


@pytest.mark.skipif(not nncf_available(), reason="NNCF is not installed")
@pytest.mark.usefixtures("few_calibration_tiles")
def test_a_failed_check_is_recorded_and_said(model_dir, image_and_labels, monkeypatch):
    image, labels = image_and_labels
    failing = {INT8_DICE_METRIC: 0.95, INT8_DICE_DROP_METRIC: 0.02, "passed": False}
    monkeypatch.setattr(tuned_ir, "int8_check", lambda *args: failing)
    irs = ship_tuned_irs(model_dir, [image], [labels])
    assert irs.int8_check == failing
    assert irs.notes == [
        "int8 did not pass its check on your labels (mask agreement 0.9500, Dice +0.0200 "
        "below fp32): the model runs in bf16 or fp32"
    ]
    metrics = read_card(model_dir).metrics
    assert (metrics[INT8_DICE_METRIC], metrics[INT8_DICE_DROP_METRIC]) == (0.95, 0.02)
    assert "passed" not in metrics  # the card holds the measurements; auto judges them


@pytest.mark.skipif(not nncf_available(), reason="NNCF is not installed")
@pytest.mark.usefixtures("few_calibration_tiles")
def test_when_nncf_fails_the_fp32_ir_is_still_made(model_dir, image_and_labels, monkeypatch):
    image, labels = image_and_labels

    def broken(*args, **kwargs):
        raise RuntimeError("quantization broke")

    monkeypatch.setattr("model.segment.quantize.quantize_export", broken)
    irs = ship_tuned_irs(model_dir, [image], [labels])
    assert irs.int8_check is None
    assert irs.notes == ["no int8 network (RuntimeError: quantization broke)"]
    assert shipped_ir(model_dir, "fp32") is not None and shipped_ir(model_dir, "int8") is None


@pytest.mark.skipif(not nncf_available(), reason="NNCF is not installed")
@pytest.mark.usefixtures("few_calibration_tiles")
def test_a_check_that_breaks_keeps_the_model_without_int8(model_dir, image_and_labels, monkeypatch):
    image, labels = image_and_labels

    def out_of_memory(*args):
        raise MemoryError("the slide is too large")

    monkeypatch.setattr(tuned_ir, "int8_check", out_of_memory)
    irs = ship_tuned_irs(model_dir, [image], [labels])
    assert irs.int8_check is None
    assert irs.notes == [
        "int8 not checked (MemoryError: the slide is too large): the model runs in bf16 or fp32"
    ]
    assert shipped_ir(model_dir, "fp32") is not None and shipped_ir(model_dir, "int8") is None
    assert not (model_dir / "openvino" / "int8").exists()
    assert INT8_DICE_METRIC not in read_card(model_dir).metrics
