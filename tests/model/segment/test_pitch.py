"""The grid pitch of an image and the scale chosen from it."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from model.segment.pitch import (
    SMALL_MARK_SCALE,
    SMALL_PITCH_PX,
    TARGET_PITCH_PX,
    auto_scale,
    estimate_mark_pitch,
)


def grid_image(pitch_y: float, pitch_x: float, angle_deg: float, size: int = 1200) -> np.ndarray:
    """Gaussian marks on a rotated lattice over smooth noise, as uint16."""
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), 1.5) * 0.5
    angle = math.radians(angle_deg)
    row = np.array([math.cos(angle), math.sin(angle)]) * pitch_y  # (dy, dx) between rows
    col = np.array([-math.sin(angle), math.cos(angle)]) * pitch_x
    yy, xx = np.mgrid[0:size, 0:size]
    sigma = min(pitch_x, pitch_y) / 6
    n = int(size / min(pitch_x, pitch_y)) + 3
    for i in range(-n, n):
        for j in range(-n, n):
            cy, cx = i * row + j * col + size / 2
            if -20 < cy < size + 20 and -20 < cx < size + 20:
                y0, y1 = int(max(cy - 4 * sigma, 0)), int(min(cy + 4 * sigma + 1, size))
                x0, x1 = int(max(cx - 4 * sigma, 0)), int(min(cx + 4 * sigma + 1, size))
                if y1 > y0 and x1 > x0:
                    d2 = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2
                    image[y0:y1, x0:x1] += np.exp(-d2 / (2 * sigma**2))
    return (image / image.max() * 60000).astype(np.uint16)


@pytest.mark.parametrize(
    ("pitch_y", "pitch_x", "angle"), [(40.0, 46.0, 3.0), (95.0, 88.0, -7.0), (150.0, 160.0, 1.0)]
)
def test_pitch_of_a_synthetic_grid_within_5_percent(pitch_y, pitch_x, angle):
    pitch = estimate_mark_pitch(grid_image(pitch_y, pitch_x, angle))
    assert pitch is not None
    assert abs(pitch / min(pitch_x, pitch_y) - 1) < 0.05


def test_pitch_of_a_generated_slide_within_5_percent():
    from model.synth.slide import generate_slide
    from model.synth.styles import random_spec

    spec = random_spec(
        5,
        height=1500,
        width=1400,
        mark_size=24.0,
        row_spacing_jitter=0.0,
        jitter=0.0,
        row_shift=0.0,
    )
    pitch = estimate_mark_pitch(generate_slide(spec, 5).image)
    assert pitch is not None
    assert abs(pitch / min(spec.pitch_x, spec.pitch_y) - 1) < 0.05


@pytest.mark.parametrize("seed", [600006, 700046, 900012])
def test_aligned_crescent_arms_are_not_taken_for_the_grid(seed):
    """Generated slides where every crescent's two arms gave a weak autocorrelation peak at
    under half the pitch, once read as the pitch (8.3 px for 17, 22 for 44, 25 for 84)."""
    from model.synth.slide import generate_slide
    from model.synth.styles import random_spec

    slide = generate_slide(random_spec(seed, height=1024, width=1024), seed)
    pitch = estimate_mark_pitch(slide.image)
    shorter, longer = sorted((slide.spec.pitch_x, slide.spec.pitch_y))
    assert pitch is not None
    assert 0.9 * shorter <= pitch <= 1.1 * longer  # rows may be unevenly spaced


def test_pitch_of_float_input_with_nan_and_inf():
    image = grid_image(40.0, 46.0, 3.0).astype(np.float32) / 60000
    image[100:140, 200:260] = np.nan  # dead pixels, saturated ones
    image[500, 10:30] = np.inf
    pitch = estimate_mark_pitch(image)
    assert pitch is not None
    assert abs(pitch / 40.0 - 1) < 0.05


def test_no_pitch_without_a_grid():
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.random((800, 900), dtype=np.float32), (0, 0), 2.0)
    assert estimate_mark_pitch(texture) is None
    assert estimate_mark_pitch(np.zeros((300, 300), np.uint8)) is None


def test_auto_scale_shrinks_only_large_grids():
    assert auto_scale(None) == 1.0
    assert auto_scale(TARGET_PITCH_PX) == 1.0
    assert auto_scale(1.4 * TARGET_PITCH_PX) == 1.0
    assert auto_scale(2.2 * TARGET_PITCH_PX) == pytest.approx(0.5)
    assert auto_scale(3.4 * TARGET_PITCH_PX) == pytest.approx(1 / 3)
    for pitch in np.linspace(10, 400, 60):
        # After scaling the pitch never drops below the target: marks stay large enough.
        assert pitch * auto_scale(pitch) >= min(pitch, TARGET_PITCH_PX) - 1e-9


def test_accurate_auto_scale_enlarges_small_grids_only():
    assert auto_scale(30.0) == 1.0  # the fast default never enlarges
    assert auto_scale(30.0, accurate=True) == SMALL_MARK_SCALE
    assert auto_scale(SMALL_PITCH_PX - 1, accurate=True) == SMALL_MARK_SCALE
    assert auto_scale(SMALL_PITCH_PX, accurate=True) == 1.0
    assert auto_scale(None, accurate=True) == 1.0  # no grid seen: nothing to go by
    for pitch in (80.0, 2.2 * TARGET_PITCH_PX, 3.4 * TARGET_PITCH_PX):
        assert auto_scale(pitch, accurate=True) == auto_scale(pitch)  # large marks as before
