"""The truth of a synthetic slide: every mark rasterised into a uint16 label image (id
row*cols+col+1), with its fragments, the bridges of touching marks and the double marks;
and, apart from the truth, the ghosts beside the marks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from model.synth.outlines import OUTLINES, MarkOutline, mirrored, place
from model.synth.spec import SlideSpec

# Shapes drawn for "mixed" slides and how often; crescents dominate real data.
_MIXED_SHAPES = ("crescent", "chevron", "ellipse", "blob")
_MIXED_WEIGHTS = np.array([0.5, 0.2, 0.15, 0.15])

# cv2 polygon drawing works on fixed-point coordinates with this many fractional bits,
# which gives sub-pixel accurate mark outlines.
_SUBPIXEL_BITS = 4
_SUBPIXEL_SCALE = 1 << _SUBPIXEL_BITS

Dimmed = list[tuple[np.ndarray, np.ndarray, int, float]]
"""Pixels of the fainter double marks: (ys, xs, id, opacity factor) per mark."""


@dataclass
class RenderedMarks:
    """Where the marks are: the truth, plus what only shows in the image."""

    labels: np.ndarray  # uint16, ids row*cols+col+1, 0 background: the truth
    dimmed: Dimmed  # pixels of the fainter double marks (in `labels`)
    ghosts: np.ndarray | None  # uint16 node id of each ghost pixel (not in `labels`), or None


@dataclass
class _MarkNumbers:
    """Every per-mark random number of a slide, index = node (row-major)."""

    wanted: np.ndarray  # bool: not missing
    sizes: np.ndarray
    angles: np.ndarray  # radians, in the image frame
    shape_index: np.ndarray  # into _MIXED_SHAPES
    shape_params: np.ndarray  # (count, 16) in 0..1
    fragmented: np.ndarray
    cut_params: np.ndarray  # (count, 5)
    touching: np.ndarray
    touch_down: np.ndarray  # bridged to the mark below rather than to the right
    bridge_width: np.ndarray  # relative to the mark size
    doubled: np.ndarray
    double_shift: np.ndarray  # (count, 2) (y, x)
    double_turn: np.ndarray  # radians


def render_labels(
    spec: SlideSpec,
    nodes: np.ndarray,
    rng: np.random.Generator,
    style_rng: np.random.Generator,
) -> RenderedMarks:
    """uint16 label image of all marks (ids row*cols+col+1), the pixels of the fainter double
    marks as (ys, xs, id, opacity factor), and the ghosts (drawn from `style_rng`)."""
    numbers = _draw_mark_numbers(spec, rng)
    labels = np.zeros((spec.height, spec.width), np.uint16)
    reach = 1.2 * numbers.sizes + 2.0
    drawn = np.flatnonzero(numbers.wanted & _near_image(spec, nodes, reach))
    outlines = {
        int(index): _outline(
            spec,
            numbers,
            int(index),
            float(numbers.sizes[index]),
            float(numbers.angles[index]),
            nodes[index],
        )
        for index in drawn
    }
    # Double marks first: the node's own mark and its neighbours keep their pixels.
    dimmed = _draw_double_marks(spec, labels, nodes, numbers, reach)
    # Bridges first: the marks drawn afterwards keep their own pixels.
    _draw_bridges(spec, labels, outlines, numbers, drawn)
    for index in drawn:
        outline = outlines[int(index)]
        cuts = (
            _fragment_cuts(outline, float(numbers.sizes[index]), numbers.cut_params[index])
            if numbers.fragmented[index]
            else []
        )
        _draw_mark(labels, outline, int(index) + 1, cuts)
    ghosts = _draw_ghosts(spec, nodes, numbers, style_rng) if spec.ghost_fraction > 0 else None
    return RenderedMarks(labels, dimmed, ghosts)


def _draw_mark_numbers(spec: SlideSpec, rng: np.random.Generator) -> _MarkNumbers:
    """Every per-mark random number, drawn up front so that the stream does not depend on
    which marks happen to be visible. The order of the draws fixes every seed's slide."""
    rows, cols = spec.rows, spec.cols
    count = rows * cols
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
    doubled, double_shift, double_turn = _draw_double_numbers(spec, rng, grid_cols)
    return _MarkNumbers(
        wanted=wanted,
        sizes=sizes,
        angles=angles,
        shape_index=shape_index,
        shape_params=shape_params,
        fragmented=fragmented,
        cut_params=cut_params,
        touching=touching,
        touch_down=touch_down,
        bridge_width=bridge_width,
        doubled=doubled,
        double_shift=double_shift,
        double_turn=double_turn,
    )


def _draw_double_numbers(
    spec: SlideSpec, rng: np.random.Generator, grid_cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which nodes get a double mark, its (y, x) shift from the node, its extra turn."""
    count = spec.rows * spec.cols
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
    return doubled, double_shift, double_turn


def _near_image(spec: SlideSpec, centres: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Which marks centred at `centres` (y, x) may have pixels in the image."""
    return (
        (centres[:, 0] + reach >= 0)
        & (centres[:, 0] - reach < spec.height)
        & (centres[:, 1] + reach >= 0)
        & (centres[:, 1] - reach < spec.width)
    )


def _outline(
    spec: SlideSpec,
    numbers: _MarkNumbers,
    index: int,
    size: float,
    angle: float,
    centre: np.ndarray,
) -> MarkOutline:
    """The outline of mark `index` at `size`, turned by `angle` and centred on (y, x)."""
    make = OUTLINES[_MIXED_SHAPES[numbers.shape_index[index]]]
    local = make(size, numbers.shape_params[index])
    if spec.mark_mirror:
        local = mirrored(local)
    return place(local, angle, float(centre[0]), float(centre[1]))


def _draw_double_marks(
    spec: SlideSpec,
    labels: np.ndarray,
    nodes: np.ndarray,
    numbers: _MarkNumbers,
    reach: np.ndarray,
) -> Dimmed:
    """Draw the double marks into `labels` with their node's id; return their pixels."""
    dimmed: Dimmed = []
    shifted = nodes + numbers.double_shift
    visible = _near_image(spec, shifted, reach)
    for index in np.flatnonzero(numbers.wanted & numbers.doubled & visible):
        size = float(numbers.sizes[index] * spec.double_scale)
        angle = float(numbers.angles[index] + numbers.double_turn[index])
        outline = _outline(spec, numbers, int(index), size, angle, shifted[index])
        drawn_at = _draw_mark(labels, outline, int(index) + 1, [])
        if drawn_at is not None:
            y0, x0, canvas = drawn_at
            ys, xs = np.nonzero(canvas)
            dimmed.append((ys + y0, xs + x0, int(index) + 1, spec.double_brightness))
    return dimmed


def _draw_bridges(
    spec: SlideSpec,
    labels: np.ndarray,
    outlines: dict[int, MarkOutline],
    numbers: _MarkNumbers,
    drawn: np.ndarray,
) -> None:
    """Join touching marks to their right or lower neighbour, half a bridge each."""
    rows, cols = spec.rows, spec.cols
    for index in drawn[numbers.touching[drawn]]:
        row, col = divmod(int(index), cols)
        if numbers.touch_down[index] and row + 1 < rows:
            neighbour = index + cols
        elif col + 1 < cols:
            neighbour = index + 1
        else:
            continue
        if int(neighbour) not in outlines:
            continue
        a, b = _closest_points(outlines[int(index)], outlines[int(neighbour)])
        if np.linalg.norm(b - a) > 0.8 * numbers.sizes[index]:
            continue  # too far apart to merge plausibly (touching happens at small pitch)
        width = float(numbers.bridge_width[index] * numbers.sizes[index])
        _draw_bridge(labels, a, b, width, (int(index) + 1, int(neighbour) + 1))


def _draw_ghosts(
    spec: SlideSpec, nodes: np.ndarray, numbers: _MarkNumbers, rng: np.random.Generator
) -> np.ndarray:
    """A fainter copy of the mark beside `ghost_fraction` of the shown marks, in an image of
    its own (uint16 node ids) that the truth never sees."""
    count = spec.rows * spec.cols
    ghosted = rng.random(count) < spec.ghost_fraction
    theta = math.radians(spec.ghost_angle_deg + spec.angle_deg) + rng.normal(0.0, 0.15, count)
    distance = spec.ghost_offset * numbers.sizes * (1.0 + rng.normal(0.0, 0.1, count))
    shift = np.stack([np.sin(theta) * distance, np.cos(theta) * distance], axis=1)
    turn = rng.normal(0.0, 0.08, count)
    ghosts = np.zeros((spec.height, spec.width), np.uint16)
    shifted = nodes + shift
    visible = _near_image(spec, shifted, 1.2 * numbers.sizes + 2.0)
    for index in np.flatnonzero(numbers.wanted & ghosted & visible):
        size = float(numbers.sizes[index] * spec.ghost_scale)
        angle = float(numbers.angles[index] + turn[index])
        outline = _outline(spec, numbers, int(index), size, angle, shifted[index])
        _draw_mark(ghosts, outline, int(index) + 1, [])
    return ghosts


def _fixed_point(points: np.ndarray, x0: int, y0: int) -> np.ndarray:
    local = (points - np.array([x0, y0])) * _SUBPIXEL_SCALE
    return np.round(local).astype(np.int32).reshape(-1, 1, 2)


def _bbox(outline: MarkOutline, pad: float) -> tuple[float, float, float, float]:
    every = np.concatenate(outline.parts, axis=0)
    x_min, y_min = every.min(axis=0) - pad
    x_max, y_max = every.max(axis=0) + pad
    return float(x_min), float(y_min), float(x_max), float(y_max)


def _draw_mark(
    labels: np.ndarray,
    outline: MarkOutline,
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
    outline: MarkOutline, size: float, u: np.ndarray
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


def _closest_points(a: MarkOutline, b: MarkOutline) -> tuple[np.ndarray, np.ndarray]:
    pa = np.concatenate(a.parts, axis=0)
    pb = np.concatenate(b.parts, axis=0)
    distance = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=2)
    i, j = np.unravel_index(int(np.argmin(distance)), distance.shape)
    return pa[i], pb[j]
