"""Options `amseg register` and `amseg segment` share: the acquisition's imzML and how it lies
on the image, and the exports for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from model.errors import ParameterError

if TYPE_CHECKING:
    from model.register.acquisition import Acquisition

ImzmlOption = Annotated[
    Path | None,
    typer.Option(
        "--imzml",
        help="The acquisition's imzML (the .ibd is not needed): ams.csv gets a spectrum column "
        "(the 0-based index of the spectrum shot at each mark's node, x = col + 1, "
        "y = row + 1), and rows/cols default to its extent.",
        show_default=False,
    ),
]
FlipXOption = Annotated[
    bool, typer.Option("--flip-x", help="With --imzml: its x runs right to left on the image.")
]
FlipYOption = Annotated[
    bool, typer.Option("--flip-y", help="With --imzml: its y runs bottom to top on the image.")
]
TransposeOption = Annotated[
    bool,
    typer.Option(
        "--transpose", help="With --imzml: its x runs down the image's rows (applied first)."
    ),
]
TiffOption = Annotated[
    bool,
    typer.Option(
        "--tiff",
        help="Also write am_coordinates.tiff (32-bit ids; napari opens it as labels). Grids "
        "over 65 535 nodes always get it instead of the PNG.",
    ),
]
GeojsonOption = Annotated[
    bool,
    typer.Option(
        "--geojson",
        help="Also write marks.geojson: one polygon per mark (id, row, col, spectrum), "
        "in pixel coordinates, as QuPath imports it.",
    ),
]


def load_acquisition(
    imzml: Path | None, flip_x: bool, flip_y: bool, transpose: bool
) -> Acquisition | None:
    """The imzML's positions, oriented; None without --imzml (orientation flags need it)."""
    if imzml is None:
        if flip_x or flip_y or transpose:
            raise ParameterError(
                "--flip-x, --flip-y and --transpose orient an imzML: give --imzml too"
            )
        return None
    from model.register.acquisition import Orientation, read_imzml

    return read_imzml(imzml, Orientation(flip_x=flip_x, flip_y=flip_y, transpose=transpose))


def check_grid_given(rows: int | None, cols: int | None, imzml: Path | None) -> None:
    """Both rows and cols, or neither with an imzML to take them from."""
    if (rows is None) != (cols is None):
        raise ParameterError("give both --rows and --cols (or neither, with --imzml)")
    if rows is None and imzml is None:
        raise ParameterError(
            "give the acquisition grid with --rows R --cols C, or --imzml to read it from"
        )
