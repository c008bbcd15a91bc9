"""`amseg synth`: write synthetic slides with ground truth, as training data or as a dataset."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from model.cli.app import app
from model.cli.console import console
from model.errors import AmsegError
from model.synth.slide import generate_slide
from model.synth.spec import BACKGROUNDS, MAX_MARKS, STYLES
from model.synth.styles import random_spec
from model.synth.writers import write_dataset_layout, write_training_layout

LAYOUTS = ("train", "dataset")


class SynthOptionError(AmsegError):
    """An `amseg synth` option has a value that cannot be used."""


def slide_seed(seed: int, index: int) -> int:
    """Seed of slide `index`: runs with different --seed never share a slide."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _check_options(
    count: int,
    height: int,
    width: int,
    rows: int | None,
    cols: int | None,
    mark_size: float | None,
    bit_depth: int | None,
    layout: str,
    valid_fraction: float,
) -> None:
    if count < 1:
        raise SynthOptionError(f"--count must be at least 1, got {count}")
    if height < 32 or width < 32:
        raise SynthOptionError(f"--height and --width must be at least 32 px, got {width}x{height}")
    if (rows is None) != (cols is None):
        raise SynthOptionError("give both --rows and --cols, or neither")
    if rows is not None and cols is not None:
        if rows < 1 or cols < 1:
            raise SynthOptionError(f"--rows and --cols must be at least 1, got {rows}x{cols}")
        if rows * cols > MAX_MARKS:
            raise SynthOptionError(
                f"a {rows}x{cols} grid has {rows * cols} marks, more than the {MAX_MARKS} "
                "that uint16 ids can number"
            )
    if mark_size is not None and not 4 <= mark_size <= 128:
        raise SynthOptionError(f"--mark-size must be between 4 and 128 px, got {mark_size}")
    if bit_depth is not None and bit_depth not in (8, 16):
        raise SynthOptionError(f"--bit-depth must be 8 or 16, got {bit_depth}")
    if layout not in LAYOUTS:
        raise SynthOptionError(f"--layout must be 'train' or 'dataset', got {layout!r}")
    if not 0.0 <= valid_fraction <= 1.0:
        raise SynthOptionError(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")


@app.command()
def synth(
    out_dir: Path = typer.Argument(
        ..., help="Folder to write the slides into (created if needed)."
    ),
    count: int = typer.Option(10, "--count", help="Number of slides to generate."),
    seed: int = typer.Option(
        0, "--seed", help="Base random seed; the same seed gives the same files."
    ),
    height: int = typer.Option(1024, "--height", help="Slide height in px."),
    width: int = typer.Option(1024, "--width", help="Slide width in px."),
    rows: int | None = typer.Option(
        None, "--rows", help="Acquisition grid rows (default: drawn per slide; needs --cols)."
    ),
    cols: int | None = typer.Option(
        None, "--cols", help="Acquisition grid columns (default: drawn per slide; needs --rows)."
    ),
    mark_size: float | None = typer.Option(
        None, "--mark-size", help="Typical mark diameter in px, 4..128 (default: drawn per slide)."
    ),
    bit_depth: int | None = typer.Option(
        None, "--bit-depth", help="Output bit depth, 8 or 16 (default: drawn per slide)."
    ),
    layout: str = typer.Option(
        "train",
        "--layout",
        help="train: OUT_DIR/train/ and valid/ for amseg train; dataset: OUT_DIR/source/ for "
        "amseg segment.",
    ),
    valid_fraction: float = typer.Option(
        0.2, "--valid-fraction", help="Share of slides put in valid/ (train layout only)."
    ),
    dataset: str = typer.Option(
        "synthetic", "--dataset", help="Dataset folder name in the train layout."
    ),
    low_contrast_fraction: float = typer.Option(
        0.25,
        "--low-contrast-fraction",
        min=0.0,
        max=1.0,
        help="Share of slides with faint marks on a mid-grey matrix, the hardest kind.",
    ),
    background: str = typer.Option(
        "any",
        "--background",
        help="Matrix style: granular, mottled (the hardest), smooth, or any (drawn per slide).",
    ),
    style: str = typer.Option(
        "none",
        "--style",
        help="Make every slide of one extra kind: outlined, ghosted or blotchy; none: the usual "
        "slides.",
    ),
) -> None:
    """Generate synthetic post-MALDI microscopy slides with exact ground-truth masks and ids.

    Each slide gets its own group folder slide_000, slide_001, ... Slide i is fully
    determined by --seed and i, so a run can be repeated exactly.
    """
    _check_options(count, height, width, rows, cols, mark_size, bit_depth, layout, valid_fraction)
    if background != "any" and background not in BACKGROUNDS:
        choices = ", ".join((*BACKGROUNDS, "any"))
        raise SynthOptionError(f"--background must be one of {choices}, got {background!r}")
    if style != "none" and style not in STYLES:
        choices = ", ".join((*STYLES, "none"))
        raise SynthOptionError(f"--style must be one of {choices}, got {style!r}")
    out_dir = Path(out_dir)
    valid_count = round(count * valid_fraction) if layout == "train" else 0
    spec_options = {
        "height": height,
        "width": width,
        "rows": rows,
        "cols": cols,
        "mark_size": mark_size,
        "bit_depth": bit_depth,
        "low_contrast_fraction": low_contrast_fraction,
        "background": None if background == "any" else background,
        "style": None if style == "none" else style,
    }
    grids = _write_slides(out_dir, count, seed, spec_options, layout, valid_count, dataset)
    _print_summary(out_dir, count, layout, valid_count, dataset, grids)


def _write_slides(
    out_dir: Path,
    count: int,
    seed: int,
    spec_options: dict[str, Any],
    layout: str,
    valid_count: int,
    dataset: str,
) -> set[tuple[int, int]]:
    """Draw, render and write `count` slides; return the (rows, cols) grids they have."""
    grids: set[tuple[int, int]] = set()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("synthesising slides", total=count)
        for index in range(count):
            slide_rng_seed = slide_seed(seed, index)
            spec = random_spec(slide_rng_seed, **spec_options)
            slide = generate_slide(spec, slide_rng_seed)
            group = f"slide_{index:03d}"
            grids.add((spec.rows, spec.cols))
            if layout == "train":
                # The last slides go to valid/, so growing --count keeps earlier train slides.
                split = "valid" if index >= count - valid_count else "train"
                write_training_layout(out_dir, slide, split=split, dataset=dataset, group=group)
            else:
                write_dataset_layout(out_dir, slide, group=group)
            progress.advance(task)
    return grids


def _print_summary(
    out_dir: Path,
    count: int,
    layout: str,
    valid_count: int,
    dataset: str,
    grids: set[tuple[int, int]],
) -> None:
    """Where the slides went and, for a dataset, the `amseg segment` command to run next."""
    out = Console(highlight=False)
    if layout == "train":
        out.print(
            f"wrote {count - valid_count} training and {valid_count} validation slides under "
            f"{out_dir / 'train' / dataset} and {out_dir / 'valid' / dataset}"
        )
        return
    out.print(
        f"wrote {count} slides to {out_dir / 'source'} (ground truth in {out_dir / 'ground_truth'})"
    )
    if len(grids) == 1:
        grid_rows, grid_cols = next(iter(grids))
        command = f"amseg segment {shlex.quote(str(out_dir))} --rows {grid_rows} --cols {grid_cols}"
        out.print(f"next: {command}")
    else:
        out.print(
            "the slides have different grids; the grid of each group is in "
            f"{out_dir / 'ground_truth' / '<group>' / 'spec.json'} (rows, cols); run "
            "`amseg segment` per group with its --rows/--cols, or pass --rows/--cols here"
        )
