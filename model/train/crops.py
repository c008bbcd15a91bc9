"""Crops: the random, augmented crops of a training epoch and the fixed grid of validation
crops."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from model.train.augment import augment_intensity, disturb_crop
from model.train.data import Sample


def _padded(array: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad an array to at least size x size (images smaller than a crop)."""
    pad_y, pad_x = max(0, size - array.shape[0]), max(0, size - array.shape[1])
    if not pad_y and not pad_x:
        return array
    pads = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2))
    return np.pad(array, pads, mode="symmetric")


def sample_crop(
    sample: Sample,
    rng: np.random.Generator,
    tile: int,
    *,
    augment: bool,
    scale_range: tuple[float, float] = (0.5, 2.0),
    disturb: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A random (tile, tile) float32 crop and its uint8 mask, augmented when `augment`
    (with DISTURBANCES, each at chance `disturb`, when that is above 0)."""
    scale = 1.0
    if augment:
        scale = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    size = max(8, round(tile / scale))
    image, mask = _padded(sample.image, size), _padded(sample.mask, size)
    y = int(rng.integers(0, image.shape[0] - size + 1))
    x = int(rng.integers(0, image.shape[1] - size + 1))
    crop = image[y : y + size, x : x + size]
    crop_mask = mask[y : y + size, x : x + size]
    if size != tile:
        shrink = size > tile
        crop = cv2.resize(
            crop, (tile, tile), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
        # Resample the mask as coverage and re-threshold: smoother outlines than nearest.
        cover = cv2.resize(
            crop_mask.astype(np.float32),
            (tile, tile),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
        )
        crop_mask = (cover >= 0.5).astype(np.uint8)
    if not augment:
        return np.ascontiguousarray(crop, np.float32), np.ascontiguousarray(crop_mask)
    turns = int(rng.integers(4))
    crop, crop_mask = np.rot90(crop, turns), np.rot90(crop_mask, turns)
    if rng.random() < 0.5:
        crop, crop_mask = crop[:, ::-1], crop_mask[:, ::-1]
    crop = np.ascontiguousarray(crop, np.float32)
    crop_mask = np.ascontiguousarray(crop_mask)
    if disturb > 0.0:
        crop = disturb_crop(crop, crop_mask, rng, disturb, dark_marks=sample.has_dark_marks())
    return augment_intensity(crop, rng), crop_mask


class CropDataset(torch.utils.data.Dataset):
    """The crops of one epoch. Crop i draws from its own Generator(seed, epoch, i), so the data
    are identical whatever the number of loader workers and however a run is resumed."""

    def __init__(
        self,
        samples: list[Sample],
        plan: np.ndarray,
        *,
        seed: int,
        epoch: int,
        tile: int,
        augment: bool,
        scale_ranges: list[tuple[float, float]],
        disturb: float = 0.0,
    ) -> None:
        self.samples, self.plan = samples, plan
        self.seed, self.epoch, self.tile = seed, epoch, tile
        self.augment, self.scale_ranges = augment, scale_ranges  # one zoom range per sample
        self.disturb = disturb

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        which = int(self.plan[index])
        crop, mask = sample_crop(
            self.samples[which],
            rng,
            self.tile,
            augment=self.augment,
            scale_range=self.scale_ranges[which],
            disturb=self.disturb,
        )
        return torch.from_numpy(crop), torch.from_numpy(mask)


def validation_crops(
    samples: list[Sample], tile: int, max_crops: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic grid of crops over the validation images: (images, masks, valid-pixel maps).

    The last crop of a row/column is shifted inwards so crops stay inside the image; images
    smaller than a crop are padded and the padding is excluded from the metrics.
    """
    images, masks, valids = [], [], []
    for s in samples:
        valid = _padded(np.ones(s.image.shape, np.uint8), tile)
        if s.image.shape[0] < tile or s.image.shape[1] < tile:
            # Zero outside the image: `_padded` reflects ones, so rebuild the valid map.
            valid = np.zeros_like(valid)
            pad_y = max(0, tile - s.image.shape[0]) // 2
            pad_x = max(0, tile - s.image.shape[1]) // 2
            valid[pad_y : pad_y + s.image.shape[0], pad_x : pad_x + s.image.shape[1]] = 1
        image, mask = _padded(s.image, tile), _padded(s.mask, tile)
        for y in _starts(image.shape[0], tile):
            for x in _starts(image.shape[1], tile):
                window = (slice(y, y + tile), slice(x, x + tile))
                images.append(image[window])
                masks.append(mask[window])
                valids.append(valid[window])
    if len(images) > max_crops:
        keep = np.linspace(0, len(images) - 1, max_crops).round().astype(int)
        images = [images[i] for i in keep]
        masks = [masks[i] for i in keep]
        valids = [valids[i] for i in keep]
    return np.stack(images), np.stack(masks), np.stack(valids)


def _starts(length: int, size: int) -> list[int]:
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts
