"""Outlines of single marks: crescents, chevrons, ellipses and blobs as polygons in local
coordinates (centred on the origin, x right, y down), and placing them on the slide."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class MarkOutline:
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


def _crescent(size: float, u: np.ndarray) -> MarkOutline:
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
    return _scaled(MarkOutline(parts, centreline), size)


def _scaled(outline: MarkOutline, size: float) -> MarkOutline:
    """Scale an outline so that its larger bounding-box side equals `size`."""
    every = np.concatenate(outline.parts, axis=0)
    extent = float((every.max(axis=0) - every.min(axis=0)).max())
    factor = size / max(extent, 1e-9)
    return MarkOutline([p * factor for p in outline.parts], outline.centreline * factor)


def _chevron(size: float, u: np.ndarray) -> MarkOutline:
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
    return _scaled(MarkOutline([p - shift for p in parts], centreline - shift), size)


def _circle(radius: float, n: int) -> np.ndarray:
    phi = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([radius * np.cos(phi), radius * np.sin(phi)], axis=1)


def _ellipse(size: float, u: np.ndarray) -> MarkOutline:
    a = size / 2.0
    b = a * (0.5 + 0.45 * u[0])
    phi = np.linspace(0.0, 2 * math.pi, 40, endpoint=False)
    outline = np.stack([a * np.cos(phi), b * np.sin(phi)], axis=1)
    return MarkOutline([outline], np.array([[-a, 0.0], [0.0, 0.0], [a, 0.0]]))


def _blob(size: float, u: np.ndarray) -> MarkOutline:
    """Irregular lobed outline: a circle with random low harmonics."""
    phi = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
    r = np.ones_like(phi)
    for k in range(2, 6):
        amplitude = (0.05 + 0.12 * u[k]) / (k - 1) ** 0.5
        r += amplitude * np.cos(k * phi + 2 * math.pi * u[k + 4])
    r *= size / 2.0 / r.max()
    outline = np.stack([r * np.cos(phi), r * np.sin(phi) * (0.75 + 0.25 * u[1])], axis=1)
    half = size / 2.0
    return MarkOutline([outline], np.array([[-half, 0.0], [0.0, 0.0], [half, 0.0]]))


OUTLINES = {"crescent": _crescent, "chevron": _chevron, "ellipse": _ellipse, "blob": _blob}


def mirrored(outline: MarkOutline) -> MarkOutline:
    """The outline flipped top to bottom (a crescent with its long arm on top)."""
    flip = np.array([1.0, -1.0])
    return MarkOutline([p * flip for p in outline.parts], outline.centreline * flip)


def place(outline: MarkOutline, angle_rad: float, y: float, x: float) -> MarkOutline:
    """Rotate a local outline and centre its (rotated) bounding box on (y, x)."""
    every = np.concatenate(outline.parts, axis=0)
    cos_a, sin_a = math.cos(angle_rad), math.sin(angle_rad)
    rotation = np.array([[cos_a, sin_a], [-sin_a, cos_a]])  # row-vector form of R(angle)
    turned = every @ rotation
    offset = np.array([x, y]) - (turned.min(axis=0) + turned.max(axis=0)) / 2.0
    parts = np.split(turned + offset, np.cumsum([len(p) for p in outline.parts[:-1]]))
    return MarkOutline(parts, outline.centreline @ rotation + offset)
