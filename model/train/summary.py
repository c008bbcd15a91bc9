"""What a trained model's card says about its training: the data, the best epoch, the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.train.augment import AUGMENTATIONS, DISTURBANCES
from model.train.base import ADDED_LAYERS_LR_FACTOR
from model.train.config import TrainConfig
from model.train.data import Sample, split_summary, zoom_range
from model.train.losses import LOSSES


def metrics_summary(best: dict, record: dict) -> dict:
    """The card's `metrics`: the best epoch's validation scores, and how they are defined."""
    return {
        "val_dice": round(best["dice"], 4),
        "val_object_f1": round(best["f1"], 4),
        "val_loss": round(record["val_loss"], 4),
        "epoch": best["epoch"],
        "val_objects": record["val_objects"],
        "dice_definition": "pixel Dice of sigmoid > threshold over all validation crops",
        "f1_definition": (
            "8-connected components >= 12 px matched one-to-one at IoU >= 0.5, "
            "summed over validation crops"
        ),
    }


def training_summary(
    config: TrainConfig,
    device: torch.device,
    use_amp: bool,
    base: Path | None,
    crops_per_epoch: int,
    history: list[dict],
    fresh: list[str],
) -> dict:
    """The card's `training`: every setting of the run, as far as it has come."""
    return {
        "epochs": config.epochs,
        "epochs_run": len(history),
        "batch_size": config.batch_size,
        "crop_size": config.tile_size,
        "crops_per_epoch": crops_per_epoch,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "optimizer": (
            f"AdamW (every parameter; the layers added or widened for the base model, "
            f"{', '.join(fresh)}, at {ADDED_LAYERS_LR_FACTOR:g}x the learning rate)"
            if fresh
            else "AdamW (every parameter, one group)"
        ),
        "schedule": f"linear warm-up {config.warmup_fraction:.0%} of steps, cosine to 1 %",
        "loss": LOSSES[config.loss][1],
        "validation_loss": LOSSES["bce-dice"][1],
        "seed": config.seed,
        "augmentations": augmentations_used(config),
        "scale_range": list(config.scale_range),
        "mark_range": list(config.mark_range) if config.mark_range else None,
        "weight_average": (
            f"EMA decay {config.ema_decay} (warm-up (1+n)/(10+n)); saved weights are the average"
            if config.ema_decay > 0
            else None
        ),
        "device": str(device),
        "amp": use_amp,
        "threads": torch.get_num_threads(),
        "init_from": str(base) if base is not None else None,
        "wall_time_s": round(sum(r["seconds"] for r in history), 1),
    }


def augmentations_used(config: TrainConfig) -> dict:
    """AUGMENTATIONS as this run used them (its own zoom range), {} without augmentation."""
    if not config.augment:
        return {}
    low, high = config.scale_range
    scale = f"log-uniform zoom {low:g}-{high:g}x: crop tile/scale px, resize to tile"
    if config.mark_range:
        scale += (
            f", narrowed per image to keep its median mark within "
            f"{config.mark_range[0]:g}-{config.mark_range[1]:g} px"
        )
    disturbances = (
        {name: f"p {config.disturb:g}, {text}" for name, text in DISTURBANCES.items()}
        if config.disturb > 0
        else {}
    )
    return {**AUGMENTATIONS, "scale": scale, **disturbances}


def data_summary(
    config: TrainConfig,
    train: list[Sample],
    valid: list[Sample],
    notes: list[str],
    validation_crops: int,
    sizes: np.ndarray,
) -> dict:
    """The card's `data`: both splits, the validation crops, the notes on how validation was
    chosen, and (when the masks have marks) the marks' extents as found and as the zoom
    augmentation shows them."""
    summary = {
        "root": str(Path(config.data).resolve()),
        "train": split_summary(train, Path(config.data) / "train"),
        "valid": split_summary(valid, Path(config.data) / "valid"),
        "validation_crops": validation_crops,
        "notes": notes,
    }
    if sizes.size:
        low, high = np.percentile(sizes, [5, 95])
        summary["mark_px"] = {
            "median": round(float(np.median(sizes)), 1),
            "p5": round(float(low), 1),
            "p95": round(float(high), 1),
        }
        # The scale augmentation shows marks from s_min to s_max times their size.
        low_zoom = zoom_range(config.scale_range, float(low), config.mark_range)[0]
        high_zoom = zoom_range(config.scale_range, float(high), config.mark_range)[1]
        summary["mark_px_learned"] = [
            round(float(low) * low_zoom, 1),
            round(float(high) * high_zoom, 1),
        ]
    return summary
