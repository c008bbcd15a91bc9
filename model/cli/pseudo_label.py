"""`amseg pseudo-label`: predict a dataset with a trained model and keep confident crops as
training data (TRAIN_DIR/train/pseudo_<dataset>/<group>/{source,mask}/NNNN.png)."""

from __future__ import annotations

from pathlib import Path

import typer

from model.cli.app import app
from model.cli.console import console
from model.dataset.layout import DatasetLayout
from model.errors import AmsegError
from model.segment.segmenter import Segmenter
from model.train.pseudo_label import DEFAULT_CROP, DEFAULT_MAX_UNCERTAIN, pseudo_label_group


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
        help="A pixel is confident when its probability is at most 1 - C or at least C; C in "
        "(0.5, 1).",
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
        help="Segment as amseg predict --accurate does (enlarge small-mark grids 2x); --fast: "
        "as plain amseg predict.",
    ),
) -> None:
    """Turn confident predictions of a dataset into training crops (pseudo-labels).

    Segments each group's image and writes the crops whose prediction is confident to
    OUT/train/pseudo_<dataset>/<group>/{source,mask}/. Check some by eye before training on them.
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
