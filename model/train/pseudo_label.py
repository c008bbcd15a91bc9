"""Pseudo-labels: a dataset predicted by a trained model, cut into crops, of which the confident
ones become training data (TRAIN_DIR/train/pseudo_<dataset>/<group>/{source,mask}/NNNN.png)."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from model.errors import AmsegError
from model.image.io import read_image, to_grayscale, write_png
from model.image.normalize import normalize_intensity, to_uint8
from model.segment.predict import predict_image
from model.segment.segmenter import Segmenter
from model.segment.single_pass import SegmentOptions

DEFAULT_CROP = 512
DEFAULT_MAX_UNCERTAIN = 0.02


class GroupImages(Protocol):
    """A dataset's group images, by group name (model.dataset.layout.DatasetLayout is one);
    `root`'s name names the dataset."""

    root: Path

    def source_image(self, group: str) -> Path: ...


@dataclass
class GroupPseudoLabels:
    """What pseudo-labelling one group image wrote, and where."""

    group: str
    crops: int  # crops the image was cut into
    kept: int  # confident crops written
    kept_with_marks: int
    directory: Path


def uncertain_fraction(probabilities: np.ndarray, min_confidence: float) -> float:
    """Share of pixels whose probability lies strictly between 1 - c and c."""
    low, high = 1.0 - min_confidence, min_confidence
    return float(np.mean((probabilities > low) & (probabilities < high)))


def crop_starts(length: int, size: int) -> list[int]:
    """Crop origins covering `length`; the last crop is shifted inwards to stay inside."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def pseudo_label_group(
    layout: GroupImages,
    group: str,
    segmenter: Segmenter,
    train_dir: Path,
    *,
    min_confidence: float = 0.9,
    max_uncertain: float = DEFAULT_MAX_UNCERTAIN,
    crop_size: int = DEFAULT_CROP,
    tile_size: int | None = None,
    accurate: bool = True,
) -> GroupPseudoLabels:
    """Segment one group image as `amseg predict` does (auto scale, and the enlarged second
    looks: a grid shows but no marks were found, or small marks came out with uncertain
    outlines; with `accurate`, as `--accurate` does) and write its confident crops; earlier
    crops are replaced."""
    if not 0.5 < min_confidence < 1.0:
        raise AmsegError(f"--min-confidence must lie in (0.5, 1), got {min_confidence}")
    image = to_grayscale(read_image(layout.source_image(group)))
    options = SegmentOptions(accurate=accurate)
    if tile_size is not None:
        options = dataclasses.replace(options, tile_size=tile_size)
    segmentation = predict_image(image, segmenter, options)
    if image.dtype not in (np.uint8, np.uint16):
        image = to_uint8(normalize_intensity(image))  # PNG holds only 8/16-bit integers
    target = Path(train_dir) / "train" / f"pseudo_{layout.root.name}" / group
    if target.exists():
        shutil.rmtree(target)  # crops kept by an earlier, looser run must not survive
    crops = kept = with_marks = 0
    for y in crop_starts(image.shape[0], crop_size):
        for x in crop_starts(image.shape[1], crop_size):
            window = (slice(y, y + crop_size), slice(x, x + crop_size))
            name = f"{crops:04d}.png"
            crops += 1
            if (
                uncertain_fraction(segmentation.probabilities[window], min_confidence)
                > max_uncertain
            ):
                continue
            mask = segmentation.mask[window]
            write_png(target / "source" / name, np.ascontiguousarray(image[window]))
            write_png(target / "mask" / name, mask.astype(np.uint8) * 255)
            kept += 1
            with_marks += int(mask.any())
    return GroupPseudoLabels(group, crops, kept, with_marks, target)
