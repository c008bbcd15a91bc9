"""Percentile normalization on the full bit depth."""

import numpy as np
import pytest

from model.normalize import intensity_window, normalize_intensity, to_uint8


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(("low", "high"), [(1.0, 99.0), (0.0, 100.0), (2.5, 97.3)])
def test_histogram_percentiles_match_numpy(dtype, low, high):
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    image = rng.integers(0, top + 1, (123, 77), dtype=dtype)
    window = intensity_window(image, low, high)
    expected = np.percentile(image, (low, high))
    assert window.low == pytest.approx(expected[0])
    assert window.high == pytest.approx(expected[1])


def test_float_images_use_numpy_percentiles():
    image = np.random.default_rng(4).normal(size=(50, 50)).astype(np.float32)
    window = intensity_window(image)
    assert (window.low, window.high) == pytest.approx(tuple(np.percentile(image, (1, 99))))


def test_sixteen_bit_detail_survives():
    # A dim 12-bit image whose signal lives in the low byte: the old reader dropped the low
    # byte first and got a flat image.
    rng = np.random.default_rng(5)
    image = rng.integers(1030, 1130, (64, 64), dtype=np.uint16)  # all >> 8 == 4
    out = normalize_intensity(image)
    assert out.dtype == np.float32
    assert out.min() == 0.0
    assert out.max() == 1.0
    assert len(np.unique(out)) > 90
    assert len(np.unique(image >> 8)) <= 1  # what 8-bit truncation would have kept


def test_output_is_clipped_and_monotonic():
    image = np.arange(0, 1000, dtype=np.uint16).reshape(20, 50)
    out = normalize_intensity(image, 10, 90)
    assert out.min() == 0.0
    assert out.max() == 1.0
    assert np.all(np.diff(out.ravel()) >= 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_flat_image_does_not_divide_by_zero(dtype):
    image = np.full((10, 10), 7, dtype=dtype)
    with np.errstate(all="raise"):
        out = normalize_intensity(image)
    assert np.all(out == 0.0)
    assert np.all(np.isfinite(out))


def test_rgb_percentiles_are_joint_over_channels():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    window = intensity_window(image)
    assert window.low == pytest.approx(np.percentile(image, 1))
    assert normalize_intensity(image).shape == (30, 30, 3)


def test_bad_percentiles_are_refused():
    with pytest.raises(ValueError, match="percentiles"):
        intensity_window(np.zeros((3, 3), np.uint8), 50, 10)


def test_to_uint8_rounds_and_clips():
    assert to_uint8(np.array([-1.0, 0.0, 0.5, 1.0, 2.0])).tolist() == [0, 0, 128, 255, 255]
