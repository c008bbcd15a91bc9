"""The acquisition grid of a synthetic slide: where every laser shot lands, and fitting the
whole grid inside the image."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from model.synth.spec import SlideSpec


def lattice_nodes(spec: SlideSpec, rng: np.random.Generator) -> np.ndarray:
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


def fit_grid_inside(spec: SlideSpec, margin: float = 0.08) -> SlideSpec:
    """The same slide with the whole (rotated, sheared, shifted) grid inside the image, centred.

    Ids are only defined when the acquisition area is in the picture: a grid cut by the image
    border leaves the registration nothing to anchor the first row and column on. The grid is
    shrunk (pitch, offsets and mark size together) only when it does not fit.
    """
    low, high = _extent(spec)
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
    low, high = _extent(scaled)
    centre = np.array([spec.height, spec.width]) / 2.0
    shift = centre - (low + high) / 2.0
    return dataclasses.replace(
        scaled, origin_y=scaled.origin_y + shift[0], origin_x=scaled.origin_x + shift[1]
    )


def _extent(spec: SlideSpec) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box in (y, x) of the jitter-free node positions (fixed generator)."""
    nodes = lattice_nodes(dataclasses.replace(spec, jitter=0.0), np.random.default_rng(0))
    return nodes.min(axis=0), nodes.max(axis=0)
