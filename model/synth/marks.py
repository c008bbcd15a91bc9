"""How the marks of a synthetic slide look: brightness, opacity, rim or dark outline and soft
edge of every mark, painted from the label image, and the ghosts beside them."""

from __future__ import annotations

import cv2
import numpy as np

from model.synth.labels import RenderedMarks
from model.synth.spec import SlideSpec


def marks_layer(
    spec: SlideSpec,
    marks: RenderedMarks,
    fine: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied mark intensity and opacity per pixel: flat, near-saturated marks with
    a per-mark level, a faint rim or edge falloff (or a dark outline), a little texture, a
    soft edge; the ghosts, where there are any, as fainter copies of their mark."""
    labels = marks.labels
    count = spec.rows * spec.cols
    background = spec.background_level
    top = rng.uniform(1.1, 1.6)  # into the shoulder: flat, nearly saturated marks
    if spec.contrast >= 0:
        level = background + spec.contrast * (top - background)
    else:
        level = background * (1.0 + spec.contrast)  # darker than the matrix
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
    if spec.outline_strength > 0:
        profile -= spec.outline_strength * np.exp(-(((depth - 1.0) / spec.outline_width) ** 2))
    del depth
    profile *= 1.0 + spec.mark_texture * fine
    alpha = opacity[labels]
    for ys, xs, mark_id, factor in marks.dimmed:
        own = labels[ys, xs] == mark_id
        alpha[ys[own], xs[own]] *= np.float32(factor)
    premultiplied = per_mark[labels]
    premultiplied *= profile
    premultiplied *= alpha
    del profile
    if marks.ghosts is not None:
        _add_ghosts(spec, labels, marks.ghosts, per_mark, opacity, fine, premultiplied, alpha)
    if spec.edge_softness > 0:
        # Blurring the premultiplied layer and its opacity alike gives a soft edge that
        # spills a pixel or two into the background, as a defocused bright mark does.
        sigma = spec.edge_softness
        premultiplied = cv2.GaussianBlur(premultiplied, (0, 0), sigma)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    return premultiplied, alpha


def _add_ghosts(
    spec: SlideSpec,
    labels: np.ndarray,
    ghosts: np.ndarray,
    per_mark: np.ndarray,
    opacity: np.ndarray,
    fine: np.ndarray,
    premultiplied: np.ndarray,
    alpha: np.ndarray,
) -> None:
    """Composite the ghosts under the marks: the level of their mark, `ghost_brightness` of
    its opacity, and nothing where a mark (the truth) already is."""
    ghost_alpha = opacity[ghosts] * np.float32(spec.ghost_brightness)
    ghost_alpha[labels > 0] = 0.0
    ghost = per_mark[ghosts] * (1.0 + spec.mark_texture * fine)
    ghost *= ghost_alpha
    premultiplied += ghost
    alpha += ghost_alpha
