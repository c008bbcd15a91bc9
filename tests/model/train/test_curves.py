"""Training curves: axes that show the small changes of a fine-tune."""

from __future__ import annotations

import pytest

from model.train.curves import _value_range


def test_curve_axes_zoom_on_the_data_within_their_bounds():
    # A fine-tune's Dice moves by thousandths: the axis must zoom in, not span 0..1.
    low, high = _value_range([0.9165, 0.9193, 0.9170], 0.0, 1.0)
    assert 0.9 < low < 0.9165 and 0.9193 < high < 0.93
    # Padding never leaves the metric's bounds, and a flat series still gets a range.
    assert _value_range([0.1, 0.999], 0.0, 1.0) == (pytest.approx(0.0101), 1.0)
    assert _value_range([0.5, 0.5], 0.0, 1.0) == (pytest.approx(0.495), pytest.approx(0.505))
    assert _value_range([1.0, 1.0], 0.0, 1.0)[1] == 1.0
