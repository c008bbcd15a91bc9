"""The variety of slides `random_spec` draws: grid placements, mark shapes, matrix styles,
irregularities and imaging, each with the shares met in real data.

Every draw comes from one generator in a fixed order, so a seed always gives the same spec;
a new kind of slide must not add draws to the default path.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from model.synth.spec import (
    BACKGROUNDS,
    BIT_DEPTHS,
    MAX_MARKS,
    SHAPES,
    STYLES,
    SlideSpec,
    SynthSpecError,
    check_grid_size,
    validate_spec,
)

_BACKGROUND_WEIGHTS = (0.5, 0.35, 0.15)
_SHAPE_WEIGHTS = (0.55, 0.12, 0.1, 0.1, 0.13)


def random_spec(
    seed: int,
    *,
    height: int = 1024,
    width: int = 1024,
    rows: int | None = None,
    cols: int | None = None,
    mark_size: float | None = None,
    bit_depth: int | None = None,
    low_contrast_fraction: float = 0.25,
    background: str | None = None,
    style: str | None = None,
    **overrides: object,
) -> SlideSpec:
    """Draw a varied, realistic slide spec; given sizes are respected, `overrides` win last.

    Without rows/cols the grid is sized from the pitch to overflow the image (partial marks
    on the border), sit inside it with a margin, or cover only part of it (an empty area
    like the edge of an acquisition region). With rows/cols the pitch is chosen so that the
    grid roughly spans the image, unless a given mark size forbids it.
    `low_contrast_fraction` is the chance of faint marks on a mid-grey matrix (the hardest
    slides; raise it to make training sets richer in them). `background` fixes the matrix
    style (one of BACKGROUNDS) instead of drawing it, e.g. "mottled" for the hardest matrix.
    `style` (one of STYLES) turns a slide into one of the opt-in kinds, drawn after all the
    rest (whose draws it leaves alone), and wins over `background` and the faint slides.
    """
    _check_request(height, width, rows, cols, bit_depth, low_contrast_fraction, background)
    if style is not None and style not in STYLES:
        raise SynthSpecError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    rng = np.random.default_rng(seed)
    values = _draw_grid(rng, height, width, rows, cols, mark_size)
    values["shape"] = str(rng.choice(SHAPES, p=_SHAPE_WEIGHTS))
    values["polarity"] = "dark" if rng.random() < 0.15 else "bright"
    low_contrast = rng.random() < low_contrast_fraction
    if bit_depth is None:
        bit_depth = 16 if rng.random() < 0.3 else 8
    values["bit_depth"] = int(bit_depth)
    values.update(_draw_missing_lines(rng, values["rows"], values["cols"]))
    values["mark_angle_deg"] = _draw_mark_angle(rng)
    matrix = str(rng.choice(BACKGROUNDS, p=_BACKGROUND_WEIGHTS))  # drawn always: same stream
    matrix = background or matrix
    values.update(_draw_matrix(rng, matrix, low_contrast))
    values.update(_draw_scale_of_detail(rng, values["mark_size"]))
    values.update(_draw_double_marks(rng, values["cols"]))
    values.update(_draw_details(rng, matrix, values["pitch_x"], values["pitch_y"]))
    if style is not None:
        values.update(_STYLE_DRAWS[style](rng, values["mark_size"]))
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SlideSpec)}
    if unknown:
        raise SynthSpecError(f"unknown slide setting(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    spec = SlideSpec(**values)  # type: ignore[arg-type]
    validate_spec(spec)
    return spec


def _check_request(
    height: int,
    width: int,
    rows: int | None,
    cols: int | None,
    bit_depth: int | None,
    low_contrast_fraction: float,
    background: str | None,
) -> None:
    if height < 1 or width < 1:
        raise SynthSpecError(f"slide size must be positive, got {width}x{height}")
    if rows is not None and cols is not None:
        check_grid_size(rows, cols)
    if bit_depth is not None and bit_depth not in BIT_DEPTHS:
        raise SynthSpecError(f"bit depth must be 8 or 16, got {bit_depth}")
    if not 0.0 <= low_contrast_fraction <= 1.0:
        raise SynthSpecError(f"low-contrast fraction must be in 0..1, got {low_contrast_fraction}")
    if background is not None and background not in BACKGROUNDS:
        raise SynthSpecError(
            f"unknown background {background!r}; choose one of {', '.join(BACKGROUNDS)}"
        )


def _maybe(rng: np.random.Generator, probability: float, low: float, high: float) -> float:
    """Uniform in low..high with the given probability, else 0."""
    return float(rng.uniform(low, high)) if rng.random() < probability else 0.0


def _draw_grid(
    rng: np.random.Generator,
    height: int,
    width: int,
    rows: int | None,
    cols: int | None,
    mark_size: float | None,
) -> dict[str, Any]:
    """Size, rows, cols, pitch, rotation, shear and origin of the acquisition grid."""
    if mark_size is None:
        # Log-uniform over the range met in practice, most often 15..40 px.
        drawn_size = float(np.exp(rng.uniform(np.log(9.0), np.log(55.0))))
    else:
        drawn_size = float(mark_size)
    pitch_ratio = rng.uniform(1.6, 3.3)
    pitch_x = drawn_size * pitch_ratio
    pitch_y = pitch_x * rng.uniform(0.85, 1.2)
    angle = float(np.clip(rng.normal(0.0, 3.5), -10.0, 10.0))
    if rng.random() < 0.15:
        angle = float(rng.uniform(-10.0, 10.0))
    shear = float(rng.uniform(-0.03, 0.03))

    placement = str(rng.choice(["overflow", "inside", "partial"], p=[0.5, 0.3, 0.2]))
    if rows is not None and cols is not None:
        # Fit the pitch to the image so the grid spans most of it.
        coverage = rng.uniform(0.75, 1.08)
        pitch_x = coverage * width / max(cols, 1)
        pitch_y = coverage * height / max(rows, 1) * rng.uniform(0.97, 1.03)
        if mark_size is None:
            drawn_size = float(np.clip(min(pitch_x, pitch_y) / pitch_ratio, 8.0, 60.0))
        # Marks must not overlap wholesale; the grid then grows beyond the image.
        pitch_x = max(pitch_x, 1.3 * drawn_size)
        pitch_y = max(pitch_y, 1.3 * drawn_size)
        span_y, span_x = (rows - 1) * pitch_y, (cols - 1) * pitch_x
        origin_y = (height - span_y) / 2 + rng.normal(0.0, 0.1 * pitch_y)
        origin_x = (width - span_x) / 2 + rng.normal(0.0, 0.1 * pitch_x)
    else:
        fit_rows, fit_cols, origin_y, origin_x = _place_free_grid(
            rng, placement, height, width, pitch_y, pitch_x
        )
        rows = rows if rows is not None else fit_rows
        cols = cols if cols is not None else fit_cols
        while rows * cols > MAX_MARKS:
            # Only possible for tiny marks on huge slides: keep the aspect, shrink the grid.
            rows, cols = max(1, int(rows * 0.95)), max(1, int(cols * 0.95))
        check_grid_size(rows, cols)
    return {
        "height": int(height),
        "width": int(width),
        "rows": int(rows),
        "cols": int(cols),
        "pitch_y": float(pitch_y),
        "pitch_x": float(pitch_x),
        "angle_deg": angle,
        "shear": shear,
        "origin_y": float(origin_y),
        "origin_x": float(origin_x),
        "mark_size": drawn_size,
    }


def _place_free_grid(
    rng: np.random.Generator,
    placement: str,
    height: int,
    width: int,
    pitch_y: float,
    pitch_x: float,
) -> tuple[int, int, float, float]:
    """Rows, cols and origin (y, x) of a grid of the given pitch placed on the image:
    overflowing it, inside it with a margin, or covering only part of it."""
    if placement == "overflow":
        fit_rows = math.ceil(height / pitch_y) + int(rng.integers(1, 3))
        fit_cols = math.ceil(width / pitch_x) + int(rng.integers(1, 3))
        origin_y = -rng.uniform(0.0, 1.0) * pitch_y
        origin_x = -rng.uniform(0.0, 1.0) * pitch_x
    elif placement == "inside":
        margin_y = rng.uniform(0.3, 1.5) * pitch_y
        margin_x = rng.uniform(0.3, 1.5) * pitch_x
        fit_rows = max(1, int((height - 2 * margin_y) // pitch_y) + 1)
        fit_cols = max(1, int((width - 2 * margin_x) // pitch_x) + 1)
        origin_y = (height - (fit_rows - 1) * pitch_y) / 2
        origin_x = (width - (fit_cols - 1) * pitch_x) / 2
    else:
        # Marks only on one side (like the right half of source_small.png).
        covered = rng.uniform(0.35, 0.75)
        fit_rows = math.ceil(height / pitch_y) + 1
        fit_cols = max(1, math.ceil(covered * width / pitch_x))
        origin_y = -rng.uniform(0.0, 1.0) * pitch_y
        if rng.random() < 0.5:
            origin_x = width - (fit_cols - 1) * pitch_x - rng.uniform(0.2, 0.6) * pitch_x
        else:
            origin_x = rng.uniform(0.2, 0.6) * pitch_x
    return fit_rows, fit_cols, origin_y, origin_x


def _draw_missing_lines(rng: np.random.Generator, rows: int, cols: int) -> dict[str, Any]:
    """Whole rows and columns of the grid left out (a skipped line of the acquisition)."""
    missing_rows: tuple[int, ...] = ()
    missing_cols: tuple[int, ...] = ()
    if rng.random() < 0.3 and rows > 2:
        count = int(rng.integers(1, min(3, rows - 1) + 1))
        missing_rows = tuple(sorted(int(r) for r in rng.choice(rows, count, replace=False)))
    if rng.random() < 0.2 and cols > 2:
        count = int(rng.integers(1, min(2, cols - 1) + 1))
        missing_cols = tuple(sorted(int(c) for c in rng.choice(cols, count, replace=False)))
    return {"missing_rows": missing_rows, "missing_cols": missing_cols}


def _draw_mark_angle(rng: np.random.Generator) -> float:
    """Opening direction: mostly right (the long arm below), as in the real crops; sometimes
    anywhere (other stages and cameras)."""
    if rng.random() < 0.8:
        return float(rng.normal(0.0, 12.0))
    return float(rng.uniform(-180.0, 180.0))


def _draw_matrix(rng: np.random.Generator, style: str, low_contrast: bool) -> dict[str, Any]:
    """Matrix texture and level, and the marks' contrast against it.

    "granular": fine crisp speckle on a dark matrix (source_small); "mottled": high-contrast
    fibrous texture with bright crystal patches as bright as the marks, which are then
    barely visible and often fragmented (tile_013); "smooth": a quieter matrix.
    """
    if style == "granular":
        texture = rng.uniform(0.3, 0.5)
        clump, patch = rng.uniform(0.15, 0.45), rng.uniform(0.15, 0.4)
        ridge = _maybe(rng, 0.4, 0, 0.3)
        level = rng.uniform(0.1, 0.24)
    elif style == "mottled":
        texture = rng.uniform(0.45, 0.7)
        clump, patch, ridge = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.1), rng.uniform(0.5, 1.0)
        level = rng.uniform(0.33, 0.5)
    else:
        texture = rng.uniform(0.12, 0.35)
        clump, patch, ridge = rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.5), 0.0
        level = rng.uniform(0.15, 0.4)
    if low_contrast:
        contrast = rng.uniform(0.15, 0.4)
        level = rng.uniform(0.22, 0.4)  # faint marks on a mid-grey matrix, not a dark one
    elif style == "mottled":
        contrast = rng.uniform(0.85, 1.0)  # as bright as the brightest crystal patches
    else:
        contrast = rng.uniform(0.7, 1.0)
    return {
        "texture_contrast": float(texture),
        "clump_strength": float(clump),
        "patch_strength": float(patch),
        "ridge_strength": float(ridge),
        "background_level": float(level),
        "contrast": float(contrast),
    }


def _draw_scale_of_detail(rng: np.random.Generator, mark_size: float) -> dict[str, Any]:
    """Grain size, optical blur and mark edge softness, all growing with magnification,
    i.e. with the mark size (real: ~25 px marks, crisp 1-3 px speckle)."""
    grain = float(np.clip(mark_size * rng.uniform(0.028, 0.045), 0.5, 3.0))
    blur = float(np.clip(rng.uniform(0.25, 0.6) * math.sqrt(mark_size / 25.0), 0.2, 1.5))
    edge = float(np.clip(rng.uniform(0.6, 1.2) * math.sqrt(mark_size / 25.0), 0.3, 2.0))
    return {"grain_size": grain, "blur_sigma": blur, "edge_softness": edge}


def _draw_double_marks(rng: np.random.Generator, cols: int) -> dict[str, Any]:
    """Which nodes get a displaced second mark (one column, or a few anywhere), and where."""
    double_cols: tuple[int, ...] = ()
    double_fraction = 0.0
    if rng.random() < 0.12 and cols > 1:
        double_cols = (int(rng.integers(0, cols)),)
    if rng.random() < 0.1:
        double_fraction = float(rng.uniform(0.01, 0.08))
    # Mostly displaced along the column (down or up), sometimes diagonally.
    double_angle = float(rng.choice([90.0, -90.0]) + rng.normal(0.0, 20.0))
    return {
        "double_cols": double_cols,
        "double_fraction": double_fraction,
        "double_angle_deg": double_angle,
    }


def _draw_details(
    rng: np.random.Generator, style: str, pitch_x: float, pitch_y: float
) -> dict[str, Any]:
    """Everything else: irregularities, mark looks, voids, sensor, debris, tone curve.

    The entries are drawn in the order written (a dict literal evaluates top to bottom);
    keep it, or every seed's slide changes.
    """
    return {
        "missing_fraction": float(
            rng.choice([0.0, rng.uniform(0.0, 0.05), rng.uniform(0.05, 0.2)])
        ),
        "fragment_fraction": (
            float(rng.uniform(0.1, 0.4)) if style == "mottled" else _maybe(rng, 0.5, 0.0, 0.15)
        ),
        "touching_fraction": _maybe(rng, 0.4, 0.0, 0.08),
        "row_shift": _maybe(rng, 0.4, 0.03, 0.25) * pitch_x,
        "row_spacing_jitter": _maybe(rng, 0.5, 0.02, 0.12) * pitch_y,
        "jitter": float(rng.uniform(0.0, 0.04)) * pitch_x,
        "mark_angle_jitter": float(rng.uniform(1.5, 6.0)),
        "size_jitter": float(rng.uniform(0.02, 0.1)),
        "brightness_jitter": float(rng.uniform(0.02, 0.1)),
        "mark_opacity": float(rng.uniform(0.85, 1.0)),
        "rim_strength": float(rng.uniform(-0.05, 0.08)),
        "mark_texture": float(rng.uniform(0.01, 0.06)),
        "void_fraction": float(rng.uniform(0.01, 0.1)),
        "shot_noise": float(rng.uniform(0.01, 0.04)),
        "read_noise": float(rng.uniform(0.002, 0.015)),
        "gamma": float(rng.uniform(0.85, 1.2)),
        "vignetting": float(rng.uniform(0.0, 0.3)),
        "gradient": float(rng.uniform(0.0, 0.25)),
        "gradient_angle_deg": float(rng.uniform(-180.0, 180.0)),
        "dust_density": float(rng.uniform(5.0, 80.0)),
        "fibre_density": float(rng.uniform(0.0, 6.0)),
        "smudge_density": float(rng.uniform(0.5, 6.0)),
        "signal_bits": int(rng.choice([12, 14, 16])),
        "dark_offset": float(rng.uniform(0.0, 0.06)),
        "shape_jitter": float(rng.uniform(0.04, 0.15)),
        "mark_mirror": bool(rng.random() < 0.15),
        "void_depth": float(rng.uniform(0.2, 0.5)),
        "black_level": float(rng.uniform(0.0, 0.06)),
        "white_level": float(rng.uniform(0.86, 1.0)),
        "double_offset": float(rng.uniform(0.3, 0.5)),
        "double_brightness": float(rng.uniform(0.4, 0.85)),
        "double_scale": float(rng.uniform(0.6, 0.95)),
        "smudge_near_marks": float(rng.uniform(0.1, 0.5)),
    }


def _draw_outlined(rng: np.random.Generator, mark_size: float) -> dict[str, Any]:
    """Dark filled marks with a darker outline on a bright fibrous matrix."""
    return {
        "polarity": "bright",  # the fill is dark by its contrast; nothing inverted
        "background_level": float(rng.uniform(0.55, 0.75)),
        "texture_contrast": float(rng.uniform(0.25, 0.45)),
        # A quiet matrix under the fibres: no large dark patches or curly ridges.
        "clump_strength": float(rng.uniform(0.2, 0.5)),
        "patch_strength": float(rng.uniform(0.1, 0.4)),
        "ridge_strength": 0.0,
        "streak_strength": float(rng.uniform(0.6, 1.2)),
        "streak_length": float(mark_size * rng.uniform(1.0, 2.5)),
        "streak_angle_deg": float(rng.uniform(-180.0, 180.0)),
        "contrast": float(rng.uniform(-0.6, -0.35)),
        "outline_strength": float(rng.uniform(0.35, 0.6)),
        "outline_width": float(np.clip(mark_size * rng.uniform(0.06, 0.12), 1.2, 4.0)),
        "fibre_density": float(rng.uniform(5.0, 20.0)),
    }


def _draw_ghosted(rng: np.random.Generator, mark_size: float) -> dict[str, Any]:
    """A fainter second crescent beside many marks, on one side of them all."""
    return {
        "ghost_fraction": float(rng.uniform(0.4, 0.9)),
        "ghost_offset": float(rng.uniform(0.45, 0.8)),
        "ghost_angle_deg": float(rng.uniform(-180.0, 180.0)),
        "ghost_brightness": float(rng.uniform(0.2, 0.5)),
        "ghost_scale": float(rng.uniform(0.75, 1.0)),
    }


def _draw_blotchy(rng: np.random.Generator, mark_size: float) -> dict[str, Any]:
    """Heavy blotchy speckle: a very noisy matrix with large dark and bright blotches."""
    return {
        "texture_contrast": float(rng.uniform(0.55, 0.75)),
        "clump_strength": float(rng.uniform(0.6, 1.0)),
        "blotch_strength": float(rng.uniform(0.3, 0.55)),
        "blotch_size": float(mark_size * rng.uniform(0.2, 0.4)),
        "shot_noise": float(rng.uniform(0.04, 0.08)),
        "mark_texture": float(rng.uniform(0.1, 0.2)),
        "background_level": float(rng.uniform(0.3, 0.45)),
        "contrast": float(rng.uniform(0.8, 1.0)),
    }


_STYLE_DRAWS = {"outlined": _draw_outlined, "ghosted": _draw_ghosted, "blotchy": _draw_blotchy}
