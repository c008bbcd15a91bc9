"""Debris on a synthetic slide, never part of a mark: dust specks, thin fibres and
out-of-focus smudges, some of them right next to a mark."""

from __future__ import annotations

import math

import cv2
import numpy as np

from model.synth.spec import SlideSpec


def draw_debris(
    spec: SlideSpec,
    image: np.ndarray,
    rng: np.random.Generator,
    nodes: np.ndarray,
    present: np.ndarray,
) -> None:
    """Dust specks, fibres and out-of-focus smudges painted over everything (not marks);
    some smudges sit next to a mark and partly merge with it."""
    _draw_dust(spec, image, rng)
    _draw_fibres(spec, image, rng)
    _draw_smudges(spec, image, rng, nodes, present)


def _draw_dust(spec: SlideSpec, image: np.ndarray, rng: np.random.Generator) -> None:
    """Small round specks, mostly darker than the matrix, some bright."""
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


def _draw_fibres(spec: SlideSpec, image: np.ndarray, rng: np.random.Generator) -> None:
    """Thin wandering lines, dark or bright, half transparent."""
    height, width = image.shape
    megapixels = height * width / 1e6
    level = spec.background_level
    scale = spec.mark_size / 25.0
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


def _draw_smudges(
    spec: SlideSpec,
    image: np.ndarray,
    rng: np.random.Generator,
    nodes: np.ndarray,
    present: np.ndarray,
) -> None:
    """Blurred ellipses anywhere, and bright ones half a mark away from a shown mark."""
    height, width = image.shape
    megapixels = height * width / 1e6
    level = spec.background_level
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
