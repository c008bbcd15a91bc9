"""Training data: the image/mask pairs of DATA/{train,valid}/<dataset>/<group>/, their marks'
sizes, and which image each crop of an epoch comes from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model.errors import AmsegError
from model.image.io import IMAGE_SUFFIXES, read_image, to_grayscale
from model.image.normalize import normalize_intensity
from model.metrics import MIN_OBJECT_AREA
from model.train.config import TrainConfig

MAX_AUTO_CROPS = 1024  # cap of the automatic crops per epoch (~5 min/epoch at 256² on 2 cores)


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


def zoom_ranges(
    sizes_per_image: list[np.ndarray],
    scale_range: tuple[float, float],
    mark_range: tuple[float, float] | None,
) -> list[tuple[float, float]]:
    """Each image's zoom range (see zoom_range), from the extents of its marks."""
    return [
        zoom_range(scale_range, _median_or_none(sizes), mark_range) for sizes in sizes_per_image
    ]


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
