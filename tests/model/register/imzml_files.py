"""Small imzML files written with pyimzML's own writer, for the join tests: positions in the
order an instrument shoots them (serpentine, skipping nodes, mirrored), without the .ibd."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pyimzml.ImzMLWriter import ImzMLWriter


def write_imzml(
    path: Path, positions: Iterable[tuple[int, int]], *, keep_ibd: bool = False
) -> Path:
    """An imzML whose spectrum k was shot at positions[k] = (x, y), from 1; the .ibd binary
    is removed unless `keep_ibd`, since the join must not need it."""
    path = Path(path)
    mzs, intensities = np.array([100.0, 200.0]), np.array([1.0, 2.0], np.float32)
    with ImzMLWriter(str(path), mode="continuous") as writer:
        for x, y in positions:
            writer.addSpectrum(mzs, intensities, (int(x), int(y), 1))
    if not keep_ibd:
        path.with_suffix(".ibd").unlink()
    return path


def serpentine(rows: int, cols: int, skip: Iterable[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """(x, y) of a serpentine raster over rows x cols nodes (odd rows right to left), from 1,
    without the (row, col) nodes in `skip`."""
    skipped = set(skip)
    order = []
    for row in range(rows):
        cols_in_order = range(cols) if row % 2 == 0 else range(cols - 1, -1, -1)
        order += [(col + 1, row + 1) for col in cols_in_order if (row, col) not in skipped]
    return order
