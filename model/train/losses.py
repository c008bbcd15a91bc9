"""Training losses: BCE + soft Dice (the default, and the validation loss) and BCE + Lovasz."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """BCE-with-logits + (1 - soft Dice over the whole batch), computed in float32."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits)
    intersection = (probs * target).sum()
    dice = (2 * intersection + smooth) / (probs.sum() + target.sum() + smooth)
    return bce + (1 - dice)


def bce_lovasz_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits + the Lovasz hinge of the whole batch (Berman et al., CVPR 2018).

    The Lovasz hinge is a convex surrogate of 1 - IoU of (logits > 0), i.e. of the mask at
    threshold 0.5, pooled over the batch like the pixel Dice we report. Its gradient weighs
    every pixel's hinge error by how much that error costs the IoU, so the pixels that decide
    the outline (our main error) get the most weight.
    """
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    flat_logits, flat_target = logits.reshape(-1), target.reshape(-1)
    errors = 1.0 - flat_logits * (2.0 * flat_target - 1.0)
    errors, order = torch.sort(errors, descending=True)
    return bce + torch.dot(F.relu(errors), _lovasz_gradient(flat_target[order]))


def _lovasz_gradient(sorted_target: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss for errors sorted descending:
    the increase of 1 - IoU as each pixel in turn is counted as wrong."""
    positives = sorted_target.sum()
    intersection = positives - sorted_target.cumsum(0)
    union = positives + (1.0 - sorted_target).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


LOSSES = {
    "bce-dice": (bce_dice_loss, "BCE-with-logits + (1 - soft Dice over the batch)"),
    "bce-lovasz": (bce_lovasz_loss, "BCE-with-logits + Lovasz hinge over the batch"),
}
