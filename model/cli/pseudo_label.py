"""`amseg pseudo-label`: predict a dataset with a trained model and keep confident crops as
training data (TRAIN_DIR/train/pseudo_<dataset>/<group>/{source,mask}/NNNN.png)."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from model.cli.app import app
from model.cli.console import console
from model.dataset.layout import DatasetLayout
from model.errors import AmsegError
from model.image.io import read_image, to_grayscale, write_png
from model.image.normalize import normalize_intensity, to_uint8
from model.segment.segmenter import Segmenter

DEFAULT_CROP = 512
DEFAULT_MAX_UNCERTAIN = 0.02


@dataclass
class GroupPseudoLabels:
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
    layout: DatasetLayout,
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
    from model.segment.predict import predict_image
    from model.segment.single_pass import SegmentOptions

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


def load_segmenter(model_dir: Path | None) -> Segmenter:
    """The trained model as a pipeline segmenter (imported lazily: torch is heavy)."""
    from model.segment.neural import TorchSegmenter

    return TorchSegmenter.from_model_dir(model_dir)


@app.command("pseudo-label")
def pseudo_label(
    ds_path: Path = typer.Argument(
        ..., help="Dataset directory with one image per group in source/<group>/."
    ),
    model_dir: Path | None = typer.Option(
        None, "--model", "-m", help="Model directory (default: the model shipped with amseg)."
    ),
    train_dir: Path = typer.Option(
        ..., "--out", "-o", help="Training-data folder to add train/pseudo_<dataset>/ to."
    ),
    min_confidence: float = typer.Option(
        0.9,
        "--min-confidence",
        help="A pixel is confident when p <= 1 - C or p >= C; a crop is kept when at most "
        "--max-uncertain of its pixels are not.",
    ),
    max_uncertain: float = typer.Option(
        DEFAULT_MAX_UNCERTAIN,
        "--max-uncertain",
        min=0.0,
        max=1.0,
        help="Largest share of unconfident pixels in a kept crop.",
    ),
    groups: list[str] | None = typer.Option(
        None, "--groups", help="Groups to label (repeat the option); default: all."
    ),
    tile_size: int | None = typer.Option(
        None, "--tile-size", min=64, help="Prediction tile edge in px (default: the pipeline's)."
    ),
    crop_size: int = typer.Option(
        DEFAULT_CROP, "--crop-size", min=32, help="Edge of the written training crops in px."
    ),
    accurate: bool = typer.Option(
        True,
        "--accurate/--fast",
        help="Enlarge grids of small marks 2x before the network, as amseg predict "
        "--accurate does (default: labels are worth the time); --fast segments as amseg "
        "predict does by default.",
    ),
) -> None:
    """Turn confident predictions of a dataset into training crops (pseudo-labels).

    Every group image is segmented, cut into crops, and a crop is written to
    OUT/train/pseudo_<dataset>/<group>/{source,mask}/NNNN.png only when its prediction is
    confident. Check some crops by eye before training on them.
    """
    if not 0.5 < min_confidence < 1.0:
        raise AmsegError(f"--min-confidence must lie in (0.5, 1), got {min_confidence}")
    layout = DatasetLayout(ds_path)
    selected = layout.select_groups(groups)
    segmenter = load_segmenter(model_dir)
    total = kept = 0
    for group in selected:
        report = pseudo_label_group(
            layout,
            group,
            segmenter,
            train_dir,
            min_confidence=min_confidence,
            max_uncertain=max_uncertain,
            crop_size=crop_size,
            tile_size=tile_size,
            accurate=accurate,
        )
        total += report.crops
        kept += report.kept
        console.print(
            f"{group}: kept {report.kept} of {report.crops} crops "
            f"({report.kept_with_marks} with marks) in {report.directory}"
        )
    console.print(
        f"kept {kept} of {total} crops at --min-confidence {min_confidence} "
        f"(--max-uncertain {max_uncertain:g})"
    )
