"""The options of one segmentation pass, and the removal of small components."""

import cv2
import numpy as np
import pytest

from model.errors import ParameterError
from model.segment import single_pass
from model.segment.single_pass import SegmentOptions
from model.segment.tiles import MIN_TILE_SIZE, default_overlap


def test_segment_options_take_the_one_tiling_rule():
    assert SegmentOptions(tile_size=512).overlap == 64
    assert SegmentOptions(tile_size=100).overlap == default_overlap(100) == 50
    assert SegmentOptions(tile_size=128, overlap=0).overlap == 0
    for bad in ({"tile_size": MIN_TILE_SIZE - 1}, {"tile_size": 128, "overlap": 65}):
        with pytest.raises(ParameterError):
            SegmentOptions(**bad)
    with pytest.raises(ParameterError, match="percentiles"):
        SegmentOptions(low_percentile=50, high_percentile=40)


def _small_components_removed_at_once(mask: np.ndarray, min_area: int) -> np.ndarray:
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels]


@pytest.mark.parametrize("band_rows", [1, 3, 7, 50])
def test_small_components_removed_in_bands_as_if_at_once(monkeypatch, band_rows) -> None:
    """Bands of a few rows (a 20000² slide's bands hold 800 rows) give the whole-mask result,
    also for components that cross several bands and for specks cut by a band edge."""
    rng = np.random.default_rng(band_rows)
    kept_and_removed = 0
    for _ in range(30):
        height, width = (int(v) for v in rng.integers(5, 90, 2))
        mask = rng.random((height, width)) < rng.uniform(0.05, 0.6)
        min_area = int(rng.integers(2, 20))
        monkeypatch.setattr(single_pass, "COMPONENT_BAND_PIXELS", band_rows * width)
        expected = _small_components_removed_at_once(mask, min_area)
        kept_and_removed += expected.any() and not np.array_equal(expected, mask)
        np.testing.assert_array_equal(single_pass.remove_small_components(mask, min_area), expected)
        single_pass.remove_small_components(mask, min_area, in_place=True)
        np.testing.assert_array_equal(mask, expected)
    assert kept_and_removed >= 10  # the cases test something
