"""A rendered synthetic slide and its ground truth; `generate_slide` puts the layers together.

A slide is fully described by a `SlideSpec` plus an integer seed: same (spec, seed) gives
byte-identical image, mask and label arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.synth.background import background
from model.synth.camera import blur_and_noise, illumination, quantise, shoulder
from model.synth.debris import draw_debris
from model.synth.grid import lattice_nodes
from model.synth.labels import render_labels
from model.synth.marks import marks_layer
from model.synth.noise import smooth_noise
from model.synth.spec import SlideSpec, validate_spec


@dataclass
class SyntheticSlide:
    """One rendered slide and its ground truth."""

    image: np.ndarray  # (H, W) uint8 or uint16
    mask: np.ndarray  # (H, W) bool, True on marks
    labels: np.ndarray  # (H, W) uint16, row*cols+col+1 of each mark's node, 0 background
    spec: SlideSpec
    nodes: np.ndarray  # (rows*cols, 2) float64 (y, x) laser position of every node
    present: np.ndarray  # (rows*cols,) bool, the node's mark has pixels in the image


def generate_slide(spec: SlideSpec, seed: int) -> SyntheticSlide:
    """Render the slide described by `spec`; identical arrays for the same (spec, seed)."""
    validate_spec(spec)
    # One generator for every layer, in a fixed order: the order fixes each seed's slide.
    rng = np.random.default_rng([seed, 0x5EED])
    # The opt-in styles draw from a stream of their own: one switched on adds its feature to
    # the same slide, and one switched off leaves every draw of `rng` where it was.
    style_rng = np.random.default_rng([seed, 0x5EED, 0x57])
    nodes = lattice_nodes(spec, rng)
    marks = render_labels(spec, nodes, rng, style_rng)
    labels = marks.labels
    mask = labels > 0
    present = np.zeros(spec.rows * spec.cols, bool)
    ids = np.unique(labels)
    present[ids[ids > 0].astype(np.int64) - 1] = True

    # The finest grain field is shared by the background and the inside of the marks.
    fine = smooth_noise(rng, (spec.height, spec.width), spec.grain_size)
    image = background(spec, rng, fine, style_rng)
    premultiplied, alpha = marks_layer(spec, marks, fine, rng)
    del fine
    alpha -= np.float32(1.0)
    image *= -alpha  # image * (1 - alpha) + premultiplied
    image += premultiplied
    del premultiplied, alpha
    draw_debris(spec, image, rng, nodes, present)
    image *= illumination(spec, rng)
    dark_scale = rng.uniform(0.6, 0.85)
    if spec.polarity == "dark":
        # Dark marks on a lighter matrix: invert, keeping the matrix off the white level.
        shoulder(image)
        np.subtract(np.float32(1.0), image, out=image)
        image *= np.float32(dark_scale)
    image = blur_and_noise(spec, image, rng)
    return SyntheticSlide(
        image=quantise(spec, image),
        mask=mask,
        labels=labels,
        spec=spec,
        nodes=nodes,
        present=present,
    )
