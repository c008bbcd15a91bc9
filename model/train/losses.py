"""Training losses: BCE + soft Dice (the default, and the validation loss) and BCE + Lovasz."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, LovaszLoss


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits + (1 - soft Dice over the whole batch, smooth 1; smp's, which leaves
    the Dice term out of a batch without any mark), computed in float32."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce + _DICE(logits.reshape(1, 1, -1), target.reshape(1, 1, -1))


def bce_lovasz_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits + the Lovasz hinge of the whole batch (Berman et al., CVPR 2018; smp's).

    The Lovasz hinge is a convex surrogate of 1 - IoU of (logits > 0), i.e. of the mask at
    threshold 0.5, pooled over the batch like the pixel Dice we report. Its gradient weighs
    every pixel's hinge error by how much that error costs the IoU, so the pixels that decide
    the outline (our main error) get the most weight.
    """
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce + _LOVASZ(logits, target)


_LOVASZ = LovaszLoss("binary", per_image=False)
_DICE = DiceLoss("binary", from_logits=True, smooth=1.0)


LOSSES = {
    "bce-dice": (bce_dice_loss, "BCE-with-logits + (1 - soft Dice over the batch)"),
    "bce-lovasz": (bce_lovasz_loss, "BCE-with-logits + Lovasz hinge over the batch"),
}
