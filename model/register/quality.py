"""The QC figures of a registration: marks found and missing, lattice geometry, residual, and
the warnings a user should read before trusting the ids."""

from __future__ import annotations

import numpy as np

from model.register.lattice import TESTED_ANGLE, Lattice
from model.register.records import KnownNode, MarkRecord

HIGH_RESIDUAL = 0.15
"""Residual RMS above this fraction of the pitch is reported as a distorted lattice."""


def measure_quality(
    *,
    rows: int,
    cols: int,
    marks: list[MarkRecord],
    lattice: Lattice,
    residual_rms: float,
    extra_components: int,
    specks: int,
    merged_fragments: int,
    split_components: int,
    anchor_note: str | None,
    outside: int,
    known_node: KnownNode | None = None,
) -> dict:
    """The QC figures that qc.json holds, warnings included (JSON-serialisable as they are)."""
    expected = rows * cols
    found_ids = np.array([m.id for m in marks], dtype=np.int64)
    present = np.zeros(expected + 1, dtype=bool)
    present[found_ids] = True
    missing = (np.flatnonzero(~present[1:]) + 1).tolist()
    a_x, a_y = lattice.a_x, lattice.a_y
    pitch_x, pitch_y = float(np.hypot(*a_x)), float(np.hypot(*a_y))
    # Angle of the rows in image coordinates (y down): positive turns them clockwise on
    # screen, the convention of model.synth.
    angle = float(np.degrees(np.arctan2(a_x[1], a_x[0])))
    row_shift = float(np.dot(lattice.shift, a_x) / pitch_x)
    cross = float(a_x[0] * a_y[1] - a_x[1] * a_y[0])
    shear = float(np.dot(a_x, a_y) / cross) if cross else 0.0

    warnings: list[str] = []
    if len(marks) < 0.9 * expected:
        warnings.append(
            f"only {len(marks)} of {expected} grid positions have a mark "
            f"({100 * len(marks) / expected:.1f} %)"
        )
    if anchor_note:
        warnings.append(anchor_note)
    if rows > 1 and cols > 1 and len(marks):
        used_rows = max(m.row for m in marks) - min(m.row for m in marks) + 1
        used_cols = max(m.col for m in marks) - min(m.col for m in marks) + 1
        if used_rows < rows or used_cols < cols:
            warnings.append(
                f"the marks span only {used_rows} of {rows} rows and {used_cols} of {cols} "
                "columns: the grid is larger than the marked area"
            )
    if outside:
        warnings.append(
            f"{outside} mark-like objects near lattice nodes got no id (outside the "
            f"{rows}x{cols} grid, or a second object at an occupied node)"
        )
    if residual_rms > HIGH_RESIDUAL * lattice.pitch:
        warnings.append(
            f"high residual {residual_rms:.1f} px ({100 * residual_rms / lattice.pitch:.0f} % of "
            "the pitch): the grid may be distorted"
        )
    if abs(angle) > TESTED_ANGLE:
        warnings.append(f"rotation {angle:.1f}° is beyond the tested ±{TESTED_ANGLE:.0f}°")
    return {
        "rows": rows,
        "cols": cols,
        "expected": expected,
        "found": len(marks),
        "missing_ids": missing,
        "extra_components": extra_components,
        "specks": specks,
        "merged_fragments": merged_fragments,
        "split_components": split_components,
        "angle_deg": round(angle, 4),
        "pitch_px": [round(pitch_y, 3), round(pitch_x, 3)],
        "shear": round(shear, 5),
        "row_shift_px": round(row_shift, 3),
        "residual_rms_px": round(residual_rms, 3),
        "warnings": warnings,
        "ambiguous_anchor": anchor_note is not None,
        "known_node": _known(known_node),
    }


def _known(node: KnownNode | None) -> dict | None:
    """The known node as plain JSON numbers (callers may pass numpy scalars)."""
    if node is None:
        return None
    return {"x": float(node.x), "y": float(node.y), "row": int(node.row), "col": int(node.col)}
