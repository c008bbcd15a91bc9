"""Training losses: BCE + Dice and BCE + Lovasz."""

from __future__ import annotations

import pytest
import torch

from model.train.losses import bce_dice_loss, bce_lovasz_loss


def test_loss_is_small_for_confident_correct_logits():
    target = torch.zeros(2, 16, 16)
    target[:, 4:8, 4:8] = 1
    good = bce_dice_loss((target * 2 - 1) * 20, target)
    bad = bce_dice_loss(-(target * 2 - 1) * 20, target)
    assert float(good) < 0.01 < float(bad)


def test_lovasz_term_is_the_jaccard_loss_on_binary_errors():
    """With hinge errors exactly 0 (right, margin 1) or 1 (wrong, logit 0) the Lovasz
    extension equals 1 - IoU with the wrong pixels counted as errors."""
    target = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    wrong = torch.tensor([[False, True, False, False], [True, True, False, False]])
    logits = torch.where(wrong, torch.zeros_like(target), 2 * target - 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    missed, extra, positives = 1, 2, 4  # wrong positives, wrong negatives, all positives
    iou = (positives - missed) / (positives + extra)
    assert float(bce_lovasz_loss(logits, target) - bce) == pytest.approx(1 - iou, abs=1e-6)
    confident = (2 * target - 1) * 5  # right with a wide margin: no Lovasz term left
    expected = torch.nn.functional.binary_cross_entropy_with_logits(confident, target)
    assert float(bce_lovasz_loss(confident, target)) == pytest.approx(float(expected), abs=1e-6)
