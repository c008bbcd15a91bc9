"""Number ablation marks by their place on the acquisition grid (id = row * cols + col + 1).

A lattice is fitted to the mark centroids (no image warps), then whole components are painted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.errors import RegistrationError
from model.register.acquisition import Acquisition, acquisition_qc, with_spectra
from model.register.assignment import anchor, anchor_at, assign
from model.register.fit import choose_lattice
from model.register.labels import mark_records, paint
from model.register.lattice import MATCH_CUTOFF, Lattice, refit
from model.register.leftovers import absorb_leftovers
from model.register.marks import (
    MARK_LIKE_AREA,
    FoundMarks,
    Units,
    find_marks,
    node_area,
    well_shaped,
)
from model.register.quality import Unnumbered, measure_quality
from model.register.records import (
    MAX_ID,
    KnownNode,
    MarkRecord,
    Registration,
    check_grid_fits,
    id_dtype,
)
from model.register.touching import split_touching


def register_marks(
    mask: np.ndarray,
    rows: int,
    cols: int,
    known_node: KnownNode | None = None,
    acquisition: Acquisition | None = None,
) -> Registration:
    """Find the marks in a binary mask and number them on a rows x cols acquisition grid.

    `mask` may be bool, 0/1 or 0/255 (float masks are thresholded at 0.5). The grid is placed
    on the window of the lattice that holds the most marks, or, with `known_node`, so that the
    node at that pixel position gets that row and column. With `acquisition` (an imzML's
    positions) every mark gets the spectrum shot at its node and qc.json an `acquisition`
    record. Raises RegistrationError for an impossible grid or one the image cannot hold, an
    empty mask, fewer than 4 marks, a known node off the grid or away from every node, or
    too little memory; AcquisitionError for an acquisition outside the grid.
    """
    _check_grid(rows, cols, np.shape(mask))
    node_spectrum = None if acquisition is None else acquisition.node_spectra(rows, cols)
    try:
        return _register(mask, rows, cols, known_node, acquisition, node_spectrum)
    except MemoryError:
        height, width = np.shape(mask)[:2]
        raise RegistrationError(
            f"not enough memory to number a {rows} x {cols} grid on a {width} x {height} px "
            "mask: free memory, or register the slide in parts"
        ) from None


def _register(
    mask: np.ndarray,
    rows: int,
    cols: int,
    known_node: KnownNode | None,
    acquisition: Acquisition | None,
    node_spectrum: np.ndarray | None,
) -> Registration:
    found = find_marks(mask)
    clusters = found.clusters
    lattice = choose_lattice(clusters.centroid[well_shaped(clusters)], found.spacing, rows, cols)
    # The area of one whole mark: all clusters at a node summed (unmerged fragments included).
    mark_area = node_area(clusters, lattice)

    units, unit_components, split_count = split_touching(
        clusters, found.cluster_of, found.kept, found.components, lattice, mark_area
    )
    numbering = _number_units(units, lattice, rows, cols, mark_area, known_node)
    unit_id = numbering.unit_id
    labels = paint(
        found.components, found.count, unit_components, units, unit_id, id_dtype(rows, cols)
    )
    marks = mark_records(units, unit_id, cols)
    residual_rms = _refit_to_marks(lattice, marks, numbering.r0, numbering.c0)
    if node_spectrum is not None:
        marks = with_spectra(marks, node_spectrum)

    qc = measure_quality(
        rows=rows,
        cols=cols,
        marks=marks,
        lattice=lattice,
        residual_rms=residual_rms,
        unnumbered=_unnumbered(units, numbering, mark_area, found),
        merged_fragments=int(found.kept.size - clusters.area.size + numbering.absorbed),
        split_components=split_count,
        anchor_note=numbering.anchor_note,
        known_node=known_node,
        acquired=None if node_spectrum is None else node_spectrum >= 0,
    )
    if acquisition is not None:
        qc["acquisition"], warnings = acquisition_qc(acquisition, marks, rows, cols)
        qc["warnings"] += warnings
    return Registration(labels=labels, marks=marks, qc=qc)


@dataclass
class _Numbering:
    """Where the grid lies on the lattice, and the id each unit got."""

    unit_id: np.ndarray  # (n,) row * cols + col + 1 per unit, 0 = no id
    r0: int  # lattice row and column of grid node (0, 0)
    c0: int
    anchor_note: str | None  # why the anchoring is ambiguous, None when it is not
    absorbed: int  # leftover pieces that joined a mark
    outside: int  # mark-like units near a node that got no id


def _number_units(
    units: Units,
    lattice: Lattice,
    rows: int,
    cols: int,
    mark_area: float,
    known_node: KnownNode | None,
) -> _Numbering:
    """Anchor the grid on the lattice (at the known node when there is one), match units to its
    nodes one to one, then let the pieces left over join the marks they belong to."""
    frac = lattice.fractional(units.centroid)
    nearest = np.rint(frac)
    offset = np.hypot(*(units.centroid - lattice.position(nearest)).T)
    near_node = offset < MATCH_CUTOFF * lattice.pitch

    # Anchor: the rows x cols window over the occupied nodes that holds the most marks.
    mark_like = near_node & (units.area >= MARK_LIKE_AREA * mark_area)
    if known_node is None:
        r0, c0, anchor_note = anchor(nearest[mark_like], nearest[near_node], rows, cols)
    else:
        (r0, c0), anchor_note = anchor_at(known_node, lattice, rows, cols), None

    node_of_unit = assign(units.centroid, frac, lattice, r0, c0, rows, cols)
    node_of_unit, absorbed = absorb_leftovers(
        units, node_of_unit, frac, lattice, r0, c0, rows, cols, mark_area
    )
    unit_id = np.where(node_of_unit >= 0, node_of_unit + 1, 0).astype(np.int64)
    outside = int(np.count_nonzero(mark_like) - np.count_nonzero(unit_id[mark_like] > 0))
    return _Numbering(unit_id, r0, c0, anchor_note, absorbed, outside)


def _unnumbered(
    units: Units, numbering: _Numbering, mark_area: float, found: FoundMarks
) -> Unnumbered:
    """Count the objects that got no id: mark-sized ones, smaller ones, and the specks."""
    live = np.isfinite(units.centroid).all(axis=1)  # split clusters live on as their parts
    without = live & (numbering.unit_id == 0)
    mark_like = units.area >= MARK_LIKE_AREA * mark_area
    return Unnumbered(
        extra=int(np.count_nonzero(without & mark_like)),
        near_nodes=numbering.outside,
        small=int(np.count_nonzero(without & ~mark_like)),
        specks=int(found.areas.size - found.kept.size),
    )


def _refit_to_marks(lattice: Lattice, marks: list[MarkRecord], r0: int, c0: int) -> float:
    """Renumber the lattice from grid node (0, 0) and refit it to the whole marks (fragments
    pooled); returns the RMS residual (pixels) of the marks against their grid positions."""
    mark_xy = np.array([(m.x, m.y) for m in marks], dtype=np.float64).reshape(-1, 2)
    mark_ji = np.array([(m.col, m.row) for m in marks], dtype=np.float64).reshape(-1, 2)
    lattice.reindexed(c0, r0)
    refit(lattice, mark_ji, mark_xy)
    residual = mark_xy - lattice.position(mark_ji)
    return float(np.sqrt(np.mean(np.sum(residual**2, axis=1)))) if len(marks) else 0.0


def _check_grid(rows: int, cols: int, shape: tuple[int, ...]) -> None:
    if int(rows) != rows or int(cols) != cols or rows < 1 or cols < 1:
        raise RegistrationError(f"the grid needs at least 1 row and 1 column, got {rows}x{cols}")
    if rows * cols > MAX_ID:
        raise RegistrationError(
            f"a {rows}x{cols} grid has {rows * cols} positions, more than the {MAX_ID} that "
            "32-bit label images can number"
        )
    if len(shape) == 2:  # other shapes are find_marks' error
        check_grid_fits(rows, cols, width=shape[1], height=shape[0])
