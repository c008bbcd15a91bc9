"""The neural segmenter: shapes, backends agreeing with eager fp32, scale, pitch, model loading.

Models here have tiny random weights. Their logits sit near 0, so bf16 rounding flips many
mask pixels: bf16 is only checked to run and stay close in probability; whether it keeps the
masks (Dice >= 0.99) is checked on the real crops with the trained default model, when present.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.errors import AmsegError
from model.image.io import read_image
from model.metrics import dice
from model.segment import neural, predict
from model.segment.agreement import reduced_precision_agreement
from model.segment.card import IMAGENET_MEAN, IMAGENET_STD, WEIGHTS_FILE, ModelCard
from model.segment.network import build_from_card, load_model, save_model
from model.segment.neural import TorchSegmenter, get_segmenter
from model.segment.pitch import (
    SMALL_MARK_SCALE,
    SMALL_PITCH_PX,
    TARGET_PITCH_PX,
    auto_scale,
    estimate_mark_pitch,
)
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
from model.segment.runtime import BF16_DICE_METRIC, Runtime, RuntimeChoice, resolve_runtime
from model.segment.segmenter import ClassicalSegmenter
from model.segment.single_pass import MAX_SCALE, Segmentation, SegmentOptions, segment_image
from model.segment.torch_runtime import ProbabilityNet
from tests.model.scenes import BlindSegmenter, SmallMarkBlindSegmenter, disc_grid_scene

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
TINY = {"encoder": "resnet18", "decoder_channels": (16, 8, 8, 8, 8), "tile_size": 64}
OPTIONS = SegmentOptions(tile_size=64, overlap=16, batch_size=4)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Exports go to a per-session temporary cache, never the user's."""
    monkeypatch.setenv("AMSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "amseg-cache"))


def make_model_dir(root: Path, **card_fields) -> Path:
    torch.manual_seed(0)
    card = ModelCard(**(TINY | card_fields))
    return save_model(root, build_from_card(card), card)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-gray"))


@pytest.fixture(scope="module")
def rgb_model_dir(tmp_path_factory) -> Path:
    return make_model_dir(
        tmp_path_factory.mktemp("tiny-rgb"),
        in_channels=3,
        input_mean=IMAGENET_MEAN,
        input_std=IMAGENET_STD,
    )


def tiles(n: int = 3, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size), dtype=np.float32)


def test_probabilities_have_tile_shape_and_unit_range(model_dir):
    segmenter = TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(backend="torch", precision="fp32")
    )
    out = segmenter.predict_batch(tiles())
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert segmenter.threshold == 0.5 and segmenter.name == "unet-resnet18"


@pytest.mark.parametrize("directory", ["model_dir", "rgb_model_dir"])
def test_normalization_matches_the_card(directory, request):
    """Gray tiles are normalized with the card's mean/std and replicated to in_channels."""
    path = request.getfixturevalue(directory)
    network, card = load_model(path)
    batch = tiles(2)
    mean = torch.tensor(card.input_mean).view(1, -1, 1, 1)
    std = torch.tensor(card.input_std).view(1, -1, 1, 1)
    x = torch.from_numpy(batch)[:, None].expand(-1, card.in_channels, -1, -1)
    with torch.inference_mode():
        expected = torch.sigmoid(network((x - mean) / std))[:, 0].numpy()
    got = TorchSegmenter(
        network, card, runtime=RuntimeChoice(backend="torch", precision="fp32")
    ).predict_batch(batch)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batch_equals_single_tiles(model_dir):
    segmenter = TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(backend="torch", precision="fp32", batch_size=4)
    )
    batch = tiles(3)
    together = segmenter.predict_batch(batch)
    alone = np.concatenate([segmenter.predict_batch(batch[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed")
def test_openvino_fp32_agrees_with_eager_and_is_cached(model_dir, tmp_path_factory):
    reference = TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(backend="torch", precision="fp32")
    )
    segmenter = TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(backend="openvino", precision="fp32")
    )
    batch = tiles(3, size=96)  # another size than the export example: shapes are dynamic
    expected = reference.predict_batch(batch)
    np.testing.assert_allclose(segmenter.predict_batch(batch), expected, atol=1e-4)
    exports = list((tmp_path_factory.getbasetemp() / "amseg-cache" / "openvino").iterdir())
    again = TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(backend="openvino", precision="fp32")
    )
    assert list((tmp_path_factory.getbasetemp() / "amseg-cache" / "openvino").iterdir()) == exports
    np.testing.assert_allclose(again.predict_batch(batch), expected, atol=1e-4)


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed")
def test_openvino_keeps_the_compiled_network_and_survives_a_damaged_one(tmp_path, monkeypatch):
    monkeypatch.setenv("AMSEG_CACHE_DIR", str(tmp_path / "cache"))
    directory = make_model_dir(tmp_path / "model")
    first = TorchSegmenter.from_model_dir(
        directory, runtime=RuntimeChoice(backend="openvino", precision="fp32")
    )
    blobs = list((tmp_path / "cache").rglob("compiled/*.blob"))
    assert len(blobs) == 1
    batch = tiles(2)
    expected = first.predict_batch(batch)
    blob = blobs[0]
    size = blob.stat().st_size
    blob.chmod(0o600)
    blob.write_bytes(blob.read_bytes()[: size // 10])  # as if a process died writing it
    again = TorchSegmenter.from_model_dir(
        directory, runtime=RuntimeChoice(backend="openvino", precision="fp32")
    )
    np.testing.assert_allclose(again.predict_batch(batch), expected, atol=1e-5)
    assert blob.stat().st_size == size  # compiled afresh and written back whole


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_runs_and_stays_close(model_dir, backend):
    """Only closeness in probability: random weights say nothing about bf16 masks."""
    if backend == "openvino" and not HAVE_OPENVINO:
        pytest.skip("openvino not installed")
    batch = tiles(2)
    expected = TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(backend="torch", precision="fp32")
    ).predict_batch(batch)
    got = TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(backend=backend, precision="bf16")
    ).predict_batch(batch)
    assert np.abs(got - expected).mean() < 0.02


def test_runtime_choices(model_dir):
    card = ModelCard(**TINY)
    runtime = resolve_runtime(RuntimeChoice(device="cpu", backend="torch"), card.metrics)
    assert runtime.device == "cpu" and runtime.threads >= 1 and runtime.batch_size == 1
    from model.segment.runtime import cpu_supports_bf16

    assert runtime.precision == ("bf16" if cpu_supports_bf16() else "fp32")
    vetoed = {BF16_DICE_METRIC: 0.95}
    assert resolve_runtime(RuntimeChoice(device="cpu", backend="torch"), vetoed).precision == "fp32"
    with pytest.raises(AmsegError, match="fp16"):
        resolve_runtime(RuntimeChoice(device="cpu", precision="fp16"), None)
    with pytest.raises(AmsegError, match="unknown backend"):
        resolve_runtime(RuntimeChoice(backend="tensorrt"), None)
    if not torch.cuda.is_available():
        with pytest.raises(AmsegError, match="CUDA"):
            resolve_runtime(RuntimeChoice(device="cuda"), None)


def test_get_segmenter_loads_once(model_dir):
    first = get_segmenter(model_dir, runtime=RuntimeChoice(backend="torch", precision="fp32"))
    assert (
        get_segmenter(str(model_dir), runtime=RuntimeChoice(backend="torch", precision="fp32"))
        is first
    )


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(neural, "DEFAULT_MODEL_DIR", tmp_path / "nothing-here")
    with pytest.raises(AmsegError, match="no trained default model"):
        TorchSegmenter.from_model_dir()
    with pytest.raises(AmsegError, match="no trained default model"):
        get_segmenter()


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
        image, segmenter, OPTIONS, scale=scale, on_tiles_planned=planned.append
    )
    assert segmentation.probabilities.shape == shape[:2]
    assert segmentation.mask.shape == shape[:2] and segmentation.mask.dtype == bool
    assert 0.0 <= segmentation.probabilities.min() <= segmentation.probabilities.max() <= 1.0
    assert planned == [count_tiles(shape[:2], OPTIONS, scale)]
    assert count_tiles(shape[:2], OPTIONS, 1.5) > count_tiles(shape[:2], OPTIONS, 1.0)


def test_predict_image_rejects_a_bad_scale(model_dir):
    segmenter = get_segmenter(model_dir, runtime=RuntimeChoice(backend="torch", precision="fp32"))
    for bad in (0.0, -1.0, MAX_SCALE + 0.5):
        with pytest.raises(AmsegError, match="scale"):
            predict_image(np.zeros((64, 64), np.uint8), segmenter, OPTIONS, scale=bad)


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


def test_accurate_auto_scale_enlarges_small_grids_only():
    assert auto_scale(30.0) == 1.0  # the fast default never enlarges
    assert auto_scale(30.0, accurate=True) == SMALL_MARK_SCALE
    assert auto_scale(SMALL_PITCH_PX - 1, accurate=True) == SMALL_MARK_SCALE
    assert auto_scale(SMALL_PITCH_PX, accurate=True) == 1.0
    assert auto_scale(None, accurate=True) == 1.0  # no grid seen: nothing to go by
    for pitch in (80.0, 2.2 * TARGET_PITCH_PX, 3.4 * TARGET_PITCH_PX):
        assert auto_scale(pitch, accurate=True) == auto_scale(pitch)  # large marks as before


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
    predict_image(small, ClassicalSegmenter(), accurate, scale=1.0, on_pass=passes.append)
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
        predict_image(image, segmenter, options, scale=1.5)


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
    assert not predict_image(image, blind, options, scale=1.0).mask.any()

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
    predict_image(image, SmallMarkBlindSegmenter(), options, scale=1.0, on_pass=passes.append)
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
    first = predict_image(image, blurred, options, scale=1.0)
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


def test_probability_net_rejects_mismatched_normalization():
    card = ModelCard(**TINY, in_channels=3, input_mean=(0.1, 0.2), input_std=(0.2, 0.2))
    with pytest.raises(AmsegError, match="input_mean"):
        ProbabilityNet(torch.nn.Identity(), card)


@pytest.mark.slow
def test_reduced_precision_keeps_the_masks_of_the_trained_model(real_crops):
    """bf16 (the auto choice on CPUs with native bf16) must agree with fp32: Dice >= 0.99.

    Checks $AMSEG_MODEL_DIR when set, else the default model; skips when there is none.
    """
    directory = Path(os.environ.get("AMSEG_MODEL_DIR") or neural.DEFAULT_MODEL_DIR)
    if not (directory / WEIGHTS_FILE).is_file():
        pytest.skip(f"no trained model in {directory}")
    images = [(path.name, read_image(path)) for path in real_crops]
    report = reduced_precision_agreement(directory, images, precision="bf16", backend="auto")
    assert report["ok"], report


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed")
def test_cached_export_loads_without_torch(model_dir):
    """With the export cached, a fresh process segments without importing torch (~4 s)."""
    import subprocess
    import sys

    TorchSegmenter.from_model_dir(
        model_dir, runtime=RuntimeChoice(backend="openvino", precision="fp32")
    )  # caches it
    code = (
        "import sys, numpy as np\n"
        "from model.segment.neural import TorchSegmenter\n"
        "from model.segment.runtime import RuntimeChoice\n"
        f"s = TorchSegmenter.from_model_dir({str(model_dir)!r}, "
        "runtime=RuntimeChoice(backend='openvino'))\n"
        "out = s.predict_batch(np.zeros((1, 64, 64), np.float32))\n"
        "assert out.shape == (1, 64, 64) and s.tile_size == 64\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert result.stdout.strip() == "False"


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
