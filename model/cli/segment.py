"""`amseg segment`: the whole dataset pipeline, group by group, in the old on-disk layout."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from model.cli.app import app
from model.cli.console import console, progress_bar
from model.cli.grid_options import (
    FlipXOption,
    FlipYOption,
    GeojsonOption,
    ImzmlOption,
    TiffOption,
    TransposeOption,
    load_acquisition,
)
from model.cli.predict import ACCURATE_HELP, check_accurate, scale_help
from model.dataset.group import GridSpec, GroupReport, process_group
from model.dataset.layout import DatasetLayout
from model.errors import AmsegError
from model.register.records import MAX_ID
from model.segment.segmenter import ClassicalSegmenter, Segmenter
from model.segment.single_pass import MAX_SCALE, SegmentOptions
from model.segment.tiles import DEFAULT_TILE_SIZE, MAX_TILE_SIZE, MIN_TILE_SIZE

SEGMENTERS = ("auto", "model", "classical")


def load_segmenter(name: str = "auto", model_dir: Path | None = None) -> Segmenter:
    """The segmenter chosen on the command line.

    "model" is the trained U-Net (`model_dir`, else the default model directory); "auto" is
    the model when a model directory is given or the default one exists, else "classical".
    """
    if name == "auto":
        from model.segment.neural import default_model_available

        have_model = model_dir is not None or default_model_available()
        name = "model" if have_model else "classical"
    if name == "classical":
        if model_dir is not None:
            raise AmsegError("--model cannot be used with --segmenter classical")
        return ClassicalSegmenter()
    if name == "model":
        from model.segment.neural import get_segmenter

        return get_segmenter(model_dir)
    raise AmsegError(f"unknown segmenter {name!r}; available: {', '.join(SEGMENTERS)}")


@app.command()
def segment(
    ds_path: Path = typer.Argument(
        ..., help="Dataset directory with one image per group in source/<group>/."
    ),
    groups: list[str] | None = typer.Argument(
        None, help="Groups to process (sub-folders of source/); default: all."
    ),
    rows: int | None = typer.Option(None, "--rows", min=1, help="Acquisition grid rows."),
    cols: int | None = typer.Option(None, "--cols", min=1, help="Acquisition grid columns."),
    no_register: bool = typer.Option(
        False, "--no-register", help="Stop after the stitched mask; no grid ids."
    ),
    tile_size: int = typer.Option(
        DEFAULT_TILE_SIZE,
        "--tile-size",
        min=MIN_TILE_SIZE,
        max=MAX_TILE_SIZE,
        help="Tile edge in px.",
    ),
    overlap: int | None = typer.Option(
        None,
        "--overlap",
        min=0,
        help="Minimum overlap of tiles in px (default: 64, at most half a tile).",
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Probability threshold (default: segmenter's)."
    ),
    low: float = typer.Option(1.0, "--low-percentile", help="Lower clip percentile."),
    high: float = typer.Option(99.0, "--high-percentile", help="Upper clip percentile."),
    segmenter_name: str = typer.Option(
        "auto",
        "--segmenter",
        help="auto | model | classical (auto: the trained model when one is available).",
    ),
    model_dir: Path | None = typer.Option(
        None, "--model", help="Model directory for the model segmenter (default: shipped model)."
    ),
    no_tiles: bool = typer.Option(
        False, "--no-tiles", help="Do not write the per-tile PNGs under tiles/<group>/."
    ),
    scale: float | None = typer.Option(
        None,
        "--scale",
        min=0.05,
        max=MAX_SCALE,
        help=scale_help("from the grid pitch; 1 for classical"),
    ),
    accurate: bool = typer.Option(False, "--accurate", help=ACCURATE_HELP),
    imzml: ImzmlOption = None,
    flip_x: FlipXOption = False,
    flip_y: FlipYOption = False,
    transpose: TransposeOption = False,
    tiff: TiffOption = False,
    geojson: GeojsonOption = False,
) -> None:
    """Segment and register every group of a dataset.

    Runs source → source_norm → tiles → tiles_stitched → am_coords/<group>/ (am_coordinates.png
    with the ids, or am_coordinates.tiff past 65 535 grid nodes, ams.csv, qc.json,
    overlay.png). With --imzml (one group), each mark is joined to the spectrum shot at its
    node. A failing group is reported; exit status 1.
    """
    check_accurate(accurate, scale)
    _check_grid_options(no_register, rows, cols, imzml)
    layout = DatasetLayout(ds_path)
    selected = layout.select_groups(groups)
    if imzml is not None and len(selected) != 1:
        raise AmsegError("--imzml goes with one group (each acquisition has its own imzML)")
    acquisition = load_acquisition(imzml, flip_x, flip_y, transpose)
    grid = None
    if not no_register:
        grid = GridSpec(rows, cols, acquisition=acquisition, tiff=tiff, geojson=geojson)
        _check_id_range(*grid.grid())
    options = SegmentOptions(
        tile_size=tile_size,
        overlap=overlap,
        threshold=threshold,
        low_percentile=low,
        high_percentile=high,
        accurate=accurate,
    )
    segmenter = load_segmenter(segmenter_name, model_dir)
    if segmenter.name == "classical":
        if accurate:
            raise AmsegError(
                "--accurate needs the trained model; the classical segmenter "
                "works at full resolution"
            )
        scale = 1.0 if scale is None else scale  # the threshold baseline works at any size
    options = dataclasses.replace(options, scale=scale)
    reports = run_groups(layout, selected, segmenter, options, grid, write_tiles=not no_tiles)
    failed = [r for r in reports if not r.ok]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(reports)} group(s) failed[/]")
        raise typer.Exit(1)


def _check_grid_options(
    no_register: bool, rows: int | None, cols: int | None, imzml: Path | None
) -> None:
    """A grid (rows and cols, or an imzML to take them from), or --no-register."""
    if no_register and (rows or cols or imzml):
        raise AmsegError("--no-register and --rows/--cols/--imzml contradict each other; give one")
    grid_given = rows is not None and cols is not None
    from_imzml = rows is None and cols is None and imzml is not None
    if not no_register and not (grid_given or from_imzml):
        raise AmsegError(
            "give the acquisition grid with --rows R --cols C (or --imzml), or pass --no-register"
        )


def _check_id_range(rows: int, cols: int) -> None:
    """Checked before segmenting so a long run does not fail only at registration
    (process_group checks the grid against the image's size before segmenting too)."""
    if rows * cols > MAX_ID:
        raise AmsegError(f"a {rows}x{cols} grid has more than {MAX_ID} marks, the id limit")


def run_groups(
    layout: DatasetLayout,
    groups: list[str],
    segmenter: Segmenter,
    options: SegmentOptions,
    grid: GridSpec | None,
    *,
    write_tiles: bool,
) -> list[GroupReport]:
    """Process groups one after another with progress bars; failures are reported, not raised."""
    reports = []
    progress = progress_bar()
    with progress:
        overall = progress.add_task("groups", total=len(groups))
        for group in groups:
            tiles_task = progress.add_task(f"{group}: tiles", total=None)

            def on_stage(name: str, group: str = group, task: int = tiles_task) -> None:
                progress.update(task, description=f"{group}: {name}")

            try:
                report = process_group(
                    layout,
                    group,
                    segmenter,
                    options,
                    grid,
                    write_tiles=write_tiles,
                    on_stage=on_stage,
                    on_tiles_planned=lambda n, task=tiles_task: progress.update(task, total=n),
                    on_progress=lambda n, task=tiles_task: progress.advance(task, n),
                )
            except AmsegError as error:
                report = GroupReport(group=group, ok=False, error=str(error))
            except Exception as error:  # one broken group must not stop the others
                report = GroupReport(
                    group=group, ok=False, error=f"{type(error).__name__}: {error}"
                )
            progress.remove_task(tiles_task)
            progress.advance(overall)
            reports.append(report)
            _print_report(report)
    return reports


def _print_report(report: GroupReport) -> None:
    if not report.ok:
        console.print(f"[red]✗ {report.group}[/]: {report.error}")
        return
    line = f"[green]✓ {report.group}[/]"
    if report.qc is not None:
        qc = report.qc
        line += f": {qc.get('found')} of {qc.get('expected')} marks on the grid"
        if qc.get("angle_deg") is not None:
            line += f", angle {qc['angle_deg']:.2f}°"
    if report.scale is not None and report.scale != 1.0:
        line += f" (network at scale {report.scale:g})"
    console.print(line)
    for warning in (report.qc or {}).get("warnings", []):
        console.print(f"  [yellow]warning:[/] {warning}")
    for name, path in report.outputs.items():
        console.print(f"  {name}: {path}")
