"""The labels of a fine-tune (`amseg finetune`): a user's 0/128/255 label masks checked and put
at the scale prediction runs the slide at, a part held out in spatial blocks to judge the
training, and the augmented training crops around the labelled pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from model.errors import AmsegError
from model.image.io import read_image, to_grayscale
from model.image.normalize import IntensityWindow, find_padding, intensity_window
from model.segment.pitch import auto_scale, estimate_mark_pitch
from model.segment.predict import resample
from model.segment.tiles import reflect_indices
from model.train.augment import augment_intensity

MARK, BACKGROUND, UNLABELLED = 255, 0, 128
LABEL_VALUES = (BACKGROUND, UNLABELLED, MARK)


@dataclass
class LabelledImage:
    """One slide at the scale prediction runs it at, with its labels split for training."""

    name: str
    gray: np.ndarray  # raw intensities (native dtype), as prediction reads them
    window: IntensityWindow  # the whole image's, as prediction normalizes it
    target: np.ndarray  # uint8 0/1: mark
    train: np.ndarray  # bool: labelled pixels the loss sees
    held_out: np.ndarray  # bool: labelled pixels kept back to judge the training
    scale: float = 1.0

    @property
    def labelled_px(self) -> int:
        return int(np.count_nonzero(self.train) + np.count_nonzero(self.held_out))


# --------------------------------------------------------------------------------------------
# Labels in


def check_label_mask(mask: np.ndarray, image_shape: tuple[int, ...], name: str) -> np.ndarray:
    """A user's label mask as uint8 0/128/255 (H, W), or a clear error about what is wrong."""
    if mask.dtype == bool:
        mask = np.where(mask, MARK, BACKGROUND).astype(np.uint8)
    if mask.ndim == 3:
        channels = mask[..., :3]
        if not (channels == channels[..., :1]).all():
            raise AmsegError(
                f"{name}: the label mask is in colour; save it as a gray image with 0 = "
                "background, 255 = mark, 128 = not labelled"
            )
        mask = channels[..., 0]
    if mask.shape != tuple(image_shape[:2]):
        raise AmsegError(
            f"{name}: the mask is {mask.shape[1]}x{mask.shape[0]} px but its image is "
            f"{image_shape[1]}x{image_shape[0]}; a label mask must have the image's size"
        )
    values, counts = np.unique(mask, return_counts=True)
    wrong = [(int(v), int(c)) for v, c in zip(values, counts, strict=True) if v not in LABEL_VALUES]
    if wrong:
        shown = ", ".join(f"{v} ({c} px)" for v, c in wrong[:5])
        hint = " (a 0/1 mask? marks must be 255)" if {v for v, _ in wrong} == {1} else ""
        raise AmsegError(
            f"{name}: the mask holds values other than 0 (background), 128 (not labelled) and "
            f"255 (mark): {shown}{hint}; paint with hard edges, without anti-aliasing"
        )
    return mask.astype(np.uint8, copy=False)


def prepare_image(
    image: np.ndarray, labels: np.ndarray, name: str, mask_name: str | None = None
) -> LabelledImage:
    """The image resampled to the scale `amseg predict` runs it at (1 unless its marks are
    very large), its intensity window, and its checked labels (padding left out)."""
    gray = to_grayscale(image)
    labels = check_label_mask(labels, gray.shape, mask_name or f"{name}'s mask")
    padding = find_padding(gray)
    if padding is not None:
        labels = np.where(padding, UNLABELLED, labels).astype(np.uint8)
    scale = auto_scale(estimate_mark_pitch(gray))
    if scale != 1.0:
        gray = resample(gray, scale)
        height, width = gray.shape
        labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    labelled = labels != UNLABELLED
    return LabelledImage(
        name=name,
        gray=gray,
        window=intensity_window(gray),
        target=(labels == MARK).astype(np.uint8),
        train=labelled,
        held_out=np.zeros_like(labelled),
        scale=scale,
    )


def check_labels(items: Sequence[LabelledImage]) -> None:
    """Enough labels to learn from: some marks and some background, somewhere."""
    marks = sum(int(np.count_nonzero(i.target.astype(bool) & i.train)) for i in items)
    labelled = sum(i.labelled_px for i in items)
    if labelled == 0:
        raise AmsegError(
            "nothing is labelled: every mask pixel is 128; paint marks 255 and background 0 "
            "in at least one region"
        )
    if marks == 0:
        raise AmsegError(
            "no mark is labelled (255) in any mask; label a few marks, not only background"
        )
    if marks == labelled:
        raise AmsegError(
            "no background is labelled (0) in any mask; label the matrix around the marks too"
        )


# --------------------------------------------------------------------------------------------
# Held-out blocks


def held_out_block_size(labelled_px: int) -> int:
    """Edge of the held-out blocks: about 16 blocks over the labels, 48-128 px."""
    return int(np.clip(round(math.sqrt(labelled_px / 16) / 16) * 16, 48, 128))


def split_held_out(
    items: Sequence[LabelledImage],
    fraction: float,
    max_px: int,
    rng: np.random.Generator,
) -> bool:
    """Move about `fraction` of the labelled pixels (at most `max_px`), in square blocks, from
    `train` to `held_out` (in place). The held-out part must hold marks and background, and training
    must keep marks; False (nothing held out) when no draw of blocks gives that."""
    total = sum(i.labelled_px for i in items)
    block = held_out_block_size(total)
    goal = min(fraction * total, max_px)
    blocks = []  # (item, y, x, labelled, marks)
    for k, item in enumerate(items):
        height, width = item.train.shape
        for y in range(0, height, block):
            for x in range(0, width, block):
                cell = (slice(y, y + block), slice(x, x + block))
                labelled = int(np.count_nonzero(item.train[cell]))
                if labelled:
                    marks = int(np.count_nonzero(item.target[cell].astype(bool) & item.train[cell]))
                    blocks.append((k, y, x, labelled, marks))
    all_marks = sum(b[4] for b in blocks)
    for _ in range(50):
        chosen, taken = [], 0
        for index in rng.permutation(len(blocks)):
            if taken >= goal:
                break
            chosen.append(blocks[index])
            taken += blocks[index][3]
        marks = sum(b[4] for b in chosen)
        if len(chosen) < len(blocks) and 0 < marks < taken and marks < all_marks:
            for k, y, x, _, _ in chosen:
                cell = (slice(y, y + block), slice(x, x + block))
                items[k].held_out[cell] = items[k].train[cell]
                items[k].train[cell] = False
            return True
    return False


def read_pair(
    image: np.ndarray | str | Path, mask: np.ndarray | str | Path, index: int
) -> LabelledImage:
    """One image and its label mask (arrays or files), prepared as `prepare_image` does."""
    name = str(image) if isinstance(image, str | Path) else f"image {index + 1}"
    mask_name = str(mask) if isinstance(mask, str | Path) else f"mask {index + 1}"
    image = read_image(image) if isinstance(image, str | Path) else np.asarray(image)
    mask = read_image(mask) if isinstance(mask, str | Path) else np.asarray(mask)
    return prepare_image(image, mask, name, mask_name)


# --------------------------------------------------------------------------------------------
# Training crops


def _window_pixels(gray: np.ndarray, y0: int, x0: int, size: int) -> tuple[np.ndarray, ...]:
    """Row and column indices of a size x size window at (y0, x0), mirrored outside the image,
    and whether each index is inside."""
    height, width = gray.shape[:2]
    ys, xs = np.arange(y0, y0 + size), np.arange(x0, x0 + size)
    inside_y, inside_x = (ys >= 0) & (ys < height), (xs >= 0) & (xs < width)
    return (
        reflect_indices(y0, y0 + size, height),
        reflect_indices(x0, x0 + size, width),
        inside_y[:, None] & inside_x[None, :],
    )


def training_crop(
    item: LabelledImage,
    rng: np.random.Generator,
    size: int,
    scale_range: tuple[float, float],
    centres: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An augmented (size, size) crop around one of `centres` (training pixels): float32 image
    in [0, 1], uint8 target and uint8 loss weight (1 on training labels only)."""
    scale = float(np.exp(rng.uniform(*np.log(scale_range))))
    region = max(8, round(size / scale))
    cy, cx = centres[rng.integers(len(centres))]
    y0 = int(cy) - region // 2 + int(rng.integers(-region // 4, region // 4 + 1))
    x0 = int(cx) - region // 2 + int(rng.integers(-region // 4, region // 4 + 1))
    rows, cols, inside = _window_pixels(item.gray, y0, x0, region)
    crop = item.window.apply(item.gray[np.ix_(rows, cols)])
    target = item.target[np.ix_(rows, cols)].astype(np.float32)
    weight = (item.train[np.ix_(rows, cols)] & inside).astype(np.float32)
    if region != size:
        shrink = region > size
        method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (size, size), interpolation=method)
        target = cv2.resize(target, (size, size), interpolation=method)
        weight = cv2.resize(weight, (size, size), interpolation=method)
    turns = int(rng.integers(4))
    crop, target, weight = (np.rot90(a, turns) for a in (crop, target, weight))
    if rng.random() < 0.5:
        crop, target, weight = crop[:, ::-1], target[:, ::-1], weight[:, ::-1]
    crop = augment_intensity(np.ascontiguousarray(crop, np.float32), rng)
    return (
        crop,
        np.ascontiguousarray(target >= 0.5, np.uint8),
        np.ascontiguousarray(weight >= 0.5, np.uint8),
    )


class CropSampler:
    """Batches of training crops, each from an image picked by its share of training labels."""

    MAX_CENTRES = 200_000  # training pixels remembered per image as crop centres
    SEARCH_PX = 1 << 22  # larger label masks are searched on a sparser grid of pixels

    def __init__(
        self,
        items: Sequence[LabelledImage],
        crop_size: int,
        batch_size: int,
        scale_range: tuple[float, float],
        seed: int,
    ):
        self.items, self.crop_size, self.batch_size = items, crop_size, batch_size
        self.scale_range = scale_range
        self.rng = np.random.default_rng([seed, 1])
        self.centres = []
        for item in items:
            step = max(1, math.ceil(math.sqrt(item.train.size / self.SEARCH_PX)))
            ys, xs = np.nonzero(item.train[::step, ::step])
            if step > 1 and len(ys) < 1000:  # a few small labels on a huge image: all of them
                step = 1
                ys, xs = np.nonzero(item.train)
            keep = self.rng.permutation(len(ys))[: self.MAX_CENTRES]
            self.centres.append(np.column_stack([ys[keep], xs[keep]]) * step)
        counts = np.array([np.count_nonzero(i.train) for i in items], np.float64)
        self.share = counts / counts.sum()

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        crops, targets, weights = [], [], []
        for _ in range(self.batch_size):
            k = int(self.rng.choice(len(self.items), p=self.share))
            crop, target, weight = training_crop(
                self.items[k],
                self.rng,
                self.crop_size,
                self.scale_range,
                self.centres[k],
            )
            crops.append(crop)
            targets.append(target)
            weights.append(weight)
        return tuple(torch.from_numpy(np.stack(a)) for a in (crops, targets, weights))


def merge_held_out(items: Sequence[LabelledImage]) -> None:
    """Give the held-out labels back to training (in place): the last pass learns from all."""
    for item in items:
        item.train |= item.held_out
        item.held_out[:] = False


# --------------------------------------------------------------------------------------------
# Held-out evaluation


@dataclass
class HeldOutWindows:
    """Windows around the held-out blocks, normalized, with their labels."""

    images: np.ndarray  # (N, S, S) float32 in [0, 1]
    targets: np.ndarray  # (N, S, S) bool
    scored: np.ndarray  # (N, S, S) bool: held-out pixels, each scored once

    @property
    def pixels(self) -> int:
        return int(np.count_nonzero(self.scored))


def held_out_windows(items: Sequence[LabelledImage], margin: int = 48) -> HeldOutWindows | None:
    """A window of block + 2 * margin px (a multiple of 32) around every held-out block, so
    the network sees the blocks with context; None when nothing is held out."""
    return label_windows(items, [item.held_out for item in items], margin)


def labelled_windows(
    items: Sequence[LabelledImage], max_px: int, rng: np.random.Generator, margin: int = 48
) -> HeldOutWindows | None:
    """Windows over every labelled pixel (held out or not), or over blocks of them drawn at
    random up to about `max_px` labelled pixels: what the person said, to check it came back."""
    scored = [item.train | item.held_out for item in items]
    total = sum(int(np.count_nonzero(s)) for s in scored)
    if total > max_px:
        block = held_out_block_size(sum(i.labelled_px for i in items))
        keep = max_px / total
        for mask in scored:
            for y in range(0, mask.shape[0], block):
                for x in range(0, mask.shape[1], block):
                    if rng.random() > keep:
                        mask[y : y + block, x : x + block] = False
    return label_windows(items, scored, margin)


def label_windows(
    items: Sequence[LabelledImage], scored_masks: Sequence[np.ndarray], margin: int = 48
) -> HeldOutWindows | None:
    """Windows with context around every block that holds pixels of `scored_masks` (one per
    item); those pixels are scored, each once."""
    total = sum(i.labelled_px for i in items)
    block = held_out_block_size(total)
    size = math.ceil((block + 2 * margin) / 32) * 32
    images, targets, scored = [], [], []
    for item, chosen in zip(items, scored_masks, strict=True):
        height, width = chosen.shape
        for y in range(0, height, block):
            for x in range(0, width, block):
                if not chosen[y : y + block, x : x + block].any():
                    continue
                y0, x0 = y - (size - block) // 2, x - (size - block) // 2
                rows, cols, inside = _window_pixels(item.gray, y0, x0, size)
                keep = np.zeros((size, size), bool)
                keep[y - y0 : y - y0 + block, x - x0 : x - x0 + block] = True
                images.append(item.window.apply(item.gray[np.ix_(rows, cols)]))
                targets.append(item.target[np.ix_(rows, cols)].astype(bool))
                scored.append(keep & inside & chosen[np.ix_(rows, cols)])
    if not images:
        return None
    return HeldOutWindows(np.stack(images), np.stack(targets), np.stack(scored))
