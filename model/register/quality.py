"""The QC figures of a registration: marks found and missing, objects without an id, lattice
geometry, residual, and the warnings a user should read before trusting the ids.

Every count a person sees comes from here (qc.json, the task summary, the CLI), each with one
meaning: `found` marks carry an id, `missing` grid positions have no mark, `extra` mark-sized
objects got no id, `small_objects` smaller ones got none (dust, crumbs), `specks` are the
tiny components set aside before anything else. Rows and columns are counted from 0, as in
ams.csv."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.register.lattice import TESTED_ANGLE, Lattice
from model.register.records import KnownNode, MarkRecord

HIGH_RESIDUAL = 0.15
"""Residual RMS above this fraction of the pitch is reported as a distorted lattice."""

LISTED = 4
"""Empty rows or columns named one by one in a warning; more are counted."""


@dataclass(frozen=True)
class Unnumbered:
    """The objects of the mask that got no id."""

    extra: int  # mark-sized objects (at least MARK_LIKE_AREA of a mark)
    near_nodes: int  # of those, the ones at a lattice node (off the grid, or a node taken)
    small: int  # smaller objects that joined no mark (dust, crumbs); specks not included
    specks: int  # components below SPECK_FRACTION of the typical one, set aside first


def measure_quality(
    *,
    rows: int,
    cols: int,
    marks: list[MarkRecord],
    lattice: Lattice,
    residual_rms: float,
    unnumbered: Unnumbered,
    merged_fragments: int,
    split_components: int,
    anchor_note: str | None,
    known_node: KnownNode | None = None,
    acquired: np.ndarray | None = None,
) -> dict:
    """The QC figures that qc.json holds, warnings included (JSON-serialisable as they are).

    `acquired` (bool per node, id - 1), from an imzML: the nodes a spectrum was shot at. The
    warnings then judge coverage and empty rows or columns against those nodes only, since
    nodes outside the region of interest were never shot."""
    expected = rows * cols
    present = np.zeros(expected + 1, dtype=bool)
    present[np.array([m.id for m in marks], dtype=np.int64)] = True
    missing = (np.flatnonzero(~present[1:]) + 1).tolist()
    per_node = present[1:].reshape(rows, cols)
    empty_rows = np.flatnonzero(~per_node.any(axis=1)).tolist()
    empty_cols = np.flatnonzero(~per_node.any(axis=0)).tolist()
    geometry = _geometry(lattice)
    shot = np.ones((rows, cols), bool) if acquired is None else acquired.reshape(rows, cols)

    warnings: list[str] = []
    warnings += _coverage(len(marks), int(np.count_nonzero(shot)), acquired is not None)
    if anchor_note:
        warnings.append(anchor_note)
    shot_rows, shot_cols = np.flatnonzero(shot.any(axis=1)), np.flatnonzero(shot.any(axis=0))
    warnings += _empty_inside(empty_rows, rows, cols, "row", shot_rows)
    warnings += _empty_inside(empty_cols, cols, rows, "column", shot_cols)
    warnings += _span(marks, _extent(shot_rows), _extent(shot_cols), acquired is not None)
    if unnumbered.extra:
        warnings.append(_extra_warning(unnumbered, rows, cols))
    if residual_rms > HIGH_RESIDUAL * lattice.pitch:
        warnings.append(
            f"high residual {residual_rms:.1f} px ({100 * residual_rms / lattice.pitch:.0f} % of "
            "the pitch): the grid may be distorted"
        )
    if abs(geometry["angle_deg"]) > TESTED_ANGLE:
        warnings.append(
            f"rotation {geometry['angle_deg']:.1f}° is beyond the tested ±{TESTED_ANGLE:.0f}°"
        )
    return {
        "rows": rows,
        "cols": cols,
        "expected": expected,
        "found": len(marks),
        "missing": len(missing),
        "missing_ids": missing,
        "extra": unnumbered.extra,
        "small_objects": unnumbered.small,
        "specks": unnumbered.specks,
        "merged_fragments": merged_fragments,
        "split_components": split_components,
        "empty_rows": empty_rows,
        "empty_cols": empty_cols,
        **geometry,
        "residual_rms_px": round(residual_rms, 3),
        "warnings": warnings,
        "ambiguous_anchor": anchor_note is not None,
        "known_node": _known(known_node),
    }


def _coverage(found: int, shot: int, from_acquisition: bool) -> list[str]:
    """Fewer than 90 % of the positions (shot ones, with an acquisition) carry a mark."""
    if shot == 0 or found >= 0.9 * shot:
        return []
    positions = "positions with a spectrum" if from_acquisition else "grid positions"
    return [f"only {found} of {shot} {positions} have a mark ({100 * found / shot:.1f} %)"]


def _extent(indices: np.ndarray) -> int:
    return int(indices[-1] - indices[0] + 1) if indices.size else 0


def _span(marks: list[MarkRecord], rows: int, cols: int, from_acquisition: bool) -> list[str]:
    """The marks span fewer rows or columns than the grid (than the acquisition, with one)."""
    if rows <= 1 or cols <= 1 or not marks:
        return []
    used_rows = max(m.row for m in marks) - min(m.row for m in marks) + 1
    used_cols = max(m.col for m in marks) - min(m.col for m in marks) + 1
    if used_rows >= rows and used_cols >= cols:
        return []
    larger = "the acquisition is" if from_acquisition else "the grid is"
    return [
        f"the marks span only {used_rows} of {rows} rows and {used_cols} of {cols} "
        f"columns: {larger} larger than the marked area"
    ]


def _geometry(lattice: Lattice) -> dict:
    """Rotation, pitches (row, column), shear and serpentine row shift of the lattice."""
    a_x, a_y = lattice.a_x, lattice.a_y
    pitch_x, pitch_y = float(np.hypot(*a_x)), float(np.hypot(*a_y))
    # Angle of the rows in image coordinates (y down): positive turns them clockwise on
    # screen, the convention of model.synth.
    angle = float(np.degrees(np.arctan2(a_x[1], a_x[0])))
    cross = float(a_x[0] * a_y[1] - a_x[1] * a_y[0])
    return {
        "angle_deg": round(angle, 4),
        "pitch_px": [round(pitch_y, 3), round(pitch_x, 3)],
        "shear": round(float(np.dot(a_x, a_y) / cross) if cross else 0.0, 5),
        "row_shift_px": round(float(np.dot(lattice.shift, a_x) / pitch_x), 3),
    }


def _empty_inside(
    empty: list[int], count: int, across: int, what: str, shot: np.ndarray
) -> list[str]:
    """A strong warning for rows (or columns) without marks between rows that have some: a
    wrong grid size or an uneven step seen as a row more often makes one than a row not shot.
    Empty rows at the edges are the span warning's; rows never shot (`shot` lists the others)
    are no one's."""
    occupied = np.setdiff1d(np.arange(count), empty)
    if occupied.size == 0:
        return []
    inside = [k for k in empty if occupied[0] < k < occupied[-1] and k in shot]
    if not inside:
        return []
    named = ", ".join(str(k) for k in inside[:LISTED])
    if len(inside) > LISTED:
        named += f" and {len(inside) - LISTED} more"
    first = inside[0]
    if what == "row":
        ids = f"ids {first * across + 1} to {(first + 1) * across}"
    else:
        ids = f"ids {first + 1}, {first + 1 + count}, …"
    subject = f"{what} {named} has" if len(inside) == 1 else f"{what}s {named} have"
    return [
        f"{subject} no marks, but {what}s on both sides do ({what}s counted from 0, as in "
        f"ams.csv: {what} {first} = {ids}): are rows/cols right? Check the overlay"
    ]


def _extra_warning(unnumbered: Unnumbered, rows: int, cols: int) -> str:
    """Why mark-sized objects got no id: at a node (off the grid, or a node already taken) or
    between the nodes (dust or debris the size of a mark)."""
    between = unnumbered.extra - unnumbered.near_nodes
    where = []
    if unnumbered.near_nodes:
        where.append(
            f"{unnumbered.near_nodes} at lattice nodes outside the {rows}x{cols} grid or at a "
            "node already taken"
        )
    if between:
        where.append(f"{between} between the nodes")
    objects = "object" if unnumbered.extra == 1 else "objects"
    return f"{unnumbered.extra} mark-sized {objects} got no id: {', '.join(where)}"


def _known(node: KnownNode | None) -> dict | None:
    """The known node as plain JSON numbers (callers may pass numpy scalars)."""
    if node is None:
        return None
    return {"x": float(node.x), "y": float(node.y), "row": int(node.row), "col": int(node.col)}
