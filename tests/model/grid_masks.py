"""Deterministic synthetic grid masks with ground-truth ids (registration tests, benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

SHIFT = 4  # OpenCV drawing with 4 fractional bits: sub-pixel centres and radii
ONE = 1 << SHIFT


@dataclass(frozen=True)
class GridSpec:
    """A rows x cols lattice of marks; lengths are pixels unless said otherwise."""

    rows: int = 12
    cols: int = 15
    pitch_x: float = 30.0
    pitch_y: float = 30.0
    angle_deg: float = 0.0  # clockwise on screen (image y down), as in model.synth
    shear: float = 0.0  # a_y = R @ (shear * pitch_y, pitch_y)
    radius: float = 0.3  # mark radius, fraction of the smaller pitch
    radius_jitter: float = 0.05  # relative spread (sd) of the radius
    jitter: float = 0.0  # sd of the node positions, fraction of the smaller pitch
    row_shift: float = 0.0  # serpentine raster: odd rows moved along the rows, fraction of pitch_x
    missing_fraction: float = 0.0
    missing_rows: tuple[int, ...] = ()
    missing_cols: tuple[int, ...] = ()
    ellipse_fraction: float = 0.0
    crescent_fraction: float = 0.0
    fragment_fraction: float = 0.0
    touching_pairs: int = 0
    specks: int = 0
    dust: int = 0  # mark-sized-ish blobs between the nodes (must stay 0)
    margin: float = 1.0  # outermost nodes to the image edge, in smaller pitches (0 cuts marks)
    seed: int = 0
    # Double marks: a smaller copy of a mark (same id) displaced along the columns by
    # double_offset * pitch_y (beyond 0.5 it lies nearer to the next row's node).
    double_fraction: float = 0.0
    double_offset: float = 0.45
    double_scale: float = 0.8
    row_jitter: float = 0.0  # sd of a whole row's displacement across the rows, fraction of pitch_y
    # Uneven steps (rows shot one after another, a stage step off): extra space before row /
    # column k as (k, fraction of the pitch), e.g. ((5, 0.5),) makes the step from row 4 to
    # row 5 1.5 pitches; step_jitter draws every row step from (1 +- step_jitter) * pitch_y.
    row_gaps: tuple[tuple[int, float], ...] = ()
    col_gaps: tuple[tuple[int, float], ...] = ()
    step_jitter: float = 0.0


@dataclass
class GridMask:
    mask: np.ndarray  # (H, W) bool
    labels: np.ndarray  # (H, W) uint16 (uint32 past 65 535 nodes) ground-truth ids, 0 background
    noise: np.ndarray  # (H, W) bool, speck and dust pixels (must get id 0)
    kinds: dict[int, str] = field(default_factory=dict)  # id -> shape kind
    spec: GridSpec = field(default_factory=GridSpec)


def lattice_vectors(spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) vectors one column right and one row down."""
    t = np.radians(spec.angle_deg)
    rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    a_x = rotation @ np.array([spec.pitch_x, 0.0])
    a_y = rotation @ np.array([spec.shear * spec.pitch_y, spec.pitch_y])
    return a_x, a_y


def make_grid_mask(spec: GridSpec) -> GridMask:
    """Draw the marks of `spec` and return the mask with its ground truth."""
    rng = np.random.default_rng(spec.seed)
    pitch = min(spec.pitch_x, spec.pitch_y)
    a_x, a_y = lattice_vectors(spec)
    ii, jj = np.meshgrid(np.arange(spec.rows), np.arange(spec.cols), indexing="ij")
    nodes = ii[..., None] * a_y + jj[..., None] * a_x  # (rows, cols, 2)
    nodes[1::2] += spec.row_shift * a_x
    nodes = nodes + rng.normal(0.0, spec.jitter * pitch, nodes.shape)
    # Extras draw from their own generator: the specs without them keep their masks.
    extra = np.random.default_rng([spec.seed, 7919])
    if spec.row_jitter:
        down = a_y / np.hypot(*a_y)
        shifts = np.clip(extra.normal(0.0, spec.row_jitter, spec.rows), -0.3, 0.3)
        nodes = nodes + (shifts * spec.pitch_y)[:, None, None] * down
    nodes = nodes + _uneven_steps(spec, a_x, a_y)
    margin = spec.margin * pitch
    low = nodes.reshape(-1, 2).min(axis=0)
    span = nodes.reshape(-1, 2).max(axis=0) - low
    width, height = (np.ceil(span + 2 * margin)).astype(int)
    pad = int(np.ceil(max(spec.pitch_x, spec.pitch_y))) + 8
    nodes = nodes - low + margin + pad  # canvas coordinates

    present = rng.random((spec.rows, spec.cols)) >= spec.missing_fraction
    present[list(spec.missing_rows), :] = False
    present[:, list(spec.missing_cols)] = False
    kinds = rng.choice(
        ["disc", "ellipse", "crescent", "fragments"],
        size=(spec.rows, spec.cols),
        p=_kind_probabilities(spec),
    )

    canvas_shape = (height + 2 * pad, width + 2 * pad)
    mask = np.zeros(canvas_shape, np.uint8)
    id_type = np.uint16 if spec.rows * spec.cols <= 65535 else np.uint32  # as amseg writes ids
    labels = np.zeros(canvas_shape, id_type)
    noise = np.zeros(canvas_shape, np.uint8)
    kind_of: dict[int, str] = {}

    if spec.double_fraction:
        # Drawn first: the marks drawn afterwards keep their own pixels where they overlap.
        step = spec.double_offset * a_y
        doubled = present & (extra.random(present.shape) < spec.double_fraction)
        for i, j in np.argwhere(doubled):
            radius = spec.double_scale * spec.radius * pitch
            patch, x0, y0 = _draw_mark("disc", nodes[i, j] + step, radius, extra)
            region = (slice(y0, y0 + patch.shape[0]), slice(x0, x0 + patch.shape[1]))
            mask[region] |= patch
            labels[region][patch > 0] = i * spec.cols + j + 1

    paired = np.zeros_like(present)
    for _ in range(spec.touching_pairs):
        options = np.argwhere(present[:, :-1] & present[:, 1:] & ~paired[:, :-1] & ~paired[:, 1:])
        if options.size == 0:
            break
        i, j = options[rng.integers(options.shape[0])]
        paired[i, j] = paired[i, j + 1] = True
        ids = (i * spec.cols + j + 1, i * spec.cols + j + 2)
        radius = spec.radius * pitch
        _draw_touching(mask, labels, nodes[i, j], nodes[i, j + 1], radius, ids)
        kind_of[ids[0]] = kind_of[ids[1]] = "touching"

    for i in range(spec.rows):
        for j in range(spec.cols):
            if not present[i, j] or paired[i, j]:
                continue
            mark_id = i * spec.cols + j + 1
            radius = max(2.0, spec.radius * pitch * (1 + spec.radius_jitter * rng.normal()))
            patch, x0, y0 = _draw_mark(str(kinds[i, j]), nodes[i, j], radius, rng)
            region = (slice(y0, y0 + patch.shape[0]), slice(x0, x0 + patch.shape[1]))
            mask[region] |= patch
            labels[region][patch > 0] = mark_id
            kind_of[mark_id] = str(kinds[i, j])

    _draw_noise(spec, rng, mask, noise, nodes, a_x, a_y, pitch, canvas_shape)
    crop = (slice(pad, pad + height), slice(pad, pad + width))
    labels = labels[crop].copy()
    visible = set(np.unique(labels).tolist()) - {0}
    return GridMask(
        mask=mask[crop] > 0,
        labels=labels,
        noise=noise[crop] > 0,
        kinds={k: v for k, v in kind_of.items() if k in visible},
        spec=spec,
    )


def _uneven_steps(spec: GridSpec, a_x: np.ndarray, a_y: np.ndarray) -> np.ndarray:
    """(rows, cols, 2) displacement of each node by the extra space of the steps before it."""
    row_extra = np.zeros(spec.rows)
    col_extra = np.zeros(spec.cols)
    for k, extra in spec.row_gaps:
        row_extra[k:] += extra
    for k, extra in spec.col_gaps:
        col_extra[k:] += extra
    if spec.step_jitter:
        steps = np.random.default_rng([spec.seed, 104729]).uniform(
            -spec.step_jitter, spec.step_jitter, spec.rows - 1
        )
        row_extra[1:] += np.cumsum(steps)
    return row_extra[:, None, None] * a_y + col_extra[None, :, None] * a_x


def _kind_probabilities(spec: GridSpec) -> list[float]:
    others = [spec.ellipse_fraction, spec.crescent_fraction, spec.fragment_fraction]
    return [1.0 - sum(others), *others]


def _fixed(value: float) -> int:
    return round(value * ONE)


def _draw_mark(
    kind: str, centre: np.ndarray, radius: float, rng: np.random.Generator
) -> tuple[np.ndarray, int, int]:
    half = int(np.ceil(1.5 * radius)) + 3
    x0, y0 = int(centre[0]) - half, int(centre[1]) - half
    patch = np.zeros((2 * half + 1, 2 * half + 1), np.uint8)
    cx, cy = centre[0] - x0, centre[1] - y0
    c = (_fixed(cx), _fixed(cy))
    if kind == "ellipse":
        axes = (_fixed(1.3 * radius), _fixed(0.75 * radius))
        cv2.ellipse(patch, c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1, cv2.LINE_8, SHIFT)
        return patch, x0, y0
    cv2.circle(patch, c, _fixed(radius), 1, -1, cv2.LINE_8, SHIFT)
    if kind == "crescent":
        # A thin C: the centroid of the remaining pixels lies outside them.
        phi = rng.uniform(0, 2 * np.pi)
        bite = (_fixed(cx + 0.45 * radius * np.cos(phi)), _fixed(cy + 0.45 * radius * np.sin(phi)))
        cv2.circle(patch, bite, _fixed(0.85 * radius), 0, -1, cv2.LINE_8, SHIFT)
        _keep_largest(patch)
    elif kind == "fragments":
        phi = rng.uniform(0, np.pi)
        direction = np.array([np.cos(phi), np.sin(phi)])
        normal = np.array([-direction[1], direction[0]])
        # Two cuts (three pieces) only where the pieces stay well above speck size.
        two_cuts = radius >= 12 and rng.random() < 0.4
        offsets = [-0.35 * radius, 0.35 * radius] if two_cuts else [0.0]
        thickness = max(2, round(0.15 * radius))
        for offset in offsets:
            mid = np.array([cx, cy]) + offset * normal
            a, b = mid - 2 * radius * direction, mid + 2 * radius * direction
            cv2.line(
                patch, (_fixed(a[0]), _fixed(a[1])), (_fixed(b[0]), _fixed(b[1])),
                0, thickness, cv2.LINE_8, SHIFT,
            )  # fmt: skip
        # Crumbs smaller than a speck are not part of the mark (nor of the mask).
        _drop_small(patch, 0.2 * np.pi * radius**2)
    return patch, x0, y0


def _keep_largest(patch: np.ndarray) -> None:
    count, comp, stats, _ = cv2.connectedComponentsWithStats(patch, connectivity=8)
    if count > 2:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        patch[comp != largest] = 0


def _drop_small(patch: np.ndarray, min_area: float) -> None:
    count, comp, stats, _ = cv2.connectedComponentsWithStats(patch, connectivity=8)
    for k in range(1, count):
        if stats[k, cv2.CC_STAT_AREA] < min_area:
            patch[comp == k] = 0


def _draw_touching(
    mask: np.ndarray,
    labels: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    radius: float,
    ids: tuple[int, int],
) -> None:
    """Two somewhat enlarged discs pulled towards each other until they overlap a little;
    each pixel belongs to the nearer centre."""
    half = 0.5 * float(np.hypot(*(b - a)))
    radius = 0.5 * (radius + half)
    pull = (half - radius + 1.5) / half * 0.5 * (b - a)
    a, b = a + pull, b - pull
    low = np.floor(np.minimum(a, b) - radius - 2).astype(int)
    high = np.ceil(np.maximum(a, b) + radius + 2).astype(int)
    patch = np.zeros((high[1] - low[1], high[0] - low[0]), np.uint8)
    for centre in (a, b):
        c = (_fixed(centre[0] - low[0]), _fixed(centre[1] - low[1]))
        cv2.circle(patch, c, _fixed(radius), 1, -1, cv2.LINE_8, SHIFT)
    ys, xs = np.mgrid[low[1] : high[1], low[0] : high[0]]
    nearer_a = (xs - a[0]) ** 2 + (ys - a[1]) ** 2 <= (xs - b[0]) ** 2 + (ys - b[1]) ** 2
    region = (slice(low[1], high[1]), slice(low[0], high[0]))
    mask[region] |= patch
    labels[region][(patch > 0) & nearer_a] = ids[0]
    labels[region][(patch > 0) & ~nearer_a] = ids[1]


def _draw_noise(
    spec: GridSpec,
    rng: np.random.Generator,
    mask: np.ndarray,
    noise: np.ndarray,
    nodes: np.ndarray,
    a_x: np.ndarray,
    a_y: np.ndarray,
    pitch: float,
    shape: tuple[int, int],
) -> None:
    """Specks (a few pixels) anywhere, dust blobs at cell corners; never touching a mark."""
    blobs: list[tuple[np.ndarray, float]] = []
    low, high = nodes.reshape(-1, 2).min(axis=0), nodes.reshape(-1, 2).max(axis=0)
    for _ in range(spec.specks):
        blobs.append((rng.uniform(low - 0.5 * pitch, high + 0.5 * pitch), rng.uniform(0.6, 1.3)))
    for _ in range(spec.dust):
        i, j = rng.integers(spec.rows - 1), rng.integers(spec.cols - 1)
        corner = nodes[i, j] + 0.5 * (a_x + a_y)
        blobs.append((corner, 0.5 * spec.radius * pitch))
    for centre, radius in blobs:
        x0, y0 = int(centre[0] - radius) - 3, int(centre[1] - radius) - 3
        x1, y1 = int(centre[0] + radius) + 4, int(centre[1] + radius) + 4
        if x0 < 0 or y0 < 0 or x1 > shape[1] or y1 > shape[0] or mask[y0:y1, x0:x1].any():
            continue
        c = (_fixed(centre[0]), _fixed(centre[1]))
        cv2.circle(mask, c, _fixed(radius), 1, -1, cv2.LINE_8, SHIFT)
        cv2.circle(noise, c, _fixed(radius), 1, -1, cv2.LINE_8, SHIFT)


def id_accuracy(
    predicted: np.ndarray,
    truth: np.ndarray,
    min_share: float = 0.5,
    max_wrong: float = 0.1,
    sliver: float = 0.2,
) -> dict:
    """Per-mark scoring: a mark is right when at least `min_share` of its pixels carry its id
    and at most `max_wrong` of them carry another (non-zero) id.

    Unlabelled pixels (0) are tolerated below 1 - min_share: speck-sized crumbs of a fragmented
    or border-cut mark are meant to stay 0. Border slivers (visible area below `sliver` x the
    median mark area) are not scored, only counted. Returns accuracy, marks, slivers, wrong ids.
    """
    truth_flat = truth.ravel()
    predicted_flat = predicted.ravel()
    size = int(truth_flat.max()) + 1
    total = np.bincount(truth_flat, minlength=size)
    right = np.bincount(truth_flat[predicted_flat == truth_flat], minlength=size)
    other = np.bincount(
        truth_flat[(predicted_flat != truth_flat) & (predicted_flat > 0)], minlength=size
    )
    ids = np.flatnonzero(total[1:]) + 1
    slivers = total[ids] < sliver * np.median(total[ids]) if ids.size else np.zeros(0, bool)
    ids = ids[~slivers]
    share = right[ids] / total[ids]
    wrong = ids[(share < min_share) | (other[ids] / total[ids] > max_wrong)]
    return {
        "accuracy": float(1.0 - wrong.size / max(ids.size, 1)),
        "marks": int(ids.size),
        "slivers": int(slivers.sum()),
        "wrong_ids": wrong.tolist(),
    }
