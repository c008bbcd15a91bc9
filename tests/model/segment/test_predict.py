"""Whole-image prediction: input size kept, resampling and its scale, the second looks
(missed grids, uncertain outlines, running out of memory) and padding left out."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from model.errors import AmsegError
from model.metrics import dice
from model.segment import predict
from model.segment.neural import get_segmenter
from model.segment.pitch import SMALL_MARK_SCALE, SMALL_PITCH_PX
from model.segment.predict import (
    MISSED_GRID_RETRY_SCALE,
    UNCERTAIN_OUTLINE_RATIO,
    count_tiles,
    missed_grid_retry_scale,
    options_for,
    outline_uncertainty,
    predict_image,
    resample,
    restore_segmentation,
    uncertain_outline_retry_scale,
)
from model.segment.runtime import Runtime, RuntimeChoice
from model.segment.segmenter import ClassicalSegmenter
from model.segment.single_pass import MAX_SCALE, Segmentation, SegmentOptions, segment_image
from tests.model.scenes import BlindSegmenter, SmallMarkBlindSegmenter, disc_grid_scene

OPTIONS = SegmentOptions(tile_size=64, overlap=16, batch_size=4)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((97, 131), np.uint8), ((150, 77), np.uint16), ((83, 101, 3), np.uint8)],
)
@pytest.mark.parametrize("scale", [1.0, 0.5, 1.5])
def test_predict_image_keeps_the_input_size(model_dir, shape, dtype, scale):
    segmenter = get_segmenter(model_dir, runtime=RuntimeChoice(backend="torch", precision="fp32"))
    image = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    planned = []
    segmentation = predict_image(
        image, segmenter, dataclasses.replace(OPTIONS, scale=scale), on_tiles_planned=planned.append
    )
    assert segmentation.probabilities.shape == shape[:2]
    assert segmentation.mask.shape == shape[:2] and segmentation.mask.dtype == bool
    assert 0.0 <= segmentation.probabilities.min() <= segmentation.probabilities.max() <= 1.0
    assert planned == [count_tiles(shape[:2], OPTIONS, scale)]
    assert count_tiles(shape[:2], OPTIONS, 1.5) > count_tiles(shape[:2], OPTIONS, 1.0)


def test_a_bad_scale_is_refused():
    for bad in (0.0, -1.0, MAX_SCALE + 0.5):
        with pytest.raises(AmsegError, match="scale"):
            dataclasses.replace(OPTIONS, scale=bad)


def test_resample_shrinks_by_area_and_enlarges_smoothly():
    image = np.zeros((40, 60), np.uint16)
    image[10:30, 20:40] = 1000
    assert resample(image, 1.0) is image
    small, big = resample(image, 0.5), resample(image, 1.5)
    assert small.shape == (20, 30) and big.shape == (60, 90) and big.dtype == np.uint16
    assert small[5:15, 10:20].min() == 1000 and small.sum() * 4 == image.sum()  # area average
    assert big[17:43, 32:58].min() >= 990 and big[:10].max() == 0 and big[:, :20].max() == 0
    # Bicubic, not nearest: the enlarged edge passes through intermediate values.
    edge = big[30, 26:34]
    assert ((edge > 50) & (edge < 950)).sum() >= 2


def test_restoring_an_enlarged_segmentation_averages_before_thresholding():
    """Back from scale 3: each 3x3 block of probabilities is area-averaged, then thresholded.
    A lone confident pixel per block (mean 1/9) must not survive, as it would by sampling."""
    probabilities = np.zeros((9, 9), np.float32)
    probabilities[1::3, 1::3] = 1.0
    enlarged = Segmentation(probabilities, probabilities > 0.5, None, None, 0.5)
    restored = restore_segmentation(enlarged, (3, 3), min_mark_area=0)
    assert restored.probabilities.shape == (3, 3)
    np.testing.assert_allclose(restored.probabilities, 1 / 9, atol=1e-6)
    assert not restored.mask.any()
    probabilities[:] = 0.8  # and a uniform field stays what it was
    restored = restore_segmentation(enlarged, (3, 3), min_mark_area=0)
    assert restored.mask.all() and np.allclose(restored.probabilities, 0.8)


class RunsOutOfMemoryWhenEnlarged:
    """Mixin: the segmenter runs out of memory while `enlarged` (set from predict_image's
    on_pass)."""

    enlarged = False

    def predict_batch(self, tiles):
        if self.enlarged:
            raise MemoryError
        return super().predict_batch(tiles)


class OutOfMemoryWhenEnlarged(RunsOutOfMemoryWhenEnlarged, SmallMarkBlindSegmenter):
    pass


def test_accurate_prediction_enlarges_a_grid_of_small_marks():
    small, small_labels = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    large, _ = disc_grid_scene(rows=4, cols=5, pitch=90, radius=20)
    accurate = SegmentOptions(tile_size=128, overlap=32, accurate=True)
    passes = []
    result = predict_image(small, SmallMarkBlindSegmenter(), accurate, on_pass=passes.append)
    assert passes == [SMALL_MARK_SCALE]  # one pass, enlarged from the start
    assert result.scale == SMALL_MARK_SCALE and result.mask.shape == small.shape
    assert dice(result.mask, small_labels > 0) > 0.9

    passes.clear()
    predict_image(large, ClassicalSegmenter(), accurate, on_pass=passes.append)
    assert passes == [1.0]  # large marks stay at full resolution
    passes.clear()
    predict_image(
        small, ClassicalSegmenter(), dataclasses.replace(accurate, scale=1.0), on_pass=passes.append
    )
    assert passes == [1.0]  # a given scale wins


def test_an_accurate_pass_that_finds_nothing_is_not_enlarged_again():
    image, _ = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    passes = []
    accurate = SegmentOptions(tile_size=128, overlap=32, accurate=True)
    result = predict_image(image, BlindSegmenter(), accurate, on_pass=passes.append)
    assert passes == [SMALL_MARK_SCALE] and not result.mask.any()


def test_an_accurate_pass_out_of_memory_falls_back_to_the_default_scale():
    image, labels = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    segmenter = OutOfMemoryWhenEnlarged(min_width=1)  # sees every mark at any scale
    passes, totals = [], []

    def on_pass(scale):
        passes.append(scale)
        segmenter.enlarged = scale > 1.0

    options = SegmentOptions(tile_size=128, overlap=32, accurate=True)
    result = predict_image(
        image, segmenter, options, on_pass=on_pass, on_tiles_planned=totals.append
    )
    assert passes == [SMALL_MARK_SCALE, 1.0] and result.scale == 1.0
    assert dice(result.mask, labels > 0) > 0.9
    enlarged = count_tiles(image.shape, options, SMALL_MARK_SCALE)
    full = count_tiles(image.shape, options)
    assert totals == [enlarged, enlarged + full]  # the bar never shrinks
    with pytest.raises(MemoryError):  # a scale the user gave has nothing to fall back to
        segmenter.enlarged = True
        predict_image(image, segmenter, dataclasses.replace(options, scale=1.5))


def test_options_for_a_gpu_runtime_batch_more_tiles():
    class OnGpu(ClassicalSegmenter):
        runtime = Runtime("cuda", "torch", "fp16", threads=2, batch_size=16)

    options = SegmentOptions(batch_size=8)
    assert options_for(OnGpu(), options).batch_size == 16
    assert options_for(ClassicalSegmenter(), options) is options


def test_missed_grid_retry_fires_only_for_a_grid_without_marks():
    empty = np.zeros((400, 400), bool)
    found = empty.copy()
    found[5::30, 5::30] = True  # a mark at every node of a 30 px grid, 2x2 px each: 0.49 %
    found = cv2.dilate(found.astype(np.uint8), np.ones((2, 2), np.uint8)) > 0
    assert 0.002 < found.mean() < 0.01
    few = empty.copy()
    for y, x in [(40, 40), (40, 160), (130, 250), (220, 70), (310, 310)]:
        few[y : y + 20, x : x + 5] = True  # 5 marks of a 178-node grid, 0.31 %: pieces only
    big = empty.copy()
    big[100:150, 100:150] = True  # 1.6 %: found, whatever its shape
    assert missed_grid_retry_scale(None, 1.0, empty) is None  # no grid: nothing to find
    assert missed_grid_retry_scale(30.0, 1.0, found) is None
    assert missed_grid_retry_scale(30.0, 1.0, few) == MISSED_GRID_RETRY_SCALE
    assert missed_grid_retry_scale(None, 1.0, few) is None
    assert missed_grid_retry_scale(30.0, 1.0, big) is None
    assert missed_grid_retry_scale(30.0, 1.0, empty) == MISSED_GRID_RETRY_SCALE
    assert missed_grid_retry_scale(300.0, 0.5, empty) == pytest.approx(0.75)
    assert missed_grid_retry_scale(30.0, MAX_SCALE, empty) is None  # cannot enlarge further
    assert missed_grid_retry_scale(30.0, SMALL_MARK_SCALE, empty) is None  # already closer


def test_marks_too_small_for_the_segmenter_are_found_on_a_second_enlarged_pass():
    image, labels = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    blind = SmallMarkBlindSegmenter(min_width=17)  # 15 px discs vanish, 22 px ones do not
    options = SegmentOptions(tile_size=128, overlap=32)
    assert not predict_image(image, blind, dataclasses.replace(options, scale=1.0)).mask.any()

    totals, passes, tiles_seen = [], [], []
    result = predict_image(
        image,
        blind,
        options,
        on_tiles_planned=totals.append,
        on_pass=passes.append,
        on_tile=lambda tile, pixels, prediction: tiles_seen.append(pixels.shape),
    )

    assert passes == [1.0, MISSED_GRID_RETRY_SCALE]
    assert result.scale == MISSED_GRID_RETRY_SCALE
    assert result.mask.shape == image.shape
    assert dice(result.mask, labels > 0) > 0.9
    first, second = (
        count_tiles(image.shape, options),
        count_tiles(image.shape, options, MISSED_GRID_RETRY_SCALE),
    )
    assert totals == [first, first + second]  # progress bars learn of the extra tiles
    assert len(tiles_seen) == first + second


def test_a_second_pass_that_finds_no_more_does_not_replace_the_first(monkeypatch):
    # Force the second look on a scene whose marks the first pass finds: the enlarged pass
    # finds about as many mark pixels, so the full-resolution result stays.
    monkeypatch.setattr(predict, "MISSED_GRID_MASK_FRACTION", 1.0)
    image, labels = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    passes = []
    result = predict_image(
        image, ClassicalSegmenter(), SegmentOptions(128, 32), on_pass=passes.append
    )
    assert passes == [1.0, MISSED_GRID_RETRY_SCALE]
    assert result.scale == 1.0
    assert dice(result.mask, labels > 0) > 0.9


def test_a_second_pass_that_finds_nothing_either_is_not_kept():
    image, _ = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    passes = []
    result = predict_image(image, BlindSegmenter(), SegmentOptions(128, 32), on_pass=passes.append)
    assert passes == [1.0, MISSED_GRID_RETRY_SCALE]
    assert result.scale == 1.0 and not result.mask.any()


def test_a_second_pass_that_runs_out_of_memory_leaves_the_first(monkeypatch):
    image, _ = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    segmenter = OutOfMemoryWhenEnlarged()

    def on_pass(scale):
        segmenter.enlarged = scale > 1.0

    result = predict_image(image, segmenter, SegmentOptions(128, 32), on_pass=on_pass)
    assert result.scale == 1.0


def test_no_second_pass_when_marks_are_found_or_the_scale_is_given():
    image, _ = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    options = SegmentOptions(tile_size=128, overlap=32)
    passes = []
    predict_image(image, ClassicalSegmenter(), options, on_pass=passes.append)
    assert passes == [1.0]
    passes.clear()
    predict_image(
        image,
        SmallMarkBlindSegmenter(),
        dataclasses.replace(options, scale=1.0),
        on_pass=passes.append,
    )
    assert passes == [1.0]  # the user's scale is kept even when nothing is found


class BlurredOutlineSegmenter(ClassicalSegmenter):
    """The classical baseline with its probabilities blurred: every outline is a wide band of
    uncertain pixels, as a network's are on faint, grainy slides."""

    def predict_batch(self, tiles):
        sharp = super().predict_batch(tiles)
        return np.stack([cv2.GaussianBlur(p, (0, 0), 3.0) for p in sharp])


def test_outline_uncertainty_counts_undecided_pixels_per_marked_pixel():
    probabilities = np.zeros((20, 20), np.float32)
    probabilities[5:10, 5:10] = 1.0  # 25 marked pixels, decided
    assert outline_uncertainty(probabilities, probabilities > 0.5) == 0.0
    probabilities[0, :10] = 0.5  # 10 undecided pixels
    probabilities[1, :5] = 0.15  # nearly background: not counted
    probabilities[2, :5] = 0.85  # nearly a mark: not counted
    assert outline_uncertainty(probabilities, probabilities >= 0.9) == pytest.approx(10 / 25)
    assert outline_uncertainty(probabilities, np.zeros_like(probabilities, bool)) == 0.0


def test_uncertain_outlines_fire_only_for_small_grids_at_full_resolution():
    probabilities = np.zeros((40, 40), np.float32)
    probabilities[10:20, 10:20] = 1.0
    probabilities[25:35, 10:20] = 0.5  # 100 undecided pixels per 100 marked
    image, _ = disc_grid_scene(rows=2, cols=2, pitch=20, radius=3)
    base = segment_image(image[:40, :40], ClassicalSegmenter(), SegmentOptions(64, 16))
    soft = dataclasses.replace(base, probabilities=probabilities, mask=probabilities > 0.9)
    crisp = dataclasses.replace(
        soft, probabilities=np.where(probabilities == 0.5, 0, probabilities)
    )
    assert UNCERTAIN_OUTLINE_RATIO <= 1.0
    assert uncertain_outline_retry_scale(30.0, 1.0, soft) == SMALL_MARK_SCALE
    assert uncertain_outline_retry_scale(30.0, 1.0, crisp) is None
    assert uncertain_outline_retry_scale(None, 1.0, soft) is None  # no grid seen
    assert uncertain_outline_retry_scale(SMALL_PITCH_PX, 1.0, soft) is None  # large marks
    assert uncertain_outline_retry_scale(30.0, SMALL_MARK_SCALE, soft) is None  # looked closer


def test_blurred_outlines_of_small_marks_are_segmented_again_enlarged():
    image, labels = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    options = SegmentOptions(tile_size=128, overlap=32)
    blurred = BlurredOutlineSegmenter()
    first = predict_image(image, blurred, dataclasses.replace(options, scale=1.0))
    assert outline_uncertainty(first.probabilities, first.mask) >= UNCERTAIN_OUTLINE_RATIO

    totals, passes = [], []
    result = predict_image(
        image, blurred, options, on_tiles_planned=totals.append, on_pass=passes.append
    )
    assert passes == [1.0, SMALL_MARK_SCALE]
    assert result.scale == SMALL_MARK_SCALE and result.mask.shape == image.shape
    # The enlarged pass's mask is the one kept, shrunk back onto the marks (this stand-in is
    # not the network: its gain from enlarging is measured in BENCHMARKS.md, not here).
    assert dice(result.mask, labels > 0) > 0.85
    assert not np.array_equal(result.mask, first.mask)
    full = count_tiles(image.shape, options)
    enlarged = count_tiles(image.shape, options, SMALL_MARK_SCALE)
    assert totals == [full, full + enlarged]

    # Crisp outlines, or a grid of large marks, keep the single full-resolution pass.
    passes.clear()
    crisp = predict_image(image, ClassicalSegmenter(), options, on_pass=passes.append)
    assert outline_uncertainty(crisp.probabilities, crisp.mask) < UNCERTAIN_OUTLINE_RATIO
    assert passes == [1.0] and crisp.scale == 1.0
    passes.clear()
    large, _ = disc_grid_scene(rows=4, cols=5, pitch=90, radius=20)
    blurred_large = predict_image(large, blurred, options, on_pass=passes.append)
    # as uncertain as the small marks: only the pitch keeps it from a second look
    assert outline_uncertainty(blurred_large.probabilities, blurred_large.mask) >= 1.0
    assert passes == [1.0] and blurred_large.scale == 1.0


def test_an_outline_look_out_of_memory_keeps_the_first_pass():
    image, labels = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)

    class BlurredUntilEnlarged(RunsOutOfMemoryWhenEnlarged, BlurredOutlineSegmenter):
        pass

    segmenter = BlurredUntilEnlarged()
    passes, totals = [], []

    def on_pass(scale):
        passes.append(scale)
        segmenter.enlarged = scale > 1.0

    options = SegmentOptions(128, 32)
    full = count_tiles(image.shape, options)
    enlarged = count_tiles(image.shape, options, SMALL_MARK_SCALE)
    result = predict_image(
        image, segmenter, options, on_pass=on_pass, on_tiles_planned=totals.append
    )
    assert result.scale == 1.0 and dice(result.mask, labels > 0) > 0.8
    assert passes == [1.0, SMALL_MARK_SCALE] and totals == [full, full + enlarged]

    # --accurate starts enlarged; after it runs out of memory, the fallback's uncertain
    # outlines must not send it back to the scale that just failed.
    passes.clear()
    totals.clear()
    accurate = dataclasses.replace(options, accurate=True)
    result = predict_image(
        image, segmenter, accurate, on_pass=on_pass, on_tiles_planned=totals.append
    )
    assert result.scale == 1.0 and dice(result.mask, labels > 0) > 0.8
    assert passes == [SMALL_MARK_SCALE, 1.0] and totals == [enlarged, enlarged + full]


@pytest.mark.parametrize("value", [0, 255])
def test_padding_around_the_image_is_background_and_changes_nothing_inside(value):
    """A mosaic's border is cropped off before the network: the marks come out as without it."""
    image, _ = disc_grid_scene()
    height, width = image.shape
    padded = np.full((height + 160, width + 230), value, np.uint8)
    padded[100 : 100 + height, 70 : 70 + width] = image
    expected = predict_image(image, ClassicalSegmenter(), OPTIONS)
    got = predict_image(padded, ClassicalSegmenter(), OPTIONS)
    assert got.offset == (100, 70) and got.mask.shape == padded.shape
    inside = np.s_[100 : 100 + height, 70 : 70 + width]
    np.testing.assert_array_equal(got.mask[inside], expected.mask)
    np.testing.assert_array_equal(got.probabilities[inside], expected.probabilities)
    outside = np.ones(padded.shape, bool)
    outside[inside] = False
    assert not got.mask[outside].any() and not got.probabilities[outside].any()
    assert got.padding_share == pytest.approx(outside.mean())
    assert expected.padding_share == 0.0


def test_padded_corners_are_background_and_the_marks_beside_them_are_found():
    """The corners a rotation leaves are filled from the sample for the network, then cleared."""
    image, labels = disc_grid_scene(rows=8, cols=10)
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    corners = (rows + cols < 200) | (rows + (image.shape[1] - cols) < 200)
    padded = image.copy()
    padded[corners] = 255
    got = predict_image(padded, ClassicalSegmenter(), OPTIONS)
    assert got.offset == (0, 0)
    assert not got.mask[corners].any()
    truth = (labels > 0) & ~corners
    assert dice(got.mask, truth) > 0.9
    assert dice(got.mask, truth) == pytest.approx(
        dice(predict_image(image, ClassicalSegmenter(), OPTIONS).mask & ~corners, truth), abs=0.02
    )


def test_nan_rows_of_a_float_image_are_cropped_off_like_padding():
    image, _ = disc_grid_scene()
    as_float = image.astype(np.float32)
    as_float[:30] = np.nan  # no data: a registration's fill
    got = predict_image(as_float, ClassicalSegmenter(), OPTIONS)
    expected = predict_image(image[30:].astype(np.float32), ClassicalSegmenter(), OPTIONS)
    assert got.offset == (30, 0) and not np.isnan(got.probabilities).any()
    assert not got.mask[:30].any()
    np.testing.assert_array_equal(got.mask[30:], expected.mask)


def test_no_enlarged_look_at_an_image_too_large_to_enlarge(monkeypatch):
    """The outline look (and --accurate) would enlarge 2x; above MAX_ENLARGED_PIXELS the
    automatic policy keeps full resolution, so a 20000² slide stays within its memory bound.
    An explicit scale runs as asked."""
    image, _ = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    options = SegmentOptions(tile_size=128, overlap=32)
    monkeypatch.setattr(predict, "MAX_ENLARGED_PIXELS", 2 * image.size)  # 2x would be 4x
    for policy in (options, dataclasses.replace(options, accurate=True)):
        passes, totals = [], []
        result = predict_image(
            image,
            BlurredOutlineSegmenter(),
            policy,
            on_pass=passes.append,
            on_tiles_planned=totals.append,
        )
        assert passes == [1.0] and result.scale == 1.0
        assert totals == [count_tiles(image.shape, options)]
    passes = []
    forced = dataclasses.replace(options, scale=SMALL_MARK_SCALE)
    predict_image(image, BlurredOutlineSegmenter(), forced, on_pass=passes.append)
    assert passes == [SMALL_MARK_SCALE]
