"""Tests of the matrix: the fibre streaks and blotches of the opt-in styles."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from model.synth.slide import generate_slide
from tests.model.synth.slides import plain_spec


def matrix_pixels(spec_changes: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    """The slide's image as floats and where it shows only the matrix (far from marks)."""
    quiet = {"dust_density": 0.0, "fibre_density": 0.0, "smudge_density": 0.0}
    slide = generate_slide(plain_spec(**quiet, **spec_changes), 4)
    return slide.image.astype(float), ~ndimage.binary_dilation(slide.mask, iterations=6)


def anisotropy(image: np.ndarray, far: np.ndarray) -> float:
    """How much more the matrix changes going down than going right."""
    across = np.abs(np.diff(image, axis=0))[far[1:, :]].mean()
    along = np.abs(np.diff(image, axis=1))[far[:, 1:]].mean()
    return float(across / along)


def test_streaks_run_along_their_angle() -> None:
    plain = anisotropy(*matrix_pixels({}))
    horizontal = anisotropy(*matrix_pixels({"streak_strength": 1.5, "streak_angle_deg": 0.0}))
    vertical = anisotropy(*matrix_pixels({"streak_strength": 1.5, "streak_angle_deg": 90.0}))
    assert horizontal > 1.2 * plain  # horizontal fibres: the image changes most going down
    assert vertical < plain / 1.2


def test_blotches_make_the_matrix_uneven_over_large_areas() -> None:
    def coarse_spread(image: np.ndarray) -> float:
        # Spread of 16 px block means: large blotches survive the averaging, grain does not.
        blocks = image[:256, :256].reshape(16, 16, 16, 16).mean(axis=(1, 3))
        return float(blocks.std())

    # Marks at the matrix level (contrast 0), so that only the matrix varies.
    plain, _ = matrix_pixels({"contrast": 0.0})
    blotchy, _ = matrix_pixels({"contrast": 0.0, "blotch_strength": 0.6, "blotch_size": 8.0})
    assert coarse_spread(blotchy) > 1.5 * coarse_spread(plain)
