"""Percentile normalization on the full bit depth."""

import cv2
import numpy as np
import pytest

from model.image.normalize import (
    fill_padding,
    find_padding,
    histogram_window,
    intensity_window,
    normalize_intensity,
    to_uint8,
    value_histogram,
)


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


def _textured(shape=(300, 400), dtype=np.uint16, seed=5) -> np.ndarray:
    """Noise that never reaches the darkest or brightest level of `dtype`."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(1000, 5000, shape).astype(dtype)
        if dtype == np.uint16
        else (rng.integers(30, 220, shape).astype(dtype))
    )


@pytest.mark.parametrize("value", [0, 65535])
def test_a_padded_border_is_left_out_of_the_window(value):
    sample = _textured()
    padded = np.full((500, 700), value, np.uint16)
    padded[100:400, 150:550] = sample
    window = intensity_window(padded)
    expected = intensity_window(sample)
    assert (window.low, window.high) == (expected.low, expected.high)
    padding = find_padding(padded)
    assert padding.sum() == padded.size - sample.size
    assert not padding[100:400, 150:550].any()


def test_padding_of_float_and_rgb_images_is_left_out_too():
    sample = _textured().astype(np.float32)
    padded = np.zeros((500, 700), np.float32)
    padded[100:400, 150:550] = sample
    padded[0, 0] = np.nan  # non-finite pixels neither count nor break the search
    window = intensity_window(padded)
    assert window.low == pytest.approx(np.percentile(sample, 1))
    rgb = np.dstack([_textured(seed=s).astype(np.uint8) for s in (1, 2, 3)])
    rgb_padded = np.zeros((500, 700, 3), np.uint8)
    rgb_padded[100:400, 150:550] = rgb
    got, expected = intensity_window(rgb_padded), intensity_window(rgb)
    assert (got.low, got.high) == (expected.low, expected.high)


def test_saturated_marks_are_not_padding():
    """Marks of up to 60 px at the brightest level, however many, stay in the window."""
    image = _textured(shape=(600, 600), dtype=np.uint8)
    for y in range(40, 600, 100):
        for x in range(40, 600, 100):
            cv2.circle(image, (x, y), 30, 255, thickness=-1)  # 61 px discs, 25 % of pixels
    assert find_padding(image) is None
    assert intensity_window(image).high == 255


def test_the_narrow_tips_of_rotated_corners_are_padding_too():
    image = _textured(dtype=np.uint8)
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    corner = rows + cols < 150  # a triangle narrowing to one pixel
    image[corner] = 0
    np.testing.assert_array_equal(find_padding(image), corner)


def test_no_padding_in_a_plain_or_a_flat_image():
    assert find_padding(_textured()) is None
    assert find_padding(np.zeros((200, 200), np.uint8)) is None  # nothing else to keep
    assert intensity_window(np.zeros((200, 200), np.uint8)).high == 0


def test_padding_is_filled_from_the_sample_the_same_way_every_time():
    image = _textured(dtype=np.uint16)
    image[:, :120] = 0
    padding = find_padding(image)
    filled = fill_padding(image, padding)
    np.testing.assert_array_equal(filled[~padding], image[~padding])
    assert filled[padding].min() >= 1000 and filled[padding].max() < 5000
    np.testing.assert_array_equal(fill_padding(image, padding), filled)
    assert image[:, :120].max() == 0  # the input is not changed


def test_histogram_counts_stay_exact_beyond_float32():
    """OpenCV counts in float32 (exact to 2**24): more pixels of one value must still add up."""
    image = np.zeros((4200, 4200), np.uint8)  # 17.64 M pixels > 2**24
    image[0, :7] = 9
    counts = value_histogram(image)
    assert counts[0] == 4200 * 4200 - 7 and counts[9] == 7 and counts.sum() == image.size
    strided = np.arange(60000, dtype=np.uint16).reshape(200, 300)[::3, ::7]
    np.testing.assert_array_equal(
        value_histogram(strided), np.bincount(strided.ravel(), minlength=65536)
    )


def test_marks_alone_on_an_empty_level_are_not_surrounded_by_padding():
    """A background-subtracted image is mostly 0 around its marks, but that 0 is the sample's
    own background, not padding around it: the window counts it as before."""
    image = np.zeros((600, 600), np.uint8)
    rng = np.random.default_rng(4)
    for y in range(50, 600, 120):  # gaps of ~95 px: the empty level holds 65 px squares
        for x in range(50, 600, 120):
            cv2.circle(image, (x, y), 12, int(rng.integers(120, 250)), thickness=-1)
    assert find_padding(image) is None
    window = intensity_window(image)
    assert (window.low, window.high) == tuple(np.percentile(image, (1, 99)))


def test_saturated_marks_cut_by_the_image_border_are_not_padding():
    """A square must fit inside the image: a mark cut by a corner is not a padded corner."""
    image = _textured(shape=(600, 600), dtype=np.uint8)
    for y in range(20, 600, 100):
        for x in range(20, 600, 100):
            cv2.circle(image, (x, y), 30, 255, thickness=-1)  # the first ones cut by the border
    assert find_padding(image) is None


def test_non_finite_pixels_are_padding_wherever_they_are():
    image = _textured().astype(np.float32)
    image[:5, :] = np.nan  # thin: no square fits, yet no data either
    image[100, 100] = -np.inf
    padding = find_padding(image)
    assert padding[:5].all() and padding[100, 100] and padding.sum() == 5 * 400 + 1


def test_alpha_does_not_hide_padding():
    rgba = np.dstack(
        [_textured(dtype=np.uint8, seed=s) for s in (1, 2, 3)]
        + [np.full((300, 400), 255, np.uint8)]
    )
    rgba[:, :150, :3] = 0
    assert find_padding(rgba)[:, :150].all()


def test_fill_padding_wants_a_gray_image_and_empty_histograms_are_zero():
    with pytest.raises(ValueError, match="gray"):
        fill_padding(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), bool))
    assert not value_histogram(np.zeros((5, 0), np.uint16)).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_the_window_from_a_histogram_is_the_images(dtype):
    """What the GPU pipeline computes from a histogram it counted on the device."""
    rng = np.random.default_rng(6)
    image = rng.integers(10, 200, (90, 110)).astype(dtype)
    assert histogram_window(value_histogram(image), 2.0, 97.0) == intensity_window(image, 2, 97)
    # A level at either end that may be padding: only the pixels can tell.
    image[:40, :40] = 0
    assert histogram_window(value_histogram(image)) is None
