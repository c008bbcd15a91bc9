"""Training and fine-tuning of the U-Net on DATA/{train,valid}/<dataset>/<group>/{source,mask}/.

Seeded end to end (same seed, same weights on CPU), resumable from `checkpoint.pt`, and writes a
model directory (`model.safetensors` + `model_card.json`) that prediction loads directly.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from model.errors import AmsegError
from model.image.io import IMAGE_SUFFIXES, read_image, to_grayscale
from model.image.normalize import normalize_intensity
from model.metrics import (
    MIN_OBJECT_AREA,
    dice_counts,
    dice_from_counts,
    f1_from_counts,
    object_counts,
)
from model.segment.card import DEFAULT_MODEL_DIR, LIGHT_DECODER, SMP_DEFAULT_DECODER, ModelCard
from model.segment.network import (
    add_full_res_skip,
    build_from_card,
    legacy_card,
    load_model,
    save_model,
)

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"
CURVES_FILE = "training_curves.png"
DEFAULT_ENCODER = "efficientnet-b0"
MAX_AUTO_CROPS = 1024  # cap of the automatic crops per epoch (~5 min/epoch at 256² on 2 cores)
DECODERS = {"light": LIGHT_DECODER, "standard": SMP_DEFAULT_DECODER}
MATRICES = ("DHB", "DAN")


# --------------------------------------------------------------------------------------------
# Configuration, events, result


@dataclass
class TrainConfig:
    """Everything `amseg train` exposes. `None` architecture fields mean: the base model's, else
    the defaults (efficientnet-b0, light decoder, 1 input channel)."""

    data: Path
    out: Path = Path("model-out")
    matrix: str | None = None
    encoder: str | None = None
    decoder: str | None = None  # "light" | "standard"
    decoder_channels: tuple[int, ...] | None = None  # explicit override (tests, experiments)
    in_channels: int | None = None
    # Full-resolution skip channels (network.FullResUnetDecoder); None: the base model's, else
    # 0. Asking for it on a plain base model adds it with zero weights (same outputs at first).
    full_res_skip: int | None = None
    legacy: bool = False
    init_from: Path | None = None
    from_scratch: bool = False
    epochs: int = 30
    batch_size: int = 8
    tile_size: int = 256  # training crop; the card says 512 for prediction
    predict_tile_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    crops_per_epoch: int | None = None  # None: training area / tile², at least one per image
    max_val_crops: int = 256
    threshold: float = 0.5
    scale_range: tuple[float, float] = (0.5, 2.0)
    # Mark sizes (px) the zoom may show: each image's zoom range is narrowed so that its
    # typical mark stays within MIN..MAX (see zoom_range); None zooms every image alike.
    mark_range: tuple[float, float] | None = None
    augment: bool = True
    # Chance per crop of each real-slide disturbance (see DISTURBANCES): dust blobs clear of
    # the marks, uneven light, defocus. 0 leaves the crops (and their random draws) as before.
    disturb: float = 0.0
    # Exponential moving average of the weights, validated and saved instead of the raw
    # weights; 0 turns it off. See WeightAverage for the warm-up that keeps short runs sane.
    ema_decay: float = 0.0
    loss: str = "bce-dice"  # or "bce-lovasz" (see LOSSES)
    num_workers: int | None = None  # None: 0 on CPU, up to 4 with CUDA
    threads: int | None = None  # CPU intra-op threads; None: every core (os.cpu_count())

    def identity(self) -> dict:
        """Settings a resumed run must share with the interrupted one (epochs may grow)."""
        keys = [
            "encoder",
            "decoder",
            "decoder_channels",
            "in_channels",
            "full_res_skip",
            "legacy",
            "init_from",
            "from_scratch",
            "batch_size",
            "tile_size",
            "lr",
            "weight_decay",
            "warmup_fraction",
            "seed",
            "crops_per_epoch",
            "max_val_crops",
            "threshold",
            "scale_range",
            "mark_range",
            "augment",
            "disturb",
            "ema_decay",
            "loss",
        ]
        raw = asdict(self)
        return {k: (str(raw[k]) if isinstance(raw[k], Path) else raw[k]) for k in keys}


@dataclass
class TrainEvent:
    """Progress report handed to `on_event`; kind is one of note, start, step, validate,
    epoch_end (message "best" when the model directory was updated) and done."""

    kind: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None  # running mean over the epoch so far
    batch_loss: float | None = None
    record: dict | None = None
    message: str | None = None


@dataclass
class TrainResult:
    model_dir: Path
    best_dice: float
    best_f1: float
    best_epoch: int
    epochs_run: int
    history: list[dict]
    wall_time_s: float
    device: str
    card: ModelCard
    base_model: str


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class Sample:
    """One decoded training image (normalized to [0, 1]) and its binary mask."""

    path: Path
    dataset: str
    group: str
    image: np.ndarray  # float32 (H, W)
    mask: np.ndarray  # uint8 (H, W), 0/1
    # Marks darker than the matrix (see marks_are_dark); crops of this image that hold no
    # mark still get dust of the marks' polarity. None until first needed: judging it costs a
    # median over the whole image, wasted at load when training runs without --disturb.
    dark_marks: bool | None = None

    @property
    def area(self) -> int:
        return int(self.image.shape[0] * self.image.shape[1])

    def has_dark_marks(self) -> bool:
        if self.dark_marks is None:
            self.dark_marks = marks_are_dark(self.image, self.mask)
        return self.dark_marks


def find_pairs(split_dir: Path) -> list[tuple[Path, Path | None, str, str]]:
    """(source, mask or None, dataset, group) for every image below split/<ds>/<group>/source/."""
    pairs = []
    for source_dir in sorted(split_dir.glob("*/*/source")):
        if not source_dir.is_dir():
            continue
        group_dir = source_dir.parent
        masks = {}
        mask_dir = group_dir / "mask"
        if mask_dir.is_dir():
            masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if _is_image(p)}
        for source in sorted(p for p in source_dir.iterdir() if _is_image(p)):
            exact = mask_dir / source.name
            mask = exact if exact.is_file() else masks.get(source.stem)
            pairs.append((source, mask, group_dir.parent.name, group_dir.name))
    return pairs


def _is_image(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def load_sample(source: Path, mask_path: Path | None, dataset: str, group: str) -> Sample:
    """Decode and normalize one pair; a missing mask is all background."""
    gray = to_grayscale(read_image(source))
    image = normalize_intensity(gray)  # 1/99 percentiles at the full bit depth
    if mask_path is None:
        mask = np.zeros(gray.shape, np.uint8)
    else:
        raw = to_grayscale(read_image(mask_path))
        if raw.shape != gray.shape:
            raise AmsegError(
                f"{mask_path}: mask is {raw.shape[1]}x{raw.shape[0]} but its source is "
                f"{gray.shape[1]}x{gray.shape[0]}"
            )
        mask = (raw > 0).astype(np.uint8)  # accepts 0/1 and 0/255 masks
    image = np.ascontiguousarray(image, np.float32)
    return Sample(source, dataset, group, image, mask)


def marks_are_dark(image: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the marks are on average darker than the median of the rest of the image."""
    marks = mask > 0
    if not marks.any() or marks.all():
        return False
    return bool(image[marks].mean() < np.median(image[~marks]))


def load_split(split_dir: Path) -> list[Sample]:
    return [load_sample(*pair) for pair in find_pairs(split_dir)]


def load_training_data(config: TrainConfig) -> tuple[list[Sample], list[Sample], list[str]]:
    """Train and validation samples, plus notes about how validation was chosen."""
    root = Path(config.data)
    if not root.is_dir():
        raise AmsegError(f"{root}: no such training data folder")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise AmsegError(
            f"{root}: no train/ folder; expected {root}/train/<dataset>/<group>/source/*.png "
            "(masks in .../<group>/mask/ with the same file names) and optionally valid/"
        )
    train = load_split(train_dir)
    if not train:
        raise AmsegError(
            f"{train_dir}: no training images; expected <dataset>/<group>/source/*.png|tif"
        )
    notes: list[str] = []
    valid_dir = root / "valid"
    valid = load_split(valid_dir) if valid_dir.is_dir() else []
    if not valid:
        if len(train) >= 2:
            # Deterministic hold-out so that validation never sees a training image.
            rng = np.random.default_rng([config.seed, 7])
            count = max(1, round(0.1 * len(train)))
            held = set(rng.choice(len(train), size=count, replace=False).tolist())
            valid = [s for i, s in enumerate(train) if i in held]
            train = [s for i, s in enumerate(train) if i not in held]
            notes.append(
                f"no images in {valid_dir}: holding out {count} of {count + len(train)} "
                "training images for validation"
            )
        else:
            valid = list(train)
            notes.append(
                f"no images in {valid_dir} and only one training image: validating on it "
                "(the metrics say nothing about generalisation)"
            )
    if not any(s.mask.any() for s in train):
        notes.append("warning: no training mask has any mark pixel")
    return train, valid, notes


def split_summary(samples: list[Sample], path: Path) -> dict:
    pixels = sum(s.area for s in samples)
    mark_pixels = sum(int(s.mask.sum()) for s in samples)
    return {
        "path": str(path.resolve()),
        "images": len(samples),
        "datasets": sorted({s.dataset for s in samples}),
        "groups": len({(s.dataset, s.group) for s in samples}),
        "pixels": pixels,
        "mark_fraction": round(mark_pixels / max(pixels, 1), 5),
    }


def mark_sizes(samples: list[Sample]) -> np.ndarray:
    """Extent (longer bounding-box side, px) of every mark component in the masks."""
    sizes = [mark_extents(s.mask) for s in samples if s.mask.any()]
    return np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.float64)


def mark_extents(mask: np.ndarray, min_area: int = MIN_OBJECT_AREA) -> np.ndarray:
    """Longer bounding-box side (px) of each mark component of a uint8 mask (components of
    at least `min_area` px)."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    stats = stats[1:]
    stats = stats[stats[:, cv2.CC_STAT_AREA] >= min_area]
    extents = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    return extents.astype(np.float64)


def typical_mark_px(sample: Sample) -> float | None:
    """Median extent of the sample's marks (px), None when its mask has none."""
    return _median_or_none(mark_sizes([sample]))


def _median_or_none(sizes: np.ndarray) -> float | None:
    return float(np.median(sizes)) if sizes.size else None


def zoom_range(
    scale_range: tuple[float, float],
    mark_px: float | None,
    mark_range: tuple[float, float] | None,
) -> tuple[float, float]:
    """The zoom range for an image whose marks are `mark_px` across: `scale_range` narrowed so
    that zoomed marks stay within `mark_range` px where it can, and never widened.

    E.g. 0.7-1.4x on 9 px marks shows them at 6.3-12.6 px, below the 8 px that prediction
    meets; with mark_range (8, 60) the zoom becomes 0.89-1.4x. Marks already outside the range
    get the nearest end of `scale_range` (the zoom closest to bringing them in).
    """
    low, high = scale_range
    if mark_range is None or not mark_px:
        return low, high
    narrowed_low = min(max(low, mark_range[0] / mark_px), high)
    narrowed_high = max(min(high, mark_range[1] / mark_px), narrowed_low)
    return narrowed_low, narrowed_high


def plan_epoch(areas: list[int], count: int, rng: np.random.Generator) -> np.ndarray:
    """Image index of every crop of an epoch, shuffled.

    Every image gets one crop, the rest are drawn in proportion to image area. With fewer crops
    than images, distinct images are drawn (area-weighted), so all are seen over a few epochs.
    """
    n = len(areas)
    weights = np.asarray(areas, dtype=np.float64)
    weights /= weights.sum()
    if count < n:
        plan = rng.choice(n, size=count, replace=False, p=weights)
    else:
        extra = rng.choice(n, size=count - n, replace=True, p=weights)
        plan = np.concatenate([np.arange(n), extra])
    return rng.permutation(plan)


def auto_crops_per_epoch(samples: list[Sample], tile: int, batch_size: int) -> int:
    covering = math.ceil(sum(s.area for s in samples) / tile**2)
    count = max(len(samples), min(covering, MAX_AUTO_CROPS))
    return math.ceil(count / batch_size) * batch_size


# --------------------------------------------------------------------------------------------
# Crops and augmentation (NumPy + cv2, cheap enough to run in the training process)


AUGMENTATIONS = {
    "scale": "log-uniform zoom 0.5-2x: crop tile/scale px, resize to tile",
    "flip_rot90": "random 90° turn and horizontal flip (all 8 symmetries)",
    "blur": "p 0.25, Gaussian sigma 0.3-1.5 px",
    "clahe": "p 0.2, clip limit 1.5-3, 8x8 grid",
    "brightness_contrast": "p 0.8, contrast x0.75-1.3 about the mean, brightness +-0.1",
    "gamma": "p 0.5, gamma 0.7-1.4 (log-uniform)",
    "noise": "p 0.5, additive Gaussian sigma 0.005-0.05",
}


DISTURBANCES = {
    "dust": "1-4 bright (dark for dark marks) soft round blobs, 0.5-4x the crop's mark size "
    "(64 px at most), at the marks' brightness or beyond, clear of every mark; their truth "
    "is background",
    "uneven_light": "gain ramp 0.35-1 to 0.35-1 across the crop in a random direction, "
    "half the time plus a glow ramp of up to 0.3",
    "defocus": "Gaussian sigma 0.8-2.5 px, at most 0.15x the crop's mark size (0.8 at least); "
    "the truth stays sharp",
}
"""What `TrainConfig.disturb` adds, each with that chance per crop, before AUGMENTATIONS'
photometric changes: slides with dust, uneven light or out of focus (benchmarks/robustness.py)."""

DEFAULT_MARK_PX = 12.0  # mark size for a crop without marks (sizes its dust, caps its blur)


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


def disturb_crop(
    crop: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    chance: float,
    *,
    dark_marks: bool | None = None,
) -> np.ndarray:
    """DISTURBANCES on a float32 [0, 1] crop, each with `chance`; the mask is unchanged.
    `dark_marks` is the whole image's polarity (None: judged from the crop's own marks)."""
    dust, uneven, defocus = rng.random(3) < chance
    mark_px = _crop_mark_px(mask) if dust or defocus else DEFAULT_MARK_PX
    if dust:
        crop = _add_dust(crop, mask, rng, mark_px, dark_marks=dark_marks)
    if uneven:
        crop = _uneven_light(crop, rng)
    if defocus:
        # Capped by the mark size: blurred further, small marks vanish into the grain and
        # the crop would teach nothing but guessing.
        sigma = min(float(rng.uniform(0.8, 2.5)), max(0.8, 0.15 * mark_px))
        crop = cv2.GaussianBlur(crop, (0, 0), sigma)
    return np.clip(crop, 0.0, 1.0).astype(np.float32, copy=False)


def _crop_mark_px(mask: np.ndarray) -> float:
    """Median mark extent in a crop; marks zoomed below the object-size floor still count."""
    if not mask.any():
        return DEFAULT_MARK_PX
    extents = mark_extents(mask)
    if not extents.size:
        extents = mark_extents(mask, min_area=1)
    return float(np.median(extents))


def _add_dust(
    crop: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    mark_px: float,
    *,
    dark_marks: bool | None = None,
) -> np.ndarray:
    """Soft round blobs as bright as the marks or brighter (darker, for dark marks), placed
    where they touch no mark: the network must learn that a bright blob off the grid is not
    a mark. `dark_marks` None judges the polarity from the crop's marks (bright without any);
    a crop without marks gets blobs beyond its brightest (darkest) pixel."""
    marks = mask > 0
    if dark_marks is None:
        dark_marks = marks_are_dark(crop, mask)
    if dark_marks:
        high = float(np.percentile(crop[marks], 25)) if marks.any() else float(crop.min())
        low, high = 0.0, max(high, 0.0)
    else:
        low = float(np.percentile(crop[marks], 75)) if marks.any() else float(crop.max())
        low, high = min(low, 1.0), 1.0
    clearance = cv2.distanceTransform((~marks).astype(np.uint8), cv2.DIST_L2, 5)
    height, width = crop.shape
    out = crop.copy()
    for _ in range(int(rng.integers(1, 5))):
        diameter = min(mark_px * float(np.exp(rng.uniform(np.log(0.5), np.log(4.0)))), 64.0)
        radius = max(2.0, diameter / 2.0)
        softness = float(rng.uniform(0.5, 1.5))
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        if clearance[y, x] < radius + 3.0 * softness + 2.0:
            continue  # no room for the blob and its soft rim here: fewer blobs on crowded crops
        axes = (round(radius), round(radius * float(rng.uniform(0.7, 1.0))))
        disc = np.zeros(crop.shape, np.float32)
        cv2.ellipse(disc, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        alpha = cv2.GaussianBlur(disc, (0, 0), softness)
        alpha *= np.float32(rng.uniform(0.8, 1.0))
        level = np.float32(rng.uniform(low, high))
        out += alpha * (level - out)
    return out


def _uneven_light(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A gain ramp (and half the time a glow ramp) across the crop in a random direction."""
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    ys, xs = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]].astype(np.float32)
    along = np.cos(angle) * xs + np.sin(angle) * ys
    along = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    start, end = rng.uniform(0.35, 1.0, 2)
    gain = np.float32(start) + np.float32(end - start) * along
    out = crop * gain
    if rng.random() < 0.5:
        out += np.float32(rng.uniform(0.0, 0.3)) * along
    return out


def augment_intensity(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric changes (see AUGMENTATIONS) on a float32 [0, 1] crop; returns [0, 1]."""
    if rng.random() < 0.25:
        crop = cv2.GaussianBlur(crop, (0, 0), float(rng.uniform(0.3, 1.5)))
    if rng.random() < 0.2:
        clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(1.5, 3.0)), tileGridSize=(8, 8))
        as_u8 = np.rint(np.clip(crop, 0.0, 1.0) * 255.0).astype(np.uint8)
        crop = clahe.apply(as_u8).astype(np.float32) / np.float32(255.0)
    if rng.random() < 0.8:
        mean = float(crop.mean())
        contrast = float(rng.uniform(0.75, 1.3))
        brightness = float(rng.uniform(-0.1, 0.1))
        crop = (crop - mean) * np.float32(contrast) + np.float32(mean + brightness)
    if rng.random() < 0.5:
        gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
        crop = np.power(np.clip(crop, 0.0, 1.0), np.float32(gamma))
    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.005, 0.05))
        crop = crop + rng.standard_normal(crop.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(crop, 0.0, 1.0).astype(np.float32, copy=False)


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


# --------------------------------------------------------------------------------------------
# Loss and metrics


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


# --------------------------------------------------------------------------------------------
# Model choice


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AmsegError("--device cuda was asked for but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise AmsegError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def _explicit_architecture(config: TrainConfig) -> bool:
    return config.legacy or any(
        v is not None
        for v in (config.encoder, config.decoder, config.decoder_channels, config.in_channels)
    )


def requested_card(config: TrainConfig) -> ModelCard:
    """The card of the architecture the options ask for (defaults filled in)."""
    if config.legacy:
        card = legacy_card()
        if config.encoder not in (None, card.encoder) or config.in_channels not in (None, 3):
            raise AmsegError("--legacy fixes the encoder (resnext50_32x4d) and 3 input channels")
        return card
    decoder = config.decoder or "light"
    if decoder not in DECODERS:
        raise AmsegError(f"unknown decoder {decoder!r}; use light or standard")
    in_channels = config.in_channels or 1
    if in_channels not in (1, 3):
        raise AmsegError(f"--in-channels must be 1 or 3, got {in_channels}")
    return ModelCard(
        encoder=config.encoder or DEFAULT_ENCODER,
        decoder_channels=tuple(config.decoder_channels or DECODERS[decoder]),
        in_channels=in_channels,
        full_res_skip=config.full_res_skip or 0,
        input_mean=(0.5,) * in_channels,
        input_std=(0.25,) * in_channels,
    )


def _same_architecture(a: ModelCard, b: ModelCard) -> bool:
    return (a.architecture, a.encoder, tuple(a.decoder_channels), a.in_channels) == (
        b.architecture,
        b.encoder,
        tuple(b.decoder_channels),
        b.in_channels,
    )


def shipped_base_model(matrix: str | None) -> Path | None:
    """model/weights/<matrix>/ when shipped, else model/weights/default/, else None."""
    candidates = [DEFAULT_MODEL_DIR.parent / matrix.lower()] if matrix else []
    candidates.append(DEFAULT_MODEL_DIR)
    for candidate in candidates:
        if (candidate / "model_card.json").is_file() and (
            candidate / "model.safetensors"
        ).is_file():
            return candidate
    return None


def choose_base_model(config: TrainConfig) -> tuple[Path | None, str]:
    """Which weights training starts from, and a sentence saying so (and why)."""
    if config.init_from is not None:
        if config.from_scratch:
            raise AmsegError("--init-from and --from-scratch contradict each other; give one")
        return Path(config.init_from), f"fine-tuning from {config.init_from}"
    if config.from_scratch:
        return None, "training from random initialisation (--from-scratch)"
    shipped = shipped_base_model(config.matrix)
    if shipped is None:
        return None, "training from random initialisation (no shipped model to fine-tune)"
    _, shipped_card = _read_card(shipped)
    # A full-resolution skip can be added to a plain shipped model, not removed or resized.
    changes_skip = shipped_card.full_res_skip > 0 and config.full_res_skip not in (
        None,
        shipped_card.full_res_skip,
    )
    if changes_skip or (
        _explicit_architecture(config)
        and not _same_architecture(requested_card(config), shipped_card)
    ):
        return None, (
            f"training from random initialisation (the shipped model {shipped} has a "
            "different architecture than the one asked for)"
        )
    return shipped, f"fine-tuning from the shipped model {shipped}"


def _read_card(directory: Path) -> tuple[Path, ModelCard]:
    path = directory / "model_card.json"
    if not path.is_file():
        raise AmsegError(f"{directory}: not a model directory (no model_card.json)")
    return path, ModelCard.from_json(path.read_text())


def build_network(config: TrainConfig, base: Path | None) -> tuple[torch.nn.Module, ModelCard]:
    """The network to train (seeded init or loaded base weights) and its starting card."""
    if base is None:
        card = requested_card(config)
        torch.manual_seed(config.seed)
        return build_from_card(card), card
    network, base_card = load_model(base)
    if _explicit_architecture(config) and not _same_architecture(requested_card(config), base_card):
        raise AmsegError(
            f"{base} is a {base_card.encoder} U-Net with decoder {list(base_card.decoder_channels)}"
            f" and {base_card.in_channels} input channel(s); drop the architecture options to "
            "fine-tune it"
        )
    full_res_skip = base_card.full_res_skip
    if config.full_res_skip is not None and config.full_res_skip != full_res_skip:
        if full_res_skip:
            raise AmsegError(
                f"{base} has a full-resolution skip of {full_res_skip} channels; drop "
                "--full-res-skip or give that number to fine-tune it"
            )
        network = add_full_res_skip(network, base_card, config.full_res_skip)
        full_res_skip = config.full_res_skip
    card = ModelCard(
        encoder=base_card.encoder,
        decoder_channels=tuple(base_card.decoder_channels),
        in_channels=base_card.in_channels,
        full_res_skip=full_res_skip,
        input_mean=tuple(base_card.input_mean),
        input_std=tuple(base_card.input_std),
    )
    return network, card


# Layers added to a trained base model (a full-resolution skip starts at zero weights) learn at
# this multiple of --lr: at 1x the new weights of a fine-tune from the shipped model moved only
# ~0.005 in 4 epochs (the old ones are ~0.11), i.e. the branch stayed unused.
ADDED_LAYERS_LR_FACTOR = 10.0


def added_layer_prefixes(card: ModelCard, base: Path | None) -> list[str]:
    """Parameter-name prefixes of the layers `build_network` added to the base model: the new
    stem, and the last decoder block, rebuilt wider (its base weights copied in; the whole
    block learns faster, as one tensor holds both its old and its new input channels)."""
    if base is None or not card.full_res_skip or _read_card(base)[1].full_res_skip:
        return []
    last = len(card.decoder_channels) - 1
    return ["decoder.full_res_stem.", f"decoder.blocks.{last}."]


def parameter_groups(network: torch.nn.Module, fresh: list[str], lr: float) -> list[dict]:
    """AdamW groups: every parameter at `lr`, those under the `fresh` prefixes faster."""
    named = list(network.named_parameters())
    rest = [p for n, p in named if not n.startswith(tuple(fresh))]
    added = [p for n, p in named if fresh and n.startswith(tuple(fresh))]
    groups = [{"params": rest}]
    if added:
        groups.append({"params": added, "lr": lr * ADDED_LAYERS_LR_FACTOR})
    return groups


# --------------------------------------------------------------------------------------------
# Weight averaging


class WeightAverage:
    """An exponential moving average of a network's weights and buffers (BatchNorm statistics
    included), updated after every optimizer step.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the average
    follows the weights closely early on and a short run does not end near its start.
    """

    def __init__(self, network: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise AmsegError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.network = copy.deepcopy(network).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = network.state_dict()
        for name, average in self.network.state_dict().items():
            if average.dtype.is_floating_point:
                average.lerp_(live[name], 1.0 - decay)
            else:  # e.g. BatchNorm's num_batches_tracked
                average.copy_(live[name])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": self.network.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.network.load_state_dict(state["weights"])


# --------------------------------------------------------------------------------------------
# Training loop


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1)[0])


def _to_input(crops: torch.Tensor, card: ModelCard, device: torch.device) -> torch.Tensor:
    """(B, T, T) [0, 1] -> (B, C, T, T) normalized the way prediction normalizes."""
    x = crops.to(device, non_blocking=True).unsqueeze(1)
    if card.in_channels > 1:
        x = x.expand(-1, card.in_channels, -1, -1)
    mean = torch.tensor(card.input_mean, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(card.input_std, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 1 % of the peak learning rate, per step."""
    warmup = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def evaluate(
    network: torch.nn.Module,
    card: ModelCard,
    crops: tuple[np.ndarray, np.ndarray, np.ndarray],
    device: torch.device,
    batch_size: int,
    *,
    use_amp: bool = False,
) -> dict:
    """Validation loss, pixel Dice and object F1 of (sigmoid > card.threshold), the threshold
    prediction uses."""
    images, masks, valids = crops
    network.eval()
    loss_sum, pixel, objects = 0.0, np.zeros(3, np.int64), np.zeros(3, np.int64)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size])
            target = torch.from_numpy(masks[start : start + batch_size]).to(device).float()
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = network(_to_input(batch, card, device))[:, 0]
            loss_sum += float(bce_dice_loss(logits, target)) * len(batch)
            probs = torch.sigmoid(logits.float()).cpu().numpy()
            for i, p in enumerate(probs):
                k = start + i
                pred = p > card.threshold
                truth, valid = masks[k].astype(bool), valids[k].astype(bool)
                pixel += dice_counts(pred, truth, valid)
                objects += object_counts(pred & valid, truth & valid)
    return {
        "val_loss": loss_sum / len(images),
        "val_dice": dice_from_counts(pixel),
        "val_f1": f1_from_counts(objects),
        "val_objects": {"tp": int(objects[0]), "fp": int(objects[1]), "fn": int(objects[2])},
    }


def train_model(
    config: TrainConfig, on_event: Callable[[TrainEvent], None] | None = None
) -> TrainResult:
    """Train (or fine-tune, or resume) and write the model directory `config.out`."""
    saved_threads = torch.get_num_threads()
    try:
        return _train_model(config, on_event or (lambda event: None))
    finally:
        torch.set_num_threads(saved_threads)  # no lasting side effect on the caller's torch


def _train_model(config: TrainConfig, emit: Callable[[TrainEvent], None]) -> TrainResult:
    started = time.perf_counter()
    if config.matrix is not None and config.matrix.upper() not in MATRICES:
        raise AmsegError(f"unknown matrix {config.matrix!r}; use DHB or DAN")
    matrix = config.matrix.upper() if config.matrix else None
    if config.loss not in LOSSES:
        raise AmsegError(f"unknown loss {config.loss!r}; use one of {', '.join(LOSSES)}")
    if config.epochs < 1 or config.batch_size < 1:
        raise AmsegError("epochs and batch size must be at least 1")
    if config.tile_size < 32 or config.tile_size % 32:
        raise AmsegError(f"--tile-size must be a multiple of 32 (>= 32), got {config.tile_size}")
    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
    out = Path(config.out)
    checkpoint_path = out / CHECKPOINT_FILE
    if config.resume and not checkpoint_path.is_file():
        raise AmsegError(f"--resume: no {CHECKPOINT_FILE} in {out}")

    train, valid, notes = load_training_data(config)
    for note in notes:
        emit(TrainEvent("note", message=note))
    base, base_note = choose_base_model(config)
    emit(TrainEvent("note", message=base_note))
    network, card = build_network(config, base)
    # channels_last: 1.7x faster training steps on a 2-core AVX-512 CPU (measured), and
    # the layout tensor cores want with AMP on a GPU.
    network.to(device, memory_format=torch.channels_last)
    card.matrix = matrix
    card.tile_size = config.predict_tile_size
    card.threshold = config.threshold

    crops_per_epoch = config.crops_per_epoch or auto_crops_per_epoch(
        train, config.tile_size, config.batch_size
    )
    steps_per_epoch = math.ceil(crops_per_epoch / config.batch_size)
    fresh = added_layer_prefixes(card, base)
    optimizer = torch.optim.AdamW(
        parameter_groups(network, fresh, config.lr), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = make_scheduler(optimizer, steps_per_epoch * config.epochs, config.warmup_fraction)
    use_amp = device.type == "cuda"  # fp16 autocast pays off only on GPUs
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    train_loss = LOSSES[config.loss][0]
    average = WeightAverage(network, config.ema_decay) if config.ema_decay > 0 else None
    # Validated and saved: the averaged weights when averaging, else the trained ones.
    kept = average.network if average is not None else network
    # Workers would only fight the 2 intra-op threads for the same cores on a small CPU box;
    # with a GPU, a few workers keep it fed.
    workers = config.num_workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(4, max(0, (os.cpu_count() or 1) - 1))

    if checkpoint_path.is_file() and not config.resume:
        emit(TrainEvent("note", message=f"{out} holds an earlier run; starting afresh"))
    history: list[dict] = []
    best = {"dice": -1.0, "f1": 0.0, "epoch": 0}
    first_epoch = 1
    if config.resume:
        # CPU first: the RNG state must stay a CPU tensor; load_state_dict moves the rest.
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        # A setting added after the checkpoint was written is absent there: that run behaved
        # as the setting's default does (every new setting's default keeps the old behaviour).
        identity = _json_roundtrip(config.identity())
        defaults = _json_roundtrip(TrainConfig(data=config.data).identity())
        changed = [k for k, v in identity.items() if state["identity"].get(k, defaults[k]) != v]
        if changed:
            raise AmsegError(
                f"--resume: settings differ from the interrupted run ({', '.join(changed)})"
            )
        if len(state["optimizer"]["param_groups"]) != len(optimizer.param_groups):
            raise AmsegError(
                f"--resume: the base model {base} changed since the interrupted run (its "
                "full-resolution skip differs); start a new run instead"
            )
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if average is not None:
            average.load_state_dict(state["average"])
        torch.set_rng_state(state["rng"]["torch"])
        history, best = state["history"], state["best"]
        first_epoch = state["epoch"] + 1
        emit(TrainEvent("note", message=f"resuming after epoch {state['epoch']}"))
        if first_epoch > config.epochs:
            emit(TrainEvent("note", message="the checkpoint already covers every epoch"))

    val_crops = validation_crops(valid, config.tile_size, config.max_val_crops)
    # Marks measured once per image: for the card's summary and the per-image zoom ranges.
    sizes_per_image = [mark_sizes([s]) for s in train]
    sizes = np.concatenate(sizes_per_image) if sizes_per_image else np.zeros(0)
    data_summary = {
        "root": str(Path(config.data).resolve()),
        "train": split_summary(train, Path(config.data) / "train"),
        "valid": split_summary(valid, Path(config.data) / "valid"),
        "validation_crops": len(val_crops[0]),
        "notes": notes,
    }
    if sizes.size:
        card.mark_px = round(float(np.median(sizes)), 1)
        low, high = np.percentile(sizes, [5, 95])
        data_summary["mark_px"] = {
            "median": card.mark_px,
            "p5": round(float(low), 1),
            "p95": round(float(high), 1),
        }
        # The scale augmentation shows marks from s_min to s_max times their size.
        low_zoom = zoom_range(config.scale_range, float(low), config.mark_range)[0]
        high_zoom = zoom_range(config.scale_range, float(high), config.mark_range)[1]
        data_summary["mark_px_learned"] = [
            round(float(low) * low_zoom, 1),
            round(float(high) * high_zoom, 1),
        ]
    card.data = data_summary
    scale_ranges = [
        zoom_range(config.scale_range, _median_or_none(image_sizes), config.mark_range)
        for image_sizes in sizes_per_image
    ]
    emit(
        TrainEvent(
            "start",
            epochs=config.epochs,
            steps=steps_per_epoch,
            message=(
                f"{len(train)} train / {len(valid)} valid images, {crops_per_epoch} crops of "
                f"{config.tile_size}² per epoch, {card.encoder} U-Net on {device.type}"
                + (" (AMP fp16)" if use_amp else "")
            ),
        )
    )

    areas = [s.area for s in train]
    for epoch in range(first_epoch, config.epochs + 1):
        epoch_started = time.perf_counter()
        # Everything random in an epoch derives from (seed, epoch): resuming reproduces it.
        torch.manual_seed(_epoch_seed(config.seed, epoch))
        plan = plan_epoch(areas, crops_per_epoch, np.random.default_rng([config.seed, epoch]))
        loader = torch.utils.data.DataLoader(
            CropDataset(
                train,
                plan,
                seed=config.seed,
                epoch=epoch,
                tile=config.tile_size,
                augment=config.augment,
                scale_ranges=scale_ranges,
                disturb=config.disturb,
            ),
            batch_size=config.batch_size,
            shuffle=False,  # the plan is already shuffled, reproducibly
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        network.train()
        loss_sum, seen = 0.0, 0
        for step, (crops, masks) in enumerate(loader, start=1):
            target = masks.to(device, non_blocking=True).float()
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = network(_to_input(crops, card, device))[:, 0]
            loss = train_loss(logits, target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if average is not None:
                average.update(network)
            batch_loss = float(loss.detach())
            loss_sum += batch_loss * len(crops)
            seen += len(crops)
            emit(
                TrainEvent(
                    "step",
                    epoch=epoch,
                    epochs=config.epochs,
                    step=step,
                    steps=len(loader),
                    loss=loss_sum / seen,
                    batch_loss=batch_loss,
                )
            )
        train_seconds = time.perf_counter() - epoch_started
        emit(TrainEvent("validate", epoch=epoch, epochs=config.epochs))
        metrics = evaluate(kept, card, val_crops, device, config.batch_size * 2, use_amp=use_amp)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            **metrics,
            "lr": optimizer.param_groups[0]["lr"],
            "crops": seen,
            "train_crops_per_s": seen / max(train_seconds, 1e-9),
            "seconds": time.perf_counter() - epoch_started,
        }
        history.append(record)
        improved = record["val_dice"] > best["dice"]
        if improved:
            best = {"dice": record["val_dice"], "f1": record["val_f1"], "epoch": epoch}
            card.metrics = _metrics(best, record)
            card.training = _training_info(
                config, device, use_amp, base, crops_per_epoch, history, fresh
            )
            save_model(out, kept, card)
        _save_checkpoint(
            checkpoint_path,
            network,
            optimizer,
            scheduler,
            scaler,
            epoch,
            best,
            history,
            config,
            average,
        )
        _write_history(out, history)
        write_curves(out / CURVES_FILE, history)  # per epoch: long runs can be watched
        emit(
            TrainEvent(
                "epoch_end",
                epoch=epoch,
                epochs=config.epochs,
                record=record,
                message="best" if improved else None,
            )
        )

    wall = time.perf_counter() - started
    if history:
        # Rewrite the best model's card with the finished run's summary (weights unchanged).
        best_record = next(r for r in history if r["epoch"] == best["epoch"])
        card.metrics = _metrics(best, best_record)
        card.training = _training_info(
            config, device, use_amp, base, crops_per_epoch, history, fresh
        )
        card.training["wall_time_s"] = round(
            wall + sum(r["seconds"] for r in history if r["epoch"] < first_epoch), 1
        )
        _write_card(out, card)
        write_curves(out / CURVES_FILE, history)
    result = TrainResult(
        model_dir=out,
        best_dice=best["dice"],
        best_f1=best["f1"],
        best_epoch=best["epoch"],
        epochs_run=len(history),
        history=history,
        wall_time_s=wall,
        device=str(device),
        card=card,
        base_model=base_note,
    )
    emit(TrainEvent("done", epoch=config.epochs, epochs=config.epochs, message=base_note))
    return result


def _json_roundtrip(value: dict) -> dict:
    return json.loads(json.dumps(value))


def _metrics(best: dict, record: dict) -> dict:
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


def _training_info(
    config: TrainConfig,
    device: torch.device,
    use_amp: bool,
    base: Path | None,
    crops_per_epoch: int,
    history: list[dict],
    fresh: list[str],
) -> dict:
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
        "augmentations": _augmentations(config),
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


def _augmentations(config: TrainConfig) -> dict:
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


def _write_card(out: Path, card: ModelCard) -> None:
    tmp = out / ".model_card.json.tmp"
    tmp.write_text(card.to_json())
    os.replace(tmp, out / "model_card.json")


def _write_history(out: Path, history: list[dict]) -> None:
    tmp = out / f".{HISTORY_FILE}.tmp"
    tmp.write_text(json.dumps(history, indent=2))
    os.replace(tmp, out / HISTORY_FILE)


def _save_checkpoint(
    path: Path,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    epoch: int,
    best: dict,
    history: list[dict],
    config: TrainConfig,
    average: WeightAverage | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "average": average.state_dict() if average is not None else None,
        "epoch": epoch,
        "best": best,
        "history": history,
        "identity": _json_roundtrip(config.identity()),
        # Each epoch re-seeds from (seed, epoch); the states are kept for inspection/debugging.
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.default_rng([config.seed, epoch]).bit_generator.state,
        },
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Curves


def write_curves(path: Path, history: list[dict]) -> Path:
    """Two panels (losses; validation Dice and F1) per epoch, drawn with Pillow."""
    width, height, margin = 1000, 420, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    epochs = [r["epoch"] for r in history]
    losses = [r[k] for r in history for k in ("train_loss", "val_loss")]
    metrics = [r[k] for r in history for k in ("val_dice", "val_f1")]
    panel_w = (width - 3 * margin) // 2
    panels = [
        (
            margin,
            "loss",
            _value_range(losses, 0.0, math.inf),
            [
                ("train loss", "train_loss", (31, 119, 180)),
                ("val loss", "val_loss", (255, 127, 14)),
            ],
        ),
        (
            2 * margin + panel_w,
            "validation metric",
            _value_range(metrics, 0.0, 1.0),
            [("val Dice", "val_dice", (44, 160, 44)), ("val F1", "val_f1", (214, 39, 40))],
        ),
    ]
    x_low, x_high = (min(epochs), max(epochs)) if len(epochs) > 1 else (epochs[0] - 1, epochs[0])
    for left, ylabel, (y_low, y_high), series in panels:
        plot_top, plot_bottom = 30, height - margin
        right = left + panel_w

        def to_xy(
            ep, val, left=left, right=right, top_=plot_top, bottom=plot_bottom, lo=y_low, hi=y_high
        ):
            x = left + (ep - x_low) / (x_high - x_low) * (right - left)
            y = bottom - (val - lo) / (hi - lo) * (bottom - top_)
            return x, y

        for i in range(6):
            value = y_low + (y_high - y_low) * i / 5
            _, y = to_xy(x_low, value)
            draw.line([left - 4, y, left, y], fill="black")
            draw.line([left, y, right, y], fill=(230, 230, 230))
            digits = 2 if y_high - y_low >= 0.1 else 3
            draw.text((left - 44, y - 6), f"{value:.{digits}f}", fill="black", font=font)
        for ep in _epoch_ticks(x_low, x_high):
            x, _ = to_xy(ep, y_low)
            draw.line([x, plot_bottom, x, plot_bottom + 4], fill="black")
            draw.text((x - 6, plot_bottom + 6), str(ep), fill="black", font=font)
        draw.text(((left + right) // 2 - 15, plot_bottom + 22), "epoch", fill="black", font=font)
        draw.text((left, 10), ylabel, fill="black", font=font)
        draw.rectangle([left, plot_top, right, plot_bottom], outline="black")  # over the grid
        for k, (label, key, colour) in enumerate(series):
            points = [to_xy(r["epoch"], r[key]) for r in history]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            # Legend in the band above the plot, where it cannot hide a curve.
            legend_x = right - 110 * (len(series) - k)
            draw.line([legend_x, 16, legend_x + 20, 16], fill=colour, width=2)
            draw.text((legend_x + 25, 10), label, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _value_range(values: list[float], floor: float, ceiling: float) -> tuple[float, float]:
    """The y range of a panel: the data with 10 % padding, within [floor, ceiling], so the small
    changes of a fine-tune stay visible (a fixed 0..1 axis flattens them)."""
    low, high = min(values), max(values)
    pad = max((high - low) * 0.1, 0.005)
    return max(floor, low - pad), min(ceiling, high + pad)


def _epoch_ticks(low: int, high: int) -> list[int]:
    step = max(1, math.ceil((high - low) / 10))
    return list(range(max(low, 1), high + 1, step))


# --------------------------------------------------------------------------------------------
# Console progress


class RichReporter:
    """`on_event` handler: a rich progress bar per epoch, validation lines, a summary line."""

    def __init__(self, console=None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False)
        self.progress = None
        self.task = None
        self.last = ""

    def __call__(self, event: TrainEvent) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if event.kind == "note" or event.kind == "start":
            self.console.print(event.message, soft_wrap=True)  # keep paths whole in logs
        elif event.kind == "step":
            if not self.console.is_terminal:
                return  # logs get the per-epoch lines only, no bar redraws
            if self.progress is None:
                self.progress = Progress(
                    TextColumn("epoch {task.fields[epoch]}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"),
                    TextColumn("{task.fields[last]}"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=self.console,
                    transient=True,
                )
                self.progress.start()
                self.task = self.progress.add_task(
                    "",
                    total=event.steps,
                    epoch=f"{event.epoch}/{event.epochs}",
                    loss=0.0,
                    last=self.last,
                )
            self.progress.update(self.task, completed=event.step, loss=event.loss or 0.0)
        elif event.kind == "validate" and self.progress is not None:
            self.progress.update(self.task, last="validating…")
        elif event.kind == "epoch_end":
            self._stop()
            r = event.record or {}
            self.last = f"last val Dice {r['val_dice']:.3f} F1 {r['val_f1']:.3f}"
            mark = " [green]best[/]" if event.message == "best" else ""
            self.console.print(
                f"epoch {r['epoch']}/{event.epochs}: train loss {r['train_loss']:.4f}, "
                f"val loss {r['val_loss']:.4f}, val Dice {r['val_dice']:.4f}, "
                f"val F1 {r['val_f1']:.4f}, {r['train_crops_per_s']:.1f} crops/s, "
                f"{r['seconds']:.0f} s{mark}",
                soft_wrap=True,
            )
        elif event.kind == "done":
            self._stop()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress, self.task = None, None


def summary_line(result: TrainResult) -> str:
    return (
        f"best val Dice {result.best_dice:.4f}, object F1 {result.best_f1:.4f} at epoch "
        f"{result.best_epoch} of {result.epochs_run}; {result.wall_time_s:.0f} s on "
        f"{result.device}; model written to {result.model_dir}"
    )


__all__ = [
    "RichReporter",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "bce_dice_loss",
    "bce_lovasz_loss",
    "choose_base_model",
    "evaluate",
    "object_counts",
    "plan_epoch",
    "sample_crop",
    "summary_line",
    "train_model",
]
