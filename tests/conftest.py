"""Shared pytest fixtures."""

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture
def real_crops() -> list[Path]:
    """The real microscopy crops beside the checkout (skips when they are absent)."""
    crops = sorted(REAL_DATA.glob("*.png"))
    if not crops:
        pytest.skip(f"real crops not found in {REAL_DATA}")
    return crops
