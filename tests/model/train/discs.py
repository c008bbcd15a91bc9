"""Small synthetic training data: bright (or dark) discs on a noisy background."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from model.image.io import write_png
from model.train.config import TrainConfig

TINY = {"encoder": "resnet18", "decoder_channels": (16, 8, 8, 8, 8)}


def disc_image(rng: np.random.Generator, size: int = 96, marks: int = 4) -> tuple:
    """Bright discs (radius 5-9 px) on a noisy background, as uint8 image and 0/255 mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for _ in range(marks):
        cy, cx = rng.uniform(10, size - 10, 2)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(5, 9) ** 2
    image = 60 + 120 * mask + rng.normal(0, 20, mask.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def make_disc_data(root: Path, *, train: int = 3, valid: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("valid", valid)):
        for i in range(count):
            image, mask = disc_image(rng)
            group = root / split / "discs" / f"g{i % 2}"
            write_png(group / "source" / f"{i:02d}.png", image)
            write_png(group / "mask" / f"{i:02d}.png", mask)
    return root


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        data=data,
        out=out,
        epochs=1,
        batch_size=4,
        tile_size=64,
        crops_per_epoch=4,
        max_val_crops=8,
        lr=3e-3,
        device="cpu",
        threads=1,  # steady timings while other work shares the cores
        **TINY,
    )
    values.update(overrides)
    return TrainConfig(**values)


def disc_crop(size: int = 128, polarity: str = "bright") -> tuple[np.ndarray, np.ndarray]:
    """Discs of 11 px on a grey, noisy background, as a [0, 1] crop and its 0/1 mask."""
    rng = np.random.default_rng(1)
    mask = np.zeros((size, size), np.uint8)
    for y in range(16, size, 48):
        for x in range(16, size, 48):
            cv2.circle(mask, (x, y), 5, 1, -1)
    level = 0.8 if polarity == "bright" else 0.1
    crop = np.where(mask > 0, level, 0.4) + rng.normal(0.0, 0.03, mask.shape)
    return np.clip(crop, 0.0, 1.0).astype(np.float32), mask
