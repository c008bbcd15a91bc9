"""Overlays of marks on a microscopy image: tinted marks, ids written, contrast stretched."""

from __future__ import annotations

import numpy as np

from model.register.overlay import render_overlay
from tests.model.grid_masks import GridSpec, make_grid_mask
from tests.model.register.cases import register_grid


def test_render_overlay_tints_marks_and_writes_ids() -> None:
    grid = make_grid_mask(GridSpec(rows=5, cols=6, pitch_x=60, pitch_y=60, seed=59))
    registration = register_grid(grid)
    background = np.full(grid.mask.shape, 100, np.uint16)
    plain = render_overlay(background, grid.mask)
    assert plain.shape == (*grid.mask.shape, 3) and plain.dtype == np.uint8
    inside = plain[grid.mask]
    assert np.all(inside[:, 0] > inside[:, 1])  # red tint on marks
    assert np.all(plain[~grid.mask] == plain[~grid.mask][0])  # untouched background
    with_ids = render_overlay(background, registration.labels, registration.marks)
    text = np.all(with_ids == 255, axis=-1)
    assert text.sum() > 30 * 20  # white digits on every mark


def test_overlays_stretch_the_sample_not_its_padding_or_nan() -> None:
    """A white border does not dim the slide in its overlay; NaN pixels do not blacken it."""
    rng = np.random.default_rng(2)
    slide = rng.integers(20, 90, (200, 240)).astype(np.uint8)
    mask = np.zeros(slide.shape, bool)
    padded = np.full((400, 500), 255, np.uint8)
    padded[100:300, 130:370] = slide
    np.testing.assert_array_equal(
        render_overlay(padded, np.zeros(padded.shape, bool))[100:300, 130:370],
        render_overlay(slide, mask),
    )
    with_nan = slide.astype(np.float32)
    with_nan[:20] = np.nan
    overlay = render_overlay(with_nan, mask)
    assert overlay[20:].max() == 255 and overlay[20:].min() == 0  # stretched, not all black
