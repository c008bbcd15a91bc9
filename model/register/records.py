"""What a registration hands back (the label image, one record per registered mark, QC figures),
and the limits a grid must keep: ids a label image holds, pixels a node needs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.errors import RegistrationError

MAX_PNG_ID = 65535
"""Largest id a 16-bit PNG holds: grids up to this many nodes keep am_coordinates.png."""

MAX_ID = 2**32 - 1
"""Largest id a uint32 label image (TIFF) holds, so rows * cols may not exceed it."""


MIN_PITCH_PX = 3
"""Marks closer together than this cannot be told apart: a grid needs this many pixels a node."""


def id_dtype(rows: int, cols: int) -> type[np.unsignedinteger]:
    """The label image's type for a rows x cols grid: uint16 while its ids fit, else uint32."""
    return np.uint16 if rows * cols <= MAX_PNG_ID else np.uint32


def check_grid_fits(rows: int, cols: int, *, width: int, height: int) -> None:
    """Raises RegistrationError when an image of width x height px cannot hold the grid: a
    node needs MIN_PITCH_PX x MIN_PITCH_PX pixels (whatever the grid's rotation)."""
    if rows * cols * MIN_PITCH_PX**2 > width * height:
        raise RegistrationError(grid_too_large(rows, cols, width=width, height=height))


def grid_too_large(rows: int, cols: int, *, width: int, height: int) -> str:
    """Why a rows x cols grid does not fit a width x height px image, and what to check."""
    positions = f"{rows * cols:,}".replace(",", " ")
    most = f"{width * height // MIN_PITCH_PX**2:,}".replace(",", " ")
    return (
        f"the grid has {rows} x {cols} = {positions} positions, more than a {width} x {height} "
        f"px image can hold ({most}, marks at least {MIN_PITCH_PX} px apart): check rows and "
        "columns"
    )


@dataclass(frozen=True)
class MarkRecord:
    """One registered mark: x, y = pixel centroid, bbox = (x0, y0, x1, y1) with x1, y1 exclusive;
    spectrum = the 0-based index in the imzML of the spectrum shot at its node (None: no
    acquisition joined, or no spectrum there)."""

    id: int
    row: int
    col: int
    x: float
    y: float
    area: int
    bbox: tuple[int, int, int, int]
    spectrum: int | None = None


@dataclass(frozen=True)
class KnownNode:
    """A mark whose grid place a person knows: its pixel position (x, y) in the image and its
    row and column (0-based, as in ams.csv). Registration anchors the grid there."""

    x: float
    y: float
    row: int
    col: int


@dataclass
class Registration:
    """Label image (uint16, or uint32 past 65 535 grid nodes; 0 = background), the registered
    marks sorted by id, and QC figures."""

    labels: np.ndarray
    marks: list[MarkRecord]
    qc: dict
