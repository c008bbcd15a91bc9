"""Synthetic post-MALDI microscopy slides with exact ground truth, for training and benchmarks.

A slide is fully described by a `SlideSpec` plus an integer seed: same (spec, seed) gives
byte-identical image, mask and label arrays.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np

from model.errors import AmsegError
from model.image.io import write_png, write_tiff

MAX_MARKS = 65535
"""Ids are stored as uint16, so a grid may hold at most this many nodes."""

SHAPES = ("crescent", "chevron", "ellipse", "blob", "mixed")
POLARITIES = ("bright", "dark")
BIT_DEPTHS = (8, 16)
# Matrix styles `random_spec` draws from (see there), with their shares.
BACKGROUNDS = ("granular", "mottled", "smooth")
_BACKGROUND_WEIGHTS = (0.5, 0.35, 0.15)

# Shapes drawn for "mixed" slides and how often; crescents dominate real data.
_MIXED_SHAPES = ("crescent", "chevron", "ellipse", "blob")
_MIXED_WEIGHTS = np.array([0.5, 0.2, 0.15, 0.15])

# cv2 polygon drawing works on fixed-point coordinates with this many fractional bits,
# which gives sub-pixel accurate mark outlines.
_SUBPIXEL_BITS = 4
_SUBPIXEL_SCALE = 1 << _SUBPIXEL_BITS


class SynthSpecError(AmsegError):
    """A synthetic-slide request cannot be fulfilled (bad size, grid too large, unknown shape)."""


@dataclass(frozen=True)
class SlideSpec:
    """Every knob of one synthetic slide; JSON-serialisable with `dataclasses.asdict`.

    Lengths are in pixels, fractions in 0..1, angles in degrees. Intensities are on a
    normalised 0..1 scale (1 = top of the output range) before the final quantisation.
    """

    height: int
    width: int
    rows: int
    cols: int
    pitch_y: float
    pitch_x: float
    angle_deg: float
    shear: float
    origin_y: float
    origin_x: float
    mark_size: float
    shape: str
    bit_depth: int
    polarity: str
    contrast: float
    missing_fraction: float = 0.0
    missing_rows: tuple[int, ...] = ()
    missing_cols: tuple[int, ...] = ()
    fragment_fraction: float = 0.0
    touching_fraction: float = 0.0
    # Grid irregularity: alternate rows shifted by +-row_shift along x (serpentine stage
    # backlash), every row displaced along y by N(0, row_spacing_jitter) (uneven spacing),
    # every mark displaced by N(0, jitter).
    row_shift: float = 0.0
    row_spacing_jitter: float = 0.0
    jitter: float = 0.0
    # Mark appearance: opening direction of crescents/chevrons in the lattice frame, its
    # per-mark spread, relative size and brightness spread, opacity, rim brightening.
    mark_angle_deg: float = 20.0
    mark_angle_jitter: float = 6.0
    size_jitter: float = 0.08
    brightness_jitter: float = 0.08
    mark_opacity: float = 0.95
    rim_strength: float = 0.1
    mark_texture: float = 0.1
    # Background: mean level, grain size (px), log-contrast of the grain texture, weight of
    # grain clumps relative to single grains, share of dark voids.
    background_level: float = 0.2
    grain_size: float = 1.5
    texture_contrast: float = 0.5
    clump_strength: float = 0.4
    void_fraction: float = 0.05
    # Optics and sensor.
    blur_sigma: float = 0.8
    shot_noise: float = 0.03
    read_noise: float = 0.01
    gamma: float = 1.0
    vignetting: float = 0.1
    gradient: float = 0.1
    gradient_angle_deg: float = 0.0
    # Debris per megapixel: small specks, thin fibres, out-of-focus smudges (never marks).
    dust_density: float = 20.0
    fibre_density: float = 2.0
    smudge_density: float = 1.0
    # 16-bit output: significant bits (12..16) and dark offset as a fraction of full scale.
    signal_bits: int = 16
    dark_offset: float = 0.02
    # Added for realism (defaults keep older specs meaningful). Per-mark spread of the
    # outline around the slide's common shape; crescents mirrored (long arm on top).
    shape_jitter: float = 0.1
    mark_mirror: bool = False
    # Edge softness of the marks (Gaussian sigma, px) on top of the optical blur.
    edge_softness: float = 0.8
    # Background structure beyond grain and clumps: 5-15 px mottling (bright crystal
    # patches), worm-like fibrous ridges, and how dark the voids get.
    patch_strength: float = 0.15
    ridge_strength: float = 0.0
    void_depth: float = 0.4
    # Tone curve: black and white level of the output range; the highlights roll off
    # softly into the white level (real sensors/exports rarely hit full scale).
    black_level: float = 0.0
    white_level: float = 1.0
    # Double (displaced) marks: a second, fainter mark next to the node's own, same id.
    # Nodes in `double_cols` mostly get one, others with `double_fraction`; the offset is
    # a fraction of the pitch in the lattice frame direction `double_angle_deg`.
    double_fraction: float = 0.0
    double_cols: tuple[int, ...] = ()
    double_offset: float = 0.4
    double_angle_deg: float = 90.0
    double_brightness: float = 0.6
    double_scale: float = 0.8
    # Share of the out-of-focus smudges placed next to a mark (partly merging with it).
    smudge_near_marks: float = 0.3


@dataclass
class SyntheticSlide:
    """One rendered slide and its ground truth."""

    image: np.ndarray  # (H, W) uint8 or uint16
    mask: np.ndarray  # (H, W) bool, True on marks
    labels: np.ndarray  # (H, W) uint16, row*cols+col+1 of each mark's node, 0 background
    spec: SlideSpec
    nodes: np.ndarray  # (rows*cols, 2) float64 (y, x) laser position of every node
    present: np.ndarray  # (rows*cols,) bool, the node's mark has pixels in the image


# --------------------------------------------------------------------------------------------
# Spec drawing and validation


def _validate_spec(spec: SlideSpec) -> None:
    if spec.height < 1 or spec.width < 1:
        raise SynthSpecError(f"slide size must be positive, got {spec.width}x{spec.height}")
    if spec.rows < 1 or spec.cols < 1:
        raise SynthSpecError(
            f"grid must have at least one row and column, got {spec.rows}x{spec.cols}"
        )
    if spec.rows * spec.cols > MAX_MARKS:
        raise SynthSpecError(
            f"a {spec.rows}x{spec.cols} grid has {spec.rows * spec.cols} marks, more than the "
            f"{MAX_MARKS} that uint16 ids can number"
        )
    if spec.shape not in SHAPES:
        raise SynthSpecError(
            f"unknown mark shape {spec.shape!r}; choose one of {', '.join(SHAPES)}"
        )
    if spec.polarity not in POLARITIES:
        raise SynthSpecError(f"unknown polarity {spec.polarity!r}; choose bright or dark")
    if spec.bit_depth not in BIT_DEPTHS:
        raise SynthSpecError(f"bit depth must be 8 or 16, got {spec.bit_depth}")
    if not 1.0 <= spec.mark_size <= 256.0:
        raise SynthSpecError(f"mark size must be between 1 and 256 px, got {spec.mark_size}")
    if spec.pitch_x <= 0 or spec.pitch_y <= 0:
        raise SynthSpecError("grid pitch must be positive")
    if not 8 <= spec.signal_bits <= 16:
        raise SynthSpecError(f"signal bits must be in 8..16, got {spec.signal_bits}")


def _check_grid_size(rows: int, cols: int) -> None:
    if rows * cols > MAX_MARKS:
        raise SynthSpecError(
            f"a {rows}x{cols} grid has {rows * cols} marks, more than the {MAX_MARKS} "
            "that uint16 ids can number"
        )


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
    """
    if height < 1 or width < 1:
        raise SynthSpecError(f"slide size must be positive, got {width}x{height}")
    if rows is not None and cols is not None:
        _check_grid_size(rows, cols)
    if bit_depth is not None and bit_depth not in BIT_DEPTHS:
        raise SynthSpecError(f"bit depth must be 8 or 16, got {bit_depth}")
    if not 0.0 <= low_contrast_fraction <= 1.0:
        raise SynthSpecError(f"low-contrast fraction must be in 0..1, got {low_contrast_fraction}")
    if background is not None and background not in BACKGROUNDS:
        raise SynthSpecError(
            f"unknown background {background!r}; choose one of {', '.join(BACKGROUNDS)}"
        )
    rng = np.random.default_rng(seed)

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

    placement = rng.choice(["overflow", "inside", "partial"], p=[0.5, 0.3, 0.2])
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
        rows = rows if rows is not None else fit_rows
        cols = cols if cols is not None else fit_cols
        while rows * cols > MAX_MARKS:
            # Only possible for tiny marks on huge slides: keep the aspect, shrink the grid.
            rows, cols = max(1, int(rows * 0.95)), max(1, int(cols * 0.95))
        _check_grid_size(rows, cols)

    shape = str(rng.choice(SHAPES, p=[0.55, 0.12, 0.1, 0.1, 0.13]))
    polarity = "dark" if rng.random() < 0.15 else "bright"
    low_contrast = rng.random() < low_contrast_fraction
    if bit_depth is None:
        bit_depth = 16 if rng.random() < 0.3 else 8

    def maybe(probability: float, low: float, high: float) -> float:
        return float(rng.uniform(low, high)) if rng.random() < probability else 0.0

    missing_rows: tuple[int, ...] = ()
    missing_cols: tuple[int, ...] = ()
    if rng.random() < 0.3 and rows > 2:
        count = int(rng.integers(1, min(3, rows - 1) + 1))
        missing_rows = tuple(sorted(int(r) for r in rng.choice(rows, count, replace=False)))
    if rng.random() < 0.2 and cols > 2:
        count = int(rng.integers(1, min(2, cols - 1) + 1))
        missing_cols = tuple(sorted(int(c) for c in rng.choice(cols, count, replace=False)))

    # Opening direction: mostly right (the long arm below), as in the real crops; sometimes
    # anywhere (other stages and cameras).
    if rng.random() < 0.8:
        mark_angle = float(rng.normal(0.0, 12.0))
    else:
        mark_angle = float(rng.uniform(-180.0, 180.0))

    # Background style. "granular": fine crisp speckle on a dark matrix (source_small);
    # "mottled": high-contrast fibrous texture with bright crystal patches as bright as the
    # marks, which are then barely visible and often fragmented (tile_013); "smooth": a
    # quieter matrix.
    style = str(rng.choice(BACKGROUNDS, p=_BACKGROUND_WEIGHTS))  # drawn always: same rng stream
    style = background or style
    if style == "granular":
        texture = rng.uniform(0.3, 0.5)
        clump, patch, ridge = rng.uniform(0.15, 0.45), rng.uniform(0.15, 0.4), maybe(0.4, 0, 0.3)
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
    # Grain size scales with magnification, i.e. with the mark size (real: ~25 px marks,
    # crisp 1-3 px speckle).
    grain = float(np.clip(drawn_size * rng.uniform(0.028, 0.045), 0.5, 3.0))
    blur = float(np.clip(rng.uniform(0.25, 0.6) * math.sqrt(drawn_size / 25.0), 0.2, 1.5))
    edge = float(np.clip(rng.uniform(0.6, 1.2) * math.sqrt(drawn_size / 25.0), 0.3, 2.0))

    double_cols: tuple[int, ...] = ()
    double_fraction = 0.0
    if rng.random() < 0.12 and cols > 1:
        double_cols = (int(rng.integers(0, cols)),)
    if rng.random() < 0.1:
        double_fraction = float(rng.uniform(0.01, 0.08))
    # Mostly displaced along the column (down or up), sometimes diagonally.
    double_angle = float(rng.choice([90.0, -90.0]) + rng.normal(0.0, 20.0))

    values: dict[str, object] = {
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
        "shape": shape,
        "bit_depth": int(bit_depth),
        "polarity": polarity,
        "contrast": float(contrast),
        "missing_fraction": float(
            rng.choice([0.0, rng.uniform(0.0, 0.05), rng.uniform(0.05, 0.2)])
        ),
        "missing_rows": missing_rows,
        "missing_cols": missing_cols,
        "fragment_fraction": (
            float(rng.uniform(0.1, 0.4)) if style == "mottled" else maybe(0.5, 0.0, 0.15)
        ),
        "touching_fraction": maybe(0.4, 0.0, 0.08),
        "row_shift": maybe(0.4, 0.03, 0.25) * pitch_x,
        "row_spacing_jitter": maybe(0.5, 0.02, 0.12) * pitch_y,
        "jitter": float(rng.uniform(0.0, 0.04)) * pitch_x,
        "mark_angle_deg": mark_angle,
        "mark_angle_jitter": float(rng.uniform(1.5, 6.0)),
        "size_jitter": float(rng.uniform(0.02, 0.1)),
        "brightness_jitter": float(rng.uniform(0.02, 0.1)),
        "mark_opacity": float(rng.uniform(0.85, 1.0)),
        "rim_strength": float(rng.uniform(-0.05, 0.08)),
        "mark_texture": float(rng.uniform(0.01, 0.06)),
        "background_level": float(level),
        "grain_size": grain,
        "texture_contrast": float(texture),
        "clump_strength": float(clump),
        "void_fraction": float(rng.uniform(0.01, 0.1)),
        "blur_sigma": blur,
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
        "edge_softness": edge,
        "patch_strength": float(patch),
        "ridge_strength": float(ridge),
        "void_depth": float(rng.uniform(0.2, 0.5)),
        "black_level": float(rng.uniform(0.0, 0.06)),
        "white_level": float(rng.uniform(0.86, 1.0)),
        "double_fraction": double_fraction,
        "double_cols": double_cols,
        "double_offset": float(rng.uniform(0.3, 0.5)),
        "double_angle_deg": double_angle,
        "double_brightness": float(rng.uniform(0.4, 0.85)),
        "double_scale": float(rng.uniform(0.6, 0.95)),
        "smudge_near_marks": float(rng.uniform(0.1, 0.5)),
    }
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SlideSpec)}
    if unknown:
        raise SynthSpecError(f"unknown slide setting(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    spec = SlideSpec(**values)  # type: ignore[arg-type]
    _validate_spec(spec)
    return spec


# --------------------------------------------------------------------------------------------
# Grid geometry


def _lattice_nodes(spec: SlideSpec, rng: np.random.Generator) -> np.ndarray:
    """(rows*cols, 2) (y, x) laser positions: lattice, row offsets and per-mark jitter."""
    rows, cols = spec.rows, spec.cols
    row_index = np.arange(rows, dtype=np.float64)
    row_dy = rng.normal(0.0, 1.0, rows) * spec.row_spacing_jitter
    # Keep consecutive rows in order even with strong spacing jitter.
    row_dy = np.clip(row_dy, -0.3 * spec.pitch_y, 0.3 * spec.pitch_y)
    serpentine_sign = np.where(np.arange(rows) % 2 == 0, 1.0, -1.0)
    row_dx = spec.row_shift * serpentine_sign + rng.normal(0.0, 0.2, rows) * spec.row_shift
    v = row_index * spec.pitch_y + row_dy  # along the columns (down)
    u = np.arange(cols, dtype=np.float64)[None, :] * spec.pitch_x + row_dx[:, None]
    u = u + spec.shear * v[:, None]
    v = np.broadcast_to(v[:, None], u.shape)
    theta = math.radians(spec.angle_deg)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    x = spec.origin_x + u * cos_t - v * sin_t
    y = spec.origin_y + u * sin_t + v * cos_t
    nodes = np.stack([y.ravel(), x.ravel()], axis=1)
    nodes += rng.normal(0.0, 1.0, nodes.shape) * spec.jitter
    return nodes


# --------------------------------------------------------------------------------------------
# Mark outlines (polygons in local coordinates, centred on the origin, x right, y down)


@dataclass
class _MarkOutline:
    """Polygons of one mark plus its centre line (for cutting fragments across it)."""

    parts: list[np.ndarray]  # float (n, 2) x, y polygons, all filled
    centreline: np.ndarray  # (m, 2) x, y points along the mark's long axis


def _tapered_band(centre: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Polygon of a band of varying width around a smooth centre line."""
    tangent = np.gradient(centre, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    half = (widths / 2.0)[:, None]
    return np.concatenate([centre + normal * half, (centre - normal * half)[::-1]], axis=0)


def _chaikin(points: np.ndarray, iterations: int) -> np.ndarray:
    """Corner-cutting subdivision: a smooth (quadratic B-spline) curve through the control
    polygon's end points; works on any number of columns (x, y, width...)."""
    for _ in range(iterations):
        q = 0.75 * points[:-1] + 0.25 * points[1:]
        r = 0.25 * points[:-1] + 0.75 * points[1:]
        inner = np.empty((2 * len(q), points.shape[1]))
        inner[0::2], inner[1::2] = q, r
        points = np.concatenate([points[:1], inner[1:-1], points[-1:]], axis=0)
    return points


def _stroke(
    centre: np.ndarray, widths: np.ndarray, outer: np.ndarray | float = 0.5
) -> list[np.ndarray]:
    """A band of varying width around a curve, as one convex piece per curve segment.

    `outer` is the share of the width on the left of the direction of travel (0.5 centres
    the band on the curve). Every piece is the convex hull of the segment's four edge
    points, so tight turns (where a single band polygon would cross itself on the inner
    side) still fill solidly.
    """
    tangent = np.gradient(centre, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    widths = np.maximum(widths, 0.0)
    left = centre + normal * (widths * outer)[:, None]
    right = centre - normal * (widths * (1.0 - np.asarray(outer)))[:, None]
    quads = np.stack([left[:-1], left[1:], right[1:], right[:-1]], axis=1).astype(np.float32)
    return [cv2.convexHull(quad).reshape(-1, 2).astype(np.float64) for quad in quads]


def _crescent(size: float, u: np.ndarray) -> _MarkOutline:
    """Curved "swoosh" opening towards +x, like the real marks: a thick rounded head at the
    upper left, a flat-topped upper arm tapering to a horn that curls up slightly, a deep
    rounded notch, and a longer, thinner lower arm running down-right into a tail."""
    upper = 0.75 + 0.3 * u[0]  # reach of the upper arm right of the head
    curl = 0.02 + 0.08 * u[1]
    drop = 0.8 + 0.35 * u[2]  # vertical extent of the lower arm
    run = 0.65 + 0.35 * u[3]  # horizontal extent of the lower arm
    flatten = 0.12 * u[4]  # the tail bends towards the horizontal
    bulge = 0.02 + 0.06 * u[5]  # the lower arm bows towards the outside
    control = np.array(
        [
            [upper, -curl],
            [0.55 * upper, 0.02],
            [0.2 * upper, 0.05],
            [0.0, 0.12],
            [-0.04, 0.28],
            [0.3 * run - bulge, 0.55 * drop],
            [0.7 * run - 0.5 * bulge, drop - 0.15 * flatten],
            [run + flatten, drop + 0.03],
        ]
    )
    head = 0.28 + 0.1 * u[6]
    lower = head * (0.5 + 0.25 * u[7])
    tail_tip = 0.01 + 0.1 * u[8] ** 2  # mostly pointed, sometimes a blunt tail
    widths = np.array(
        [0.01, 0.45 * head, 0.85 * head, head, 0.8 * head, lower, 0.85 * lower, tail_tip]
    )
    # The head's extra thickness lies on the outside, which keeps the notch round.
    outer = np.array([0.5, 0.6, 0.7, 0.75, 0.7, 0.55, 0.5, 0.5])
    curve = _chaikin(np.column_stack([control, widths, outer]), 3)
    centreline = curve[:, :2]
    # Ragged edges: the width wobbles along the mark by ~10 % (a pixel or so).
    wobble = np.random.default_rng(int(u[15] * 2**31)).normal(0.0, 1.0, len(curve))
    wobble = np.convolve(wobble, np.array([0.25, 0.5, 0.25]), mode="same")
    band = curve[:, 2] * (1.0 + 0.15 * wobble)
    # Tips no thinner than ~1.2 px, so no stray pixels break off the rasterised horns.
    extent = float((centreline.max(axis=0) - centreline.min(axis=0)).max()) + float(band.max())
    band = np.maximum(band, 1.2 * extent / max(size, 1e-9))
    parts = _stroke(centreline, band, curve[:, 3])
    return _scaled(_MarkOutline(parts, centreline), size)


def _scaled(outline: _MarkOutline, size: float) -> _MarkOutline:
    """Scale an outline so that its larger bounding-box side equals `size`."""
    every = np.concatenate(outline.parts, axis=0)
    extent = float((every.max(axis=0) - every.min(axis=0)).max())
    factor = size / max(extent, 1e-9)
    return _MarkOutline([p * factor for p in outline.parts], outline.centreline * factor)


def _chevron(size: float, u: np.ndarray) -> _MarkOutline:
    """Two straight tapering arms meeting in a rounded vertex, opening towards +x."""
    half_angle = math.radians(28 + 22 * u[0])
    arm_a = size * (0.45 + 0.2 * u[1])
    arm_b = size * (0.6 + 0.3 * u[2])
    width = size * (0.18 + 0.1 * u[3])
    parts = []
    lines = []
    for sign, length, tip in ((-1.0, arm_a, 0.5), (1.0, arm_b, 0.2)):
        t = np.linspace(0.0, 1.0, 8)
        direction = np.array([math.cos(half_angle), sign * math.sin(half_angle)])
        centre = t[:, None] * length * direction[None, :]
        widths = width * (1.0 - (1.0 - tip) * t**1.3)
        parts.append(_tapered_band(centre, widths))
        lines.append(centre)
    vertex = _circle(width * 0.55, 16)
    parts.append(vertex)
    centreline = np.concatenate([lines[0][::-1], lines[1][1:]], axis=0)
    shift = centreline.mean(axis=0)
    return _scaled(_MarkOutline([p - shift for p in parts], centreline - shift), size)


def _circle(radius: float, n: int) -> np.ndarray:
    phi = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([radius * np.cos(phi), radius * np.sin(phi)], axis=1)


def _ellipse(size: float, u: np.ndarray) -> _MarkOutline:
    a = size / 2.0
    b = a * (0.5 + 0.45 * u[0])
    phi = np.linspace(0.0, 2 * math.pi, 40, endpoint=False)
    outline = np.stack([a * np.cos(phi), b * np.sin(phi)], axis=1)
    return _MarkOutline([outline], np.array([[-a, 0.0], [0.0, 0.0], [a, 0.0]]))


def _blob(size: float, u: np.ndarray) -> _MarkOutline:
    """Irregular lobed outline: a circle with random low harmonics."""
    phi = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
    r = np.ones_like(phi)
    for k in range(2, 6):
        amplitude = (0.05 + 0.12 * u[k]) / (k - 1) ** 0.5
        r += amplitude * np.cos(k * phi + 2 * math.pi * u[k + 4])
    r *= size / 2.0 / r.max()
    outline = np.stack([r * np.cos(phi), r * np.sin(phi) * (0.75 + 0.25 * u[1])], axis=1)
    half = size / 2.0
    return _MarkOutline([outline], np.array([[-half, 0.0], [0.0, 0.0], [half, 0.0]]))


_OUTLINES = {"crescent": _crescent, "chevron": _chevron, "ellipse": _ellipse, "blob": _blob}


def _mirrored(outline: _MarkOutline) -> _MarkOutline:
    """The outline flipped top to bottom (a crescent with its long arm on top)."""
    flip = np.array([1.0, -1.0])
    return _MarkOutline([p * flip for p in outline.parts], outline.centreline * flip)


def _place(outline: _MarkOutline, angle_rad: float, y: float, x: float) -> _MarkOutline:
    """Rotate a local outline and centre its (rotated) bounding box on (y, x)."""
    every = np.concatenate(outline.parts, axis=0)
    cos_a, sin_a = math.cos(angle_rad), math.sin(angle_rad)
    rotation = np.array([[cos_a, sin_a], [-sin_a, cos_a]])  # row-vector form of R(angle)
    turned = every @ rotation
    offset = np.array([x, y]) - (turned.min(axis=0) + turned.max(axis=0)) / 2.0
    parts = np.split(turned + offset, np.cumsum([len(p) for p in outline.parts[:-1]]))
    return _MarkOutline(parts, outline.centreline @ rotation + offset)


# --------------------------------------------------------------------------------------------
# Rasterising marks into the label image


def _fixed_point(points: np.ndarray, x0: int, y0: int) -> np.ndarray:
    local = (points - np.array([x0, y0])) * _SUBPIXEL_SCALE
    return np.round(local).astype(np.int32).reshape(-1, 1, 2)


def _bbox(outline: _MarkOutline, pad: float) -> tuple[float, float, float, float]:
    every = np.concatenate(outline.parts, axis=0)
    x_min, y_min = every.min(axis=0) - pad
    x_max, y_max = every.max(axis=0) + pad
    return float(x_min), float(y_min), float(x_max), float(y_max)


def _draw_mark(
    labels: np.ndarray,
    outline: _MarkOutline,
    mark_id: int,
    cuts: list[tuple[np.ndarray, np.ndarray, float]],
) -> tuple[int, int, np.ndarray] | None:
    """Fill the mark's polygons into `labels` as `mark_id`, minus the fragment cuts.

    Work happens in a canvas the size of the mark's bounding box so the cost does not
    depend on the slide size; returns (y0, x0, filled canvas) or None when off-image.
    """
    height, width = labels.shape
    x_min, y_min, x_max, y_max = _bbox(outline, 2.0)
    x0, y0 = max(math.floor(x_min), 0), max(math.floor(y_min), 0)
    x1, y1 = min(math.ceil(x_max) + 1, width), min(math.ceil(y_max) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    # One call per part: a single fillPoly call would XOR overlapping parts.
    every = _fixed_point(np.concatenate(outline.parts, axis=0), x0, y0)
    for part in np.split(every, np.cumsum([len(p) for p in outline.parts[:-1]])):
        cv2.fillPoly(canvas, [part], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    for point, direction, gap in cuts:
        reach = direction * 1e3  # far beyond the mark: the gap crosses it completely
        start = _fixed_point((point - reach)[None], x0, y0)[0, 0]
        end = _fixed_point((point + reach)[None], x0, y0)[0, 0]
        thickness = max(1, round(gap))
        cv2.line(
            canvas,
            tuple(map(int, start)),
            tuple(map(int, end)),
            0,
            thickness,
            cv2.LINE_8,
            _SUBPIXEL_BITS,
        )
    filled = canvas > 0
    labels[y0:y1, x0:x1][filled] = mark_id
    return y0, x0, filled


def _draw_bridge(
    labels: np.ndarray, start: np.ndarray, end: np.ndarray, width: float, ids: tuple[int, int]
) -> None:
    """A band from `start` to `end`; the first half belongs to ids[0], the second to ids[1]."""
    middle = (start + end) / 2.0
    for a, b, mark_id in ((start, middle, ids[0]), (middle, end, ids[1])):
        half = width / 2.0 + 1.0
        x0 = max(math.floor(min(a[0], b[0]) - half), 0)
        y0 = max(math.floor(min(a[1], b[1]) - half), 0)
        x1 = min(math.ceil(max(a[0], b[0]) + half) + 1, labels.shape[1])
        y1 = min(math.ceil(max(a[1], b[1]) + half) + 1, labels.shape[0])
        if x1 <= x0 or y1 <= y0:
            continue
        canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
        pa = _fixed_point(a[None], x0, y0)[0, 0]
        pb = _fixed_point(b[None], x0, y0)[0, 0]
        cv2.line(
            canvas,
            tuple(map(int, pa)),
            tuple(map(int, pb)),
            1,
            max(1, round(width)),
            cv2.LINE_8,
            _SUBPIXEL_BITS,
        )
        labels[y0:y1, x0:x1][canvas > 0] = mark_id


def _fragment_cuts(
    outline: _MarkOutline, size: float, u: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """One or two straight gaps across the mark's centre line (2 or 3 pieces)."""
    line = outline.centreline
    lengths = np.linalg.norm(np.diff(line, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    count = 2 if u[0] < 0.35 else 1
    positions = [0.3 + 0.4 * u[1]] if count == 1 else [0.2 + 0.2 * u[1], 0.6 + 0.2 * u[2]]
    cuts = []
    for position in positions:
        s = position * along[-1]
        i = int(np.clip(np.searchsorted(along, s) - 1, 0, len(line) - 2))
        t = (s - along[i]) / max(lengths[i], 1e-9)
        point = line[i] + t * (line[i + 1] - line[i])
        tangent = (line[i + 1] - line[i]) / max(lengths[i], 1e-9)
        normal = np.array([-tangent[1], tangent[0]])
        tilt = (u[3] - 0.5) * 0.6  # cuts are not exactly perpendicular
        direction = normal * math.cos(tilt) + tangent * math.sin(tilt)
        gap = max(1.0, size * (0.05 + 0.08 * u[4]))
        cuts.append((point, direction, gap))
    return cuts


def _closest_points(a: _MarkOutline, b: _MarkOutline) -> tuple[np.ndarray, np.ndarray]:
    pa = np.concatenate(a.parts, axis=0)
    pb = np.concatenate(b.parts, axis=0)
    distance = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=2)
    i, j = np.unravel_index(int(np.argmin(distance)), distance.shape)
    return pa[i], pb[j]


_Dimmed = list[tuple[np.ndarray, np.ndarray, int, float]]


def _render_labels(
    spec: SlideSpec, nodes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, _Dimmed]:
    """uint16 label image of all marks (ids row*cols+col+1), and the pixels of the fainter
    double marks as (ys, xs, id, opacity factor)."""
    rows, cols = spec.rows, spec.cols
    count = rows * cols
    labels = np.zeros((spec.height, spec.width), np.uint16)

    # Every per-mark random number is drawn up front, so the stream does not depend on
    # which marks happen to be visible.
    wanted = rng.random(count) >= spec.missing_fraction
    grid_rows = np.repeat(np.arange(rows), cols)
    grid_cols = np.tile(np.arange(cols), rows)
    if spec.missing_rows:
        wanted &= ~np.isin(grid_rows, np.asarray(spec.missing_rows))
    if spec.missing_cols:
        wanted &= ~np.isin(grid_cols, np.asarray(spec.missing_cols))
    sizes = spec.mark_size * np.exp(rng.normal(0.0, spec.size_jitter, count))
    angles = np.radians(
        spec.mark_angle_deg + spec.angle_deg + rng.normal(0.0, spec.mark_angle_jitter, count)
    )
    if spec.shape == "mixed":
        shape_index = rng.choice(len(_MIXED_SHAPES), size=count, p=_MIXED_WEIGHTS)
    else:
        shape_index = np.full(count, _MIXED_SHAPES.index(spec.shape))
    # One common outline per slide (real marks of a slide look alike), varied per mark.
    base_params = rng.random(16)
    shape_params = base_params + rng.normal(0.0, 1.0, (count, 16)) * spec.shape_jitter
    shape_params = np.clip(shape_params, 0.0, 1.0)
    fragmented = rng.random(count) < spec.fragment_fraction
    cut_params = rng.random((count, 5))
    touching = rng.random(count) < spec.touching_fraction
    touch_down = rng.random(count) < 0.3
    bridge_width = rng.uniform(0.12, 0.3, count)
    doubled = rng.random(count) < spec.double_fraction
    if spec.double_cols:
        doubled |= np.isin(grid_cols, np.asarray(spec.double_cols)) & (rng.random(count) < 0.85)
    else:
        rng.random(count)  # keep the stream independent of the columns
    double_theta = math.radians(spec.double_angle_deg + spec.angle_deg)
    double_theta = double_theta + rng.normal(0.0, 0.1, count)
    double_pitch = (
        abs(math.cos(math.radians(spec.double_angle_deg))) * spec.pitch_x
        + abs(math.sin(math.radians(spec.double_angle_deg))) * spec.pitch_y
    )
    double_distance = spec.double_offset * double_pitch * (1.0 + rng.normal(0.0, 0.08, count))
    double_shift = np.stack(
        [np.sin(double_theta) * double_distance, np.cos(double_theta) * double_distance], axis=1
    )
    double_turn = rng.normal(0.0, 0.05, count)

    reach = 1.2 * sizes + 2.0
    visible = (
        (nodes[:, 0] + reach >= 0)
        & (nodes[:, 0] - reach < spec.height)
        & (nodes[:, 1] + reach >= 0)
        & (nodes[:, 1] - reach < spec.width)
    )
    drawn = np.flatnonzero(wanted & visible)
    outlines: dict[int, _MarkOutline] = {}
    for index in drawn:
        make = _OUTLINES[_MIXED_SHAPES[shape_index[index]]]
        local = make(float(sizes[index]), shape_params[index])
        if spec.mark_mirror:
            local = _mirrored(local)
        outlines[int(index)] = _place(
            local, float(angles[index]), float(nodes[index, 0]), float(nodes[index, 1])
        )

    # Double marks first: the node's own mark and its neighbours keep their pixels.
    dimmed: _Dimmed = []
    shifted = nodes + double_shift
    double_visible = (
        (shifted[:, 0] + reach >= 0)
        & (shifted[:, 0] - reach < spec.height)
        & (shifted[:, 1] + reach >= 0)
        & (shifted[:, 1] - reach < spec.width)
    )
    for index in np.flatnonzero(wanted & doubled & double_visible):
        make = _OUTLINES[_MIXED_SHAPES[shape_index[index]]]
        local = make(float(sizes[index] * spec.double_scale), shape_params[index])
        if spec.mark_mirror:
            local = _mirrored(local)
        y, x = shifted[index]
        outline = _place(local, float(angles[index] + double_turn[index]), float(y), float(x))
        drawn_at = _draw_mark(labels, outline, int(index) + 1, [])
        if drawn_at is not None:
            y0, x0, canvas = drawn_at
            ys, xs = np.nonzero(canvas)
            dimmed.append((ys + y0, xs + x0, int(index) + 1, spec.double_brightness))

    # Bridges first: the marks drawn afterwards keep their own pixels.
    for index in drawn[touching[drawn]]:
        row, col = divmod(int(index), cols)
        if touch_down[index] and row + 1 < rows:
            neighbour = index + cols
        elif col + 1 < cols:
            neighbour = index + 1
        else:
            continue
        if int(neighbour) not in outlines:
            continue
        a, b = _closest_points(outlines[int(index)], outlines[int(neighbour)])
        if np.linalg.norm(b - a) > 0.8 * sizes[index]:
            continue  # too far apart to merge plausibly (touching happens at small pitch)
        width = float(bridge_width[index] * sizes[index])
        _draw_bridge(labels, a, b, width, (int(index) + 1, int(neighbour) + 1))

    for index in drawn:
        outline = outlines[int(index)]
        cuts = (
            _fragment_cuts(outline, float(sizes[index]), cut_params[index])
            if fragmented[index]
            else []
        )
        _draw_mark(labels, outline, int(index) + 1, cuts)
    return labels, dimmed


# --------------------------------------------------------------------------------------------
# Intensity fields


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-correlated noise with unit std; coarse scales are drawn at low resolution
    and enlarged, so the cost stays close to one full-size array."""
    height, width = shape
    factor = max(1, int(sigma / 1.5))
    low_h, low_w = height // factor + 3, width // factor + 3
    low = rng.standard_normal((low_h, low_w), dtype=np.float32)
    low = cv2.GaussianBlur(low, (0, 0), sigma / factor, borderType=cv2.BORDER_REFLECT)
    low -= low.mean()
    low /= max(float(low.std()), 1e-6)
    if factor == 1:
        return np.ascontiguousarray(low[:height, :width])
    big = cv2.resize(low, (low_w * factor, low_h * factor), interpolation=cv2.INTER_CUBIC)
    offset = factor  # skip the first low-res cell, where the interpolation is one-sided
    return np.ascontiguousarray(big[offset : offset + height, offset : offset + width])


def _illumination(spec: SlideSpec, rng: np.random.Generator) -> np.ndarray:
    """Slowly varying multiplicative light field: gradient, vignetting, uneven lamp."""
    height, width = spec.height, spec.width
    step = max(1, min(height, width) // 64)
    low_h, low_w = math.ceil(height / step) + 1, math.ceil(width / step) + 1
    yy = (np.arange(low_h, dtype=np.float32) * step - height / 2) / max(height, width)
    xx = (np.arange(low_w, dtype=np.float32) * step - width / 2) / max(height, width)
    theta = math.radians(spec.gradient_angle_deg)
    plane = spec.gradient * (math.cos(theta) * xx[None, :] + math.sin(theta) * yy[:, None])
    centre_y, centre_x = rng.normal(0.0, 0.15, 2)
    radius2 = (yy[:, None] - centre_y) ** 2 + (xx[None, :] - centre_x) ** 2
    light = (1.0 + plane) * (1.0 - spec.vignetting * radius2 / 0.5)
    patches = rng.standard_normal((6, 6)).astype(np.float32)
    patches = cv2.resize(patches, (low_w, low_h), interpolation=cv2.INTER_CUBIC)
    light = light * (1.0 + 0.05 * patches)
    light = np.clip(light, 0.2, 2.0).astype(np.float32)
    full = cv2.resize(light, (low_w * step, low_h * step), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(full[:height, :width])


def _background(spec: SlideSpec, rng: np.random.Generator, fine: np.ndarray) -> np.ndarray:
    """Matrix-crystal texture: log-normal mix of crisp grain, clumps, 5-15 px mottling and
    worm-like fibrous ridges, with dark voids (holes in the matrix layer)."""
    shape = (spec.height, spec.width)
    grain = spec.grain_size
    field = fine.copy()
    weights = [1.0]
    if spec.clump_strength > 0:
        field += spec.clump_strength * _smooth_noise(rng, shape, grain * 2.5)
        weights.append(spec.clump_strength)
    if spec.patch_strength > 0:
        field += spec.patch_strength * _smooth_noise(rng, shape, grain * 6.0)
        weights.append(spec.patch_strength)
    if spec.ridge_strength > 0:
        # Bright where a smooth field crosses zero: thin, curly, connected fibres.
        ridge = np.abs(_smooth_noise(rng, shape, grain * 2.8))
        ridge -= np.float32(0.798)  # mean of |N(0, 1)|
        ridge *= np.float32(-spec.ridge_strength / 0.603)  # unit std, bright ridges
        field += ridge
        weights.append(spec.ridge_strength)
    field *= np.float32(1.0 / math.sqrt(sum(w * w for w in weights)))
    k = np.float32(spec.texture_contrast)
    field *= k
    field -= k * k / 2
    background = np.exp(field, out=field)
    np.minimum(background, np.float32(8.0), out=background)
    if spec.void_fraction > 0 and spec.void_depth > 0:
        voids = _smooth_noise(rng, shape, grain * 2.0)
        threshold = float(_normal_quantile(1.0 - spec.void_fraction))
        # Soft step: 0 in the matrix, ~1 in the middle of a void.
        voids -= np.float32(threshold)
        np.clip(voids, 0.0, 1.0, out=voids)
        voids *= np.float32(-spec.void_depth)
        voids += np.float32(1.0)
        background *= voids
    background *= np.float32(spec.background_level)
    # The brightest crystals saturate just below the marks' level (flat bright patches).
    np.minimum(background, np.float32(0.95), out=background)
    return background


def _normal_quantile(p: float) -> float:
    """Inverse standard-normal CDF, so a threshold on unit noise covers a share `1 - p`."""
    return NormalDist().inv_cdf(min(max(p, 1e-6), 1 - 1e-6))


def _marks_layer(
    spec: SlideSpec,
    labels: np.ndarray,
    dimmed: _Dimmed,
    fine: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied mark intensity and opacity per pixel: flat, near-saturated marks with
    a per-mark level, a faint rim or edge falloff, a little texture, a soft edge."""
    count = spec.rows * spec.cols
    background = spec.background_level
    top = rng.uniform(1.1, 1.6)  # into the shoulder: flat, nearly saturated marks
    level = background + spec.contrast * (top - background)
    per_mark = level * np.exp(rng.normal(0.0, spec.brightness_jitter, count + 1))
    per_mark = per_mark.astype(np.float32)
    opacity = np.clip(rng.normal(spec.mark_opacity, 0.04, count + 1), 0.5, 1.0)
    opacity = opacity.astype(np.float32)
    opacity[0] = 0.0
    inside = (labels > 0).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    # Distance 1 = first inside pixel: slightly darker edge, an optional rim ~2 px inside.
    profile = 1.0 - 0.12 * np.exp(-(depth - 1.0) / 0.8)
    profile += spec.rim_strength * np.exp(-(((depth - 2.0) / 1.5) ** 2))
    del depth
    profile *= 1.0 + spec.mark_texture * fine
    alpha = opacity[labels]
    for ys, xs, mark_id, factor in dimmed:
        own = labels[ys, xs] == mark_id
        alpha[ys[own], xs[own]] *= np.float32(factor)
    premultiplied = per_mark[labels]
    premultiplied *= profile
    premultiplied *= alpha
    del profile
    if spec.edge_softness > 0:
        # Blurring the premultiplied layer and its opacity alike gives a soft edge that
        # spills a pixel or two into the background, as a defocused bright mark does.
        sigma = spec.edge_softness
        premultiplied = cv2.GaussianBlur(premultiplied, (0, 0), sigma)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    return premultiplied, alpha


def _draw_debris(
    spec: SlideSpec,
    image: np.ndarray,
    rng: np.random.Generator,
    nodes: np.ndarray,
    present: np.ndarray,
) -> None:
    """Dust specks, fibres and out-of-focus smudges painted over everything (not marks);
    some smudges sit next to a mark and partly merge with it."""
    height, width = image.shape
    megapixels = height * width / 1e6
    level = spec.background_level
    scale = spec.mark_size / 25.0

    for _ in range(rng.poisson(spec.dust_density * megapixels)):
        radius = max(0.6, rng.gamma(2.0, 0.7) * scale)
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        value = level * rng.uniform(0.05, 0.4) if rng.random() < 0.6 else rng.uniform(0.5, 1.1)
        box = math.ceil(radius) + 2
        x0, y0 = int(x) - box, int(y) - box
        canvas = np.zeros((2 * box + 1, 2 * box + 1), np.float32)
        centre = (int((x - x0) * 16), int((y - y0) * 16))
        cv2.circle(canvas, centre, int(radius * 16), 1.0, -1, cv2.LINE_AA, 4)
        _paint_clipped(image, canvas, x0, y0, value, rng.uniform(0.5, 1.0))

    for _ in range(rng.poisson(spec.fibre_density * megapixels)):
        steps = int(rng.integers(8, 40))
        step = rng.uniform(3.0, 8.0) * max(scale, 0.5)
        heading = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0.0, 0.25, steps))
        path = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * step, axis=0)
        path += np.array([rng.uniform(0, width), rng.uniform(0, height)])
        x0, y0 = np.floor(path.min(axis=0)).astype(int) - 3
        x1, y1 = np.ceil(path.max(axis=0)).astype(int) + 3
        canvas = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.float32)
        points = np.round((path - np.array([x0, y0])) * 16).astype(np.int32).reshape(-1, 1, 2)
        thickness = max(1, round(rng.uniform(0.8, 2.5) * max(scale, 0.5)))
        cv2.polylines(canvas, [points], False, 1.0, thickness, cv2.LINE_AA, 4)
        value = level * rng.uniform(0.1, 0.5) if rng.random() < 0.5 else rng.uniform(0.4, 0.9)
        _paint_clipped(image, canvas, int(x0), int(y0), value, rng.uniform(0.3, 0.8))

    shown = np.flatnonzero(present)
    for _ in range(rng.poisson(spec.smudge_density * megapixels)):
        near = rng.random() < spec.smudge_near_marks and len(shown) > 0
        if near:
            # Out of focus and bright, half a mark away from a mark's centre.
            radius = rng.uniform(0.25, 0.6) * spec.mark_size
            node = nodes[shown[int(rng.integers(0, len(shown)))]]
            turn = rng.uniform(0, 2 * math.pi)
            distance = rng.uniform(0.3, 0.8) * spec.mark_size
            y = node[0] + distance * math.sin(turn)
            x = node[1] + distance * math.cos(turn)
            value = rng.uniform(0.6, 1.0)
            strength = rng.uniform(0.4, 0.85)
        else:
            radius = rng.uniform(0.25, 1.2) * spec.mark_size
            y, x = rng.uniform(0, height), rng.uniform(0, width)
            value = rng.uniform(0.45, 0.95) if rng.random() < 0.7 else level * 0.3
            strength = rng.uniform(0.2, 0.7)
        box = int(2.5 * radius) + 2
        x0, y0 = int(x) - box, int(y) - box
        canvas = np.zeros((2 * box + 1, 2 * box + 1), np.float32)
        axes = (int(radius * 16), int(radius * rng.uniform(0.4, 1.0) * 16))
        centre = (int((x - x0) * 16), int((y - y0) * 16))
        cv2.ellipse(canvas, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA, 4)
        canvas = cv2.GaussianBlur(canvas, (0, 0), radius * rng.uniform(0.3, 0.6))
        _paint_clipped(image, canvas, x0, y0, value, strength)


def _paint_clipped(
    image: np.ndarray, canvas: np.ndarray, x0: int, y0: int, value: float, strength: float
) -> None:
    """Blend `value` into `image` with weight canvas*strength, the canvas placed at (x0, y0)."""
    height, width = image.shape
    cy0, cx0 = max(0, -y0), max(0, -x0)
    iy0, ix0 = max(0, y0), max(0, x0)
    iy1 = min(height, y0 + canvas.shape[0])
    ix1 = min(width, x0 + canvas.shape[1])
    if iy1 <= iy0 or ix1 <= ix0:
        return
    weight = canvas[cy0 : cy0 + iy1 - iy0, cx0 : cx0 + ix1 - ix0] * np.float32(strength)
    view = image[iy0:iy1, ix0:ix1]
    view += weight * (np.float32(value) - view)


_SHOULDER = 0.8
"""Where the highlights start to roll off towards the white level."""


def _shoulder(image: np.ndarray) -> np.ndarray:
    """Soft saturation in place: linear up to the shoulder, then tanh towards 1."""
    np.maximum(image, 0.0, out=image)
    excess = image - np.float32(_SHOULDER)
    np.maximum(excess, 0.0, out=excess)
    image -= excess
    room = np.float32(1.0 - _SHOULDER)
    excess /= room
    np.tanh(excess, out=excess)
    excess *= room
    image += excess
    return image


def _quantise(spec: SlideSpec, image: np.ndarray) -> np.ndarray:
    _shoulder(image)
    if spec.gamma != 1.0:
        np.power(image, np.float32(spec.gamma), out=image)
    black, white = spec.black_level, spec.white_level
    if (black, white) != (0.0, 1.0):
        image *= np.float32(white - black)
        image += np.float32(black)
    np.clip(image, 0.0, 1.0, out=image)
    if spec.bit_depth == 8:
        return np.rint(image * 255.0).astype(np.uint8)
    full = float((1 << spec.signal_bits) - 1)
    offset = spec.dark_offset * full
    return np.rint(offset + image * (full - offset)).astype(np.uint16)


def fit_grid_inside(spec: SlideSpec, margin: float = 0.08) -> SlideSpec:
    """The same slide with the whole (rotated, sheared, shifted) grid inside the image, centred.

    Ids are only defined when the acquisition area is in the picture: a grid cut by the image
    border leaves the registration nothing to anchor the first row and column on. The grid is
    shrunk (pitch, offsets and mark size together) only when it does not fit.
    """

    def extent(candidate: SlideSpec) -> tuple[np.ndarray, np.ndarray]:
        # Jitter-free node positions (fixed generator): their bounding box in (y, x).
        nodes = _lattice_nodes(dataclasses.replace(candidate, jitter=0.0), np.random.default_rng(0))
        return nodes.min(axis=0), nodes.max(axis=0)

    low, high = extent(spec)
    reach = 0.5 * spec.mark_size + 3.0 * spec.jitter  # a mark's own size and wobble
    room = (1.0 - 2.0 * margin) * np.array([spec.height, spec.width]) - 2.0 * reach
    shrink = float(min(1.0, *(room / np.maximum(high - low, 1e-9))))
    scaled = dataclasses.replace(
        spec,
        pitch_x=spec.pitch_x * shrink,
        pitch_y=spec.pitch_y * shrink,
        row_shift=spec.row_shift * shrink,
        row_spacing_jitter=spec.row_spacing_jitter * shrink,
        jitter=spec.jitter * shrink,
        mark_size=max(8.0, spec.mark_size * shrink),
    )
    low, high = extent(scaled)
    centre = np.array([spec.height, spec.width]) / 2.0
    shift = centre - (low + high) / 2.0
    return dataclasses.replace(
        scaled, origin_y=scaled.origin_y + shift[0], origin_x=scaled.origin_x + shift[1]
    )


def generate_slide(spec: SlideSpec, seed: int) -> SyntheticSlide:
    """Render the slide described by `spec`; identical arrays for the same (spec, seed)."""
    _validate_spec(spec)
    rng = np.random.default_rng([seed, 0x5EED])
    nodes = _lattice_nodes(spec, rng)
    labels, dimmed = _render_labels(spec, nodes, rng)
    mask = labels > 0
    present = np.zeros(spec.rows * spec.cols, bool)
    ids = np.unique(labels)
    present[ids[ids > 0].astype(np.int64) - 1] = True

    shape = (spec.height, spec.width)
    # The finest grain field is shared by the background and the inside of the marks.
    fine = _smooth_noise(rng, shape, spec.grain_size)
    image = _background(spec, rng, fine)
    premultiplied, alpha = _marks_layer(spec, labels, dimmed, fine, rng)
    del fine
    alpha -= np.float32(1.0)
    image *= -alpha  # image * (1 - alpha) + premultiplied
    image += premultiplied
    del premultiplied, alpha
    _draw_debris(spec, image, rng, nodes, present)
    image *= _illumination(spec, rng)
    dark_scale = rng.uniform(0.6, 0.85)
    if spec.polarity == "dark":
        # Dark marks on a lighter matrix: invert, keeping the matrix off the white level.
        _shoulder(image)
        np.subtract(np.float32(1.0), image, out=image)
        image *= np.float32(dark_scale)
    if spec.blur_sigma > 0:
        image = cv2.GaussianBlur(image, (0, 0), spec.blur_sigma, borderType=cv2.BORDER_REFLECT)
    variance = np.maximum(image, 0.0) * np.float32(spec.shot_noise**2)
    variance += np.float32(spec.read_noise**2)
    np.sqrt(variance, out=variance)
    variance *= rng.standard_normal(shape, dtype=np.float32)
    image += variance
    del variance
    return SyntheticSlide(
        image=_quantise(spec, image),
        mask=mask,
        labels=labels,
        spec=spec,
        nodes=nodes,
        present=present,
    )


# --------------------------------------------------------------------------------------------
# Writing to disk


def _spec_json(spec: SlideSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), indent=2) + "\n"


def write_training_layout(
    root: Path,
    slide: SyntheticSlide,
    *,
    split: str,
    dataset: str,
    group: str,
    tile_size: int | None = 512,
) -> None:
    """Write training pairs: root/<split>/<dataset>/<group>/{source,mask}/NNNN.png.

    The slide is cut into `tile_size` squares (the last row/column of tiles is shifted
    inwards so every tile is full); `tile_size=None` writes the whole slide as 0000.png.
    Sources keep the slide's bit depth; masks are 0/255 uint8.
    """
    if split not in ("train", "valid"):
        raise SynthSpecError(f"split must be 'train' or 'valid', got {split!r}")
    base = Path(root) / split / dataset / group
    height, width = slide.image.shape
    size_y = height if tile_size is None else min(tile_size, height)
    size_x = width if tile_size is None else min(tile_size, width)
    starts_y = _tile_starts(height, size_y)
    starts_x = _tile_starts(width, size_x)
    index = 0
    for y0 in starts_y:
        for x0 in starts_x:
            name = f"{index:04d}.png"
            window = (slice(y0, y0 + size_y), slice(x0, x0 + size_x))
            write_png(base / "source" / name, slide.image[window])
            write_png(base / "mask" / name, slide.mask[window].astype(np.uint8) * 255)
            index += 1


def _tile_starts(length: int, size: int) -> list[int]:
    starts = list(range(0, max(length - size, 0) + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def write_dataset_layout(ds_path: Path, slide: SyntheticSlide, *, group: str) -> None:
    """Write an inference dataset group plus ground truth the pipeline never reads.

    ds_path/source/<group>/source.png (source.tiff when 16-bit) and
    ds_path/ground_truth/<group>/{mask.png (0/255), labels.png (uint16), spec.json}.
    """
    ds_path = Path(ds_path)
    source_dir = ds_path / "source" / group
    if slide.image.dtype == np.uint16:
        write_tiff(source_dir / "source.tiff", slide.image)
    else:
        write_png(source_dir / "source.png", slide.image)
    truth = ds_path / "ground_truth" / group
    write_png(truth / "mask.png", slide.mask.astype(np.uint8) * 255)
    write_png(truth / "labels.png", slide.labels)
    (truth / "spec.json").write_text(_spec_json(slide.spec))
