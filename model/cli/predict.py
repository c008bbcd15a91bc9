"""`amseg predict`: segment marks in image files with the trained model, one mask PNG per image."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer

from model.cli.app import app
from model.cli.console import console, progress_bar
from model.errors import AmsegError
from model.image.io import read_image, write_png
from model.segment.single_pass import MAX_SCALE, SegmentOptions
from model.segment.tiles import MAX_TILE_SIZE, MIN_TILE_SIZE

if TYPE_CHECKING:
    from model.segment.neural import TorchSegmenter


def scale_help(default: str) -> str:
    """Help of --scale, shared by predict and segment; `default` says what happens without it.
    Why the scale matters and what it costs: docs/model.md, "Mark size"."""
    return (
        "Resample factor before the network (1 = full resolution, above 1 enlarges; "
        f"default: {default})."
    )


ACCURATE_HELP = (
    "Enlarge images with a grid pitch under 60 px 2x before the network: sharper small marks, "
    "slower. Not with --scale."
)


def check_accurate(accurate: bool, scale: float | None) -> None:
    """--accurate picks the scale from the grid pitch, so a given --scale contradicts it."""
    if accurate and scale is not None:
        raise AmsegError("--accurate chooses the scale itself; give --accurate or --scale")


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="Image files (PNG, TIFF, JPEG; 8/16-bit)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Directory for the masks."),
    model_dir: Path | None = typer.Option(
        None, "--model", help="Model directory (default: the model shipped with amseg)."
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Probability threshold (default: model's)."
    ),
    probabilities: bool = typer.Option(
        False, "--probabilities", help="Also write <stem>_prob.png (probability x 255)."
    ),
    scale: float | None = typer.Option(
        None,
        "--scale",
        min=0.05,
        max=MAX_SCALE,
        help=scale_help("from the grid pitch"),
    ),
    accurate: bool = typer.Option(False, "--accurate", help=ACCURATE_HELP),
    tile_size: int | None = typer.Option(
        None,
        "--tile-size",
        min=MIN_TILE_SIZE,
        max=MAX_TILE_SIZE,
        help="Tile edge in px (default: the model's).",
    ),
    overlap: int | None = typer.Option(
        None,
        "--overlap",
        min=0,
        help="Minimum overlap of tiles in px (default: 64, at most half a tile).",
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    backend: str = typer.Option(
        "auto",
        "--backend",
        help="auto | torch | openvino (auto: openvino on the CPU when installed).",
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto | fp32 | bf16 | int8 | fp16 (auto: checked int8, else native bf16, else fp32).",
    ),
) -> None:
    """Write OUT/<stem>_mask.png (0/255, the input's size) for every image.

    The model is loaded once. An image that cannot be read or segmented is reported and
    skipped; the exit status is then 1.
    """
    check_accurate(accurate, scale)
    # Imported here so that other commands start without the inference stack.
    from model.segment.neural import TorchSegmenter
    from model.segment.predict import device_pipeline
    from model.segment.runtime import RuntimeChoice

    stems = [path.stem for path in images]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise AmsegError(f"several inputs would write the same output: {', '.join(duplicates)}")
    segmenter = TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(device=device, precision=precision, backend=backend)
    )
    options = SegmentOptions(
        tile_size=tile_size or segmenter.tile_size,
        overlap=overlap,
        threshold=threshold,
        scale=scale,
        accurate=accurate,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"model: {segmenter.describe()}")
    pipeline = device_pipeline(segmenter)
    if pipeline is not None:  # a GPU tunes its kernels while the first image is read
        pipeline.warm_up_in_background(options.tile_size)

    failed = 0
    progress = progress_bar()
    with progress:
        overall = progress.add_task("images", total=len(images))
        for path in images:
            task = progress.add_task(f"{path.name}: tiles", total=None)
            try:
                written, used_scale, padding_share = _predict_one(
                    path,
                    out_dir,
                    segmenter,
                    options,
                    probabilities,
                    on_tiles_planned=lambda n, task=task: progress.update(task, total=n),
                    on_progress=lambda n, task=task: progress.advance(task, n),
                )
            except AmsegError as error:
                failed += 1
                message = str(error)
                named = message if str(path) in message else f"{path}: {message}"
                console.print(f"[red]✗[/] {named}")
            except Exception as error:  # one broken image must not stop the others
                failed += 1
                console.print(f"[red]✗[/] {path}: {type(error).__name__}: {error}")
            else:
                notes = [] if used_scale == 1.0 else [f"network at scale {used_scale:g}"]
                if padding_share:
                    notes.append(f"{padding_share:.0%} padding left out")
                at = f" ({'; '.join(notes)})" if notes else ""
                console.print(f"[green]✓[/] {path} → {', '.join(str(p) for p in written)}{at}")
            progress.remove_task(task)
            progress.advance(overall)
    if failed:
        console.print(f"[bold red]{failed} of {len(images)} image(s) failed[/]")
        raise typer.Exit(1)


def _predict_one(
    path: Path,
    out_dir: Path,
    segmenter: TorchSegmenter,
    options: SegmentOptions,
    write_probabilities: bool,
    **callbacks,
) -> tuple[list[Path], float, float]:
    """Writes the outputs of one image; returns their paths, the scale the network ran at and
    the share of the image left out as padding."""
    from model.segment.predict import predict_image

    image = read_image(path)  # ImageInputError (an AmsegError) names the file
    segmentation = predict_image(
        image, segmenter, options, keep_probabilities=write_probabilities, **callbacks
    )
    written = [write_png(out_dir / f"{path.stem}_mask.png", segmentation.mask)]
    if write_probabilities:
        prob = np.rint(segmentation.probabilities * 255.0).astype(np.uint8)
        written.append(write_png(out_dir / f"{path.stem}_prob.png", prob))
    return written, segmentation.scale, segmentation.padding_share
