"""`amseg demo`: make a synthetic slide, run the whole pipeline on it and check the ids."""

from __future__ import annotations

from pathlib import Path

import typer

from model.cli.app import app
from model.cli.console import console
from model.cli.segment import load_segmenter, run_groups
from model.dataset.group import GridSpec
from model.dataset.layout import DatasetLayout
from model.image.io import read_image
from model.metrics import mark_id_accuracy
from model.segment.single_pass import SegmentOptions
from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from model.synth.writers import write_dataset_layout


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Where to write the demo dataset."),
    size: int = typer.Option(2048, "--size", min=256, max=8192, help="Slide edge in px."),
    rows: int = typer.Option(20, "--rows", min=2, max=200, help="Grid rows."),
    cols: int = typer.Option(20, "--cols", min=2, max=200, help="Grid columns."),
    seed: int = typer.Option(7, "--seed", help="Seed of the synthetic slide."),
) -> None:
    """Generate a synthetic slide with known ids, segment and register it, and score the ids.

    Needs no data of your own: a quick way to see what amseg writes and how well it works.
    """
    group = "demo_slide"
    spec = fit_grid_inside(
        random_spec(seed, height=size, width=size, rows=rows, cols=cols, bit_depth=16)
    )
    slide = generate_slide(spec, seed)
    write_dataset_layout(out, slide, group=group)
    console.print(
        f"synthetic {size}x{size} 16-bit slide with a {rows}x{cols} grid → {out}/source/{group}/"
    )

    layout = DatasetLayout(out)
    segmenter = load_segmenter("auto")
    reports = run_groups(
        layout,
        [group],
        segmenter,
        SegmentOptions(scale=None),
        GridSpec(rows, cols),
        write_tiles=True,
    )
    if not reports[0].ok:
        raise typer.Exit(1)
    labels = read_image(layout.am_coords_dir(group) / "am_coordinates.png")
    accuracy = mark_id_accuracy(labels, slide.labels)
    console.print(
        f"marks with the right id: {accuracy:.1%} (ground truth in {out}/ground_truth/{group}/)"
    )
