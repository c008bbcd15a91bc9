"""Fixtures shared by the synthetic-slide tests."""

from __future__ import annotations

import pytest

from model.synth.slide import SyntheticSlide, generate_slide
from model.synth.styles import random_spec


@pytest.fixture(scope="module")
def varied_slides() -> list[SyntheticSlide]:
    """A handful of fully random 256 px slides covering shapes, polarities and depths."""
    return [generate_slide(random_spec(seed, height=256, width=320), seed) for seed in range(8)]
