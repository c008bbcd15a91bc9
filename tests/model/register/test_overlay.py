"""Overlays of marks on a microscopy image: tinted marks, ids written, contrast stretched."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from model.register import overlay
from model.register.overlay import render_overlay
from model.register.records import MarkRecord
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


@pytest.mark.parametrize("with_ids", [False, True])
def test_overlay_tinted_in_bands_as_in_one_go(monkeypatch, with_ids) -> None:
    """Bands of a few rows (the bound on a large slide's memory) change no pixel."""
    rng = np.random.default_rng(5)
    background = rng.integers(0, 65536, (61, 47), dtype=np.uint16)
    labels = rng.integers(0, 40, (61, 47)).astype(np.uint16) * (rng.random((61, 47)) < 0.3)
    marks = [MarkRecord(i, 0, i, 5.0, 5.0, 10, (0, 0, 3, 3)) for i in range(1, 4)]
    as_mask = labels if with_ids else labels > 0
    whole = render_overlay(background, as_mask, marks if with_ids else None)
    monkeypatch.setattr(overlay, "_BAND_PIXELS", 3 * 47)
    banded = render_overlay(background, as_mask, marks if with_ids else None)
    np.testing.assert_array_equal(banded, whole)
    assert (whole != cv2.cvtColor(overlay._gray_uint8(background), cv2.COLOR_GRAY2RGB)).any()
