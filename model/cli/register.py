"""`amseg register`: number a mask's marks on the acquisition grid, per dataset group or file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape

from model.cli.app import app
from model.cli.console import progress_bar
from model.cli.grid_options import (
    FlipXOption,
    FlipYOption,
    GeojsonOption,
    ImzmlOption,
    TiffOption,
    TransposeOption,
    check_grid_given,
    load_acquisition,
)
from model.errors import DatasetError
from model.image.io import read_image, to_grayscale
from model.register.request import GridRequest

if TYPE_CHECKING:
    from model.register.records import KnownNode, Registration

MASK_NAMES = ("mask.tiff", "mask.tif", "mask.png")
SOURCE_NAMES = ("source.tiff", "source.tif", "source.png")


@app.command("register")
def register_command(
    rows: Annotated[
        int | None,
        typer.Option(
            "--rows", "-r", min=1, help="Rows of the acquisition grid (default: the imzML's)."
        ),
    ] = None,
    cols: Annotated[
        int | None,
        typer.Option(
            "--cols", "-c", min=1, help="Columns of the acquisition grid (default: the imzML's)."
        ),
    ] = None,
    ds_path: Annotated[
        Path | None,
        typer.Argument(
            help="Dataset directory: masks from tiles_stitched/<group>/, results to "
            "am_coords/<group>/.",
            show_default=False,
        ),
    ] = None,
    groups: Annotated[
        list[str] | None,
        typer.Argument(
            help="Groups to register (default: every entry under tiles_stitched/).",
            show_default=False,
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option("--mask", "-m", help="Register a single mask image instead of a dataset."),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option("--image", "-i", help="With --mask: source image for the overlay."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="With --mask: output directory."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="X,Y,ROW,COL",
            help="A mark whose grid place you know: its pixel position X,Y in the image and "
            "its ROW,COL (0-based, as in ams.csv; 0,0 = top left), e.g. --at 812,430,0,0. The "
            "grid is placed so that this mark gets that place, instead of on the window with "
            "the most marks. With --mask or one GROUP.",
        ),
    ] = None,
    imzml: ImzmlOption = None,
    flip_x: FlipXOption = False,
    flip_y: FlipYOption = False,
    transpose: TransposeOption = False,
    tiff: TiffOption = False,
    geojson: GeojsonOption = False,
) -> None:
    """Number ablation marks by their place on the ROWS x COLS grid (id = row*cols + col + 1).

    Writes am_coordinates.png (16-bit ids; am_coordinates.tiff, 32-bit, for grids over 65 535
    nodes), ams.csv, qc.json and overlay.png for every group of DS_PATH, or for one --mask
    file. With --imzml, each mark is joined to the spectrum shot at its node. A failing group
    is reported; exit status 1.
    """
    console = Console(highlight=False)
    check_grid_given(rows, cols, imzml)
    known_node = _parse_at(at)
    for option, value in (("--at", known_node), ("--imzml", imzml)):
        if value is not None and mask is None and len(groups or []) != 1:
            raise typer.BadParameter(
                f"{option} goes with --mask or with one GROUP", param_hint=option
            )
    request = GridRequest(rows, cols, known_node=known_node, tiff=tiff, geojson=geojson)
    if mask is not None:
        if ds_path is not None or groups:
            raise typer.BadParameter("give either DS_PATH or --mask, not both", param_hint="--mask")
        if out is None:
            raise typer.BadParameter("--mask needs an output directory", param_hint="--out")
        request = _with_acquisition(request, imzml, flip_x, flip_y, transpose)
        registration, written = _register_files(mask, image, out, request)
        _print_summary(console, mask.name, registration, written["labels"].parent)
        return
    if ds_path is None:
        raise typer.BadParameter("give a dataset directory DS_PATH or --mask", param_hint="DS_PATH")
    if image is not None or out is not None:
        raise typer.BadParameter("--image and --out go with --mask", param_hint="--image/--out")
    request = _with_acquisition(request, imzml, flip_x, flip_y, transpose)
    _register_groups(console, ds_path, groups, request)


def _with_acquisition(
    request: GridRequest, imzml: Path | None, flip_x: bool, flip_y: bool, transpose: bool
) -> GridRequest:
    acquisition = load_acquisition(imzml, flip_x, flip_y, transpose)
    return dataclasses.replace(request, acquisition=acquisition)


def _register_groups(
    console: Console, ds_path: Path, groups: list[str] | None, request: GridRequest
) -> None:
    """Register every group (or the named ones); report failures, then exit 1 if any."""
    names = list(groups) if groups else _dataset_groups(ds_path)
    failures: list[tuple[str, str]] = []
    with progress_bar("registering [bold]{task.description}") as progress:
        task = progress.add_task("", total=len(names))
        for name in names:
            progress.update(task, description=escape(name))
            try:
                registration, out_dir = _register_group(ds_path, name, request)
            except Exception as error:  # one bad group must not stop the others
                failures.append((name, f"{type(error).__name__}: {error}"))
                progress.console.print(f"[bold red]{escape(name)}: failed[/] {escape(str(error))}")
            else:
                _print_summary(progress.console, name, registration, out_dir)
            progress.advance(task)
    if failures:
        console.print(f"[bold red]{len(failures)} of {len(names)} group(s) failed:[/]")
        for name, cause in failures:
            console.print(f"  {escape(name)}: {escape(cause)}")
        raise typer.Exit(code=1)


def _dataset_groups(ds_path: Path) -> list[str]:
    stitched = ds_path / "tiles_stitched"
    if not stitched.is_dir():
        raise DatasetError(f"{ds_path}: no tiles_stitched/ directory, so no masks to register")
    names = sorted(entry.name for entry in stitched.iterdir() if entry.is_dir())
    if not names:
        raise DatasetError(f"{stitched}: no groups (sub-directories) to register")
    return names


def _parse_at(text: str | None) -> KnownNode | None:
    """--at X,Y,ROW,COL as a KnownNode; None without --at."""
    if text is None:
        return None
    from model.register.records import KnownNode

    parts = [part.strip() for part in text.split(",")]
    try:
        if len(parts) != 4:
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
        row, col = int(parts[2]), int(parts[3])
    except ValueError:
        raise typer.BadParameter(
            f"expected X,Y,ROW,COL (pixel position, then 0-based row and column), got {text!r}",
            param_hint="--at",
        ) from None
    return KnownNode(x=x, y=y, row=row, col=col)


def _register_group(ds_path: Path, group: str, request: GridRequest) -> tuple[Registration, Path]:
    group_dir = ds_path / "tiles_stitched" / group
    mask_path = _first_existing(group_dir, MASK_NAMES)
    if mask_path is None:
        raise DatasetError(f"{group_dir}: no {' / '.join(MASK_NAMES)}")
    source_path = _first_existing(ds_path / "source_norm" / group, SOURCE_NAMES)
    out_dir = ds_path / "am_coords" / group
    registration, _ = _register_files(mask_path, source_path, out_dir, request)
    return registration, out_dir


def _register_files(
    mask_path: Path, image_path: Path | None, out_dir: Path, request: GridRequest
) -> tuple[Registration, dict[str, Path]]:
    from model.register.request import register_into

    source = to_grayscale(read_image(image_path)) if image_path is not None else None
    return register_into(out_dir, _read_mask(mask_path), request, source)


def _read_mask(path: Path) -> np.ndarray:
    """Foreground = above half the mask's maximum, so 0/1, 0/255 and soft masks all work."""
    gray = to_grayscale(read_image(path))
    return gray > float(gray.max()) / 2.0


def _first_existing(directory: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    return None


def _print_summary(console: Console, name: str, registration: Registration, out_dir: Path) -> None:
    qc = registration.qc
    pitch_y, pitch_x = qc["pitch_px"]
    console.print(
        f"[bold]{escape(name)}[/]: {qc['found']}/{qc['expected']} marks "
        f"({qc['missing']} missing, {qc['extra']} extra), "
        f"angle {qc['angle_deg']:+.2f}°, pitch {pitch_y:.1f} x {pitch_x:.1f} px, "
        f"shear {qc['shear']:+.3f}, residual {qc['residual_rms_px']:.1f} px "
        f"-> {escape(str(out_dir))}"
    )
    if "acquisition" in qc:
        joined = qc["acquisition"]
        console.print(
            f"  {joined['marks_with_spectrum']} marks joined to spectra of "
            f"{escape(joined['file'])} ({joined['spectra']} spectra)"
        )
    for warning in qc["warnings"]:
        console.print(f"  [yellow]warning:[/] {escape(warning)}")
