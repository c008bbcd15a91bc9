"""Tests of the acquisition grid of a synthetic slide."""

from __future__ import annotations

import pytest

from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec


@pytest.mark.parametrize("seed", range(6))
def test_fit_grid_inside_puts_every_node_in_the_image(seed):
    spec = fit_grid_inside(random_spec(seed, height=800, width=700, rows=15, cols=12))
    slide = generate_slide(spec, seed)
    y, x = slide.nodes[:, 0], slide.nodes[:, 1]
    assert y.min() > 0.05 * spec.height and y.max() < 0.95 * spec.height
    assert x.min() > 0.05 * spec.width and x.max() < 0.95 * spec.width
    assert slide.present.sum() > 0.5 * spec.rows * spec.cols
