"""One registration as the CLI, the dataset pipeline and the worker ask for it: the grid (given,
or the imzML's), a known mark, the acquisition to join, the extra exports; and running it into
a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.register.acquisition import Acquisition, AcquisitionError, grid_of
from model.register.records import KnownNode, Registration


@dataclass(frozen=True)
class GridRequest:
    """Number the marks on rows x cols (both None: the acquisition's extent), pinning
    `known_node`, joining `acquisition`; write the 32-bit TIFF (`tiff`) and marks.geojson
    (`geojson`) besides the usual outputs."""

    rows: int | None = None
    cols: int | None = None
    known_node: KnownNode | None = None
    acquisition: Acquisition | None = None
    tiff: bool = False
    geojson: bool = False

    def grid(self) -> tuple[int, int]:
        """rows, cols to number on; raises AcquisitionError without a grid or an imzML."""
        grid = grid_of(self.rows, self.cols, self.acquisition)
        if grid is None:
            raise AcquisitionError("give the grid's rows and cols, or an imzML to take them from")
        return grid


def register_into(
    out_dir: Path, mask: np.ndarray, request: GridRequest, source: np.ndarray | None = None
) -> tuple[Registration, dict[str, Path]]:
    """Register `mask` as `request` says and write the results into `out_dir` (the overlay
    over `source`); the registration and the paths written (writers.write_registration)."""
    # Imported here: registration needs scipy and OpenCV, which a CLI need not load to start.
    from model.register.registration import register_marks
    from model.register.writers import write_registration

    rows, cols = request.grid()
    registration = register_marks(
        mask, rows, cols, known_node=request.known_node, acquisition=request.acquisition
    )
    written = write_registration(
        out_dir, registration, source, tiff=request.tiff, geojson=request.geojson
    )
    return registration, written
