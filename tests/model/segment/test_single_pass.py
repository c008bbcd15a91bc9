"""The options of one segmentation pass."""

import pytest

from model.errors import ParameterError
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
