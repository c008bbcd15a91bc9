"""The whole-image pass on the network's torch device, run here on the CPU device: it gives the
CPU path's probabilities and masks, feeds the network one batch shape, warms up once, and
hands a GPU's out-of-memory to predict_image as MemoryError."""

from __future__ import annotations

import dataclasses
import threading

import cv2
import numpy as np
import pytest
import torch

from model.errors import AmsegError
from model.segment import device_pipeline as device_module
from model.segment.card import DEFAULT_MODEL_DIR, WEIGHTS_FILE
from model.segment.device_pipeline import (
    PIPELINE_ENV,
    DevicePipeline,
    pipeline_enabled,
    resample_levels,
    resize,
)
from model.segment.neural import TorchSegmenter
from model.segment.predict import device_pipeline, predict_image, resample, scaled_shape
from model.segment.runtime import OpenVinoRunner, RuntimeChoice
from model.segment.single_pass import PROBABILITY_DTYPE, SegmentOptions
from model.segment.tiles import plan_tiles
from tests.model.scenes import disc_grid_scene

OPTIONS = SegmentOptions(tile_size=64, overlap=16, batch_size=4, scale=1.0)
TORCH_FP32 = RuntimeChoice(device="cpu", backend="torch", precision="fp32", batch_size=4)
# Probabilities are kept in PROBABILITY_DTYPE: float rounding on either side may cross one of
# its steps (1/2048 below 1).
HALF_STEP = 1 / 2048


@pytest.fixture
def segmenter(model_dir, monkeypatch) -> TorchSegmenter:
    """A fresh tiny segmenter (its own pipeline and warm-up) with the device pipeline on."""
    monkeypatch.setenv(PIPELINE_ENV, "on")
    return TorchSegmenter(*_network(model_dir), runtime=TORCH_FP32)


def _network(model_dir):
    from model.segment.network import load_model

    return load_model(model_dir, device="cpu")


def both_paths(image, segmenter, options, monkeypatch, **kwargs):
    """predict_image through the CPU path, then through the device pipeline."""
    monkeypatch.setenv(PIPELINE_ENV, "off")
    cpu = predict_image(image, segmenter, options, **kwargs)
    monkeypatch.setenv(PIPELINE_ENV, "on")
    device = predict_image(image, segmenter, options, **kwargs)
    return cpu, device


def texture(shape, dtype, seed=1) -> np.ndarray:
    """Smooth random texture over most of the dtype's range (no level common enough to be
    taken for padding)."""
    rng = np.random.default_rng(seed)
    smooth = cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    top = 255 if dtype == np.uint8 else 60000 if dtype == np.uint16 else 1.0  # sign bit too
    return (smooth * top).astype(dtype)


@pytest.mark.parametrize(
    ("shape", "dtype", "scale"),
    [
        ((150, 77), np.uint16, 1.0),  # sizes that are no multiple of the tile step
        ((150, 77), np.uint16, 0.5),
        ((200, 230), np.uint8, 1.0),
        ((200, 230), np.uint8, 0.4),
        ((97, 131), np.float32, 0.5),  # float images: resampled and windowed on the host
        ((40, 50), np.uint8, 1.0),  # smaller than one tile
    ],
)
def test_same_probabilities_as_the_cpu_path(segmenter, monkeypatch, shape, dtype, scale):
    image = texture(shape, dtype)
    options = dataclasses.replace(OPTIONS, scale=scale)
    cpu, device = both_paths(image, segmenter, options, monkeypatch)
    assert device.window == cpu.window and device.grid == cpu.grid
    assert device.scale == cpu.scale == scale and device.threshold == cpu.threshold
    assert device.probabilities.shape == shape
    assert device.probabilities.dtype == cpu.probabilities.dtype == PROBABILITY_DTYPE
    np.testing.assert_allclose(device.probabilities, cpu.probabilities, rtol=0, atol=HALF_STEP)
    np.testing.assert_array_equal(device.mask, cpu.mask)


@pytest.mark.parametrize(("dtype", "scale"), [(np.uint8, 1.5), (np.uint16, 2.0)])
def test_enlarged_passes_agree_within_a_grey_level(segmenter, monkeypatch, dtype, scale):
    """cv2 enlarges 8-bit images with fixed-point bicubic weights: a level here and there."""
    image = texture((90, 110), dtype)
    options = dataclasses.replace(OPTIONS, scale=scale)
    cpu, device = both_paths(image, segmenter, options, monkeypatch)
    assert device.window == cpu.window and device.grid == cpu.grid
    np.testing.assert_allclose(device.probabilities, cpu.probabilities, rtol=0, atol=5e-3)
    assert np.count_nonzero(device.mask != cpu.mask) <= 0.001 * cpu.mask.size


def test_a_padded_image_and_its_sample_as_on_the_cpu(segmenter, monkeypatch):
    image, _ = disc_grid_scene(rows=2, cols=3)
    padded = cv2.copyMakeBorder(image, 70, 80, 90, 75, cv2.BORDER_CONSTANT, value=0)
    auto_scale = dataclasses.replace(OPTIONS, scale=None)  # and its second looks, if any
    cpu, device = both_paths(padded, segmenter, auto_scale, monkeypatch)
    assert device.offset == cpu.offset == (70, 90) and device.padding_share > 0
    np.testing.assert_allclose(device.probabilities, cpu.probabilities, rtol=0, atol=HALF_STEP)
    np.testing.assert_array_equal(device.mask, cpu.mask)


def test_a_level_that_may_be_padding_is_windowed_from_the_pixels(segmenter, monkeypatch):
    """A dark level over a fifth of the image, not padding: the histogram alone cannot tell."""
    image = texture((120, 140), np.uint16)
    image[:, :28] = 0
    cpu, device = both_paths(image, segmenter, OPTIONS, monkeypatch)
    assert device.window == cpu.window
    np.testing.assert_allclose(device.probabilities, cpu.probabilities, rtol=0, atol=HALF_STEP)


def test_only_the_mask_comes_back_when_asked(segmenter, monkeypatch):
    image = texture((100, 120), np.uint8)
    cpu, device = both_paths(image, segmenter, OPTIONS, monkeypatch, keep_probabilities=False)
    assert cpu.probabilities is None and device.probabilities is None
    np.testing.assert_array_equal(device.mask, cpu.mask)


def test_the_network_sees_one_batch_shape(segmenter, monkeypatch):
    runner = segmenter.device_pipeline().runner
    shapes = []
    run_tensor = runner.run_tensor
    monkeypatch.setattr(runner, "run_tensor", lambda x: shapes.append(x.shape) or run_tensor(x))
    image = texture((130, 77), np.uint8)
    tiles = len(plan_tiles(130, 77, OPTIONS.tile_size, OPTIONS.overlap))
    assert tiles % TORCH_FP32.batch_size != 0  # the last batch is a short one
    done = []
    predict_image(image, segmenter, OPTIONS, on_progress=done.append)
    predict_image(image, segmenter, dataclasses.replace(OPTIONS, scale=0.5))
    assert set(shapes) == {torch.Size([4, 1, 64, 64])}
    assert sum(done) == tiles  # every tile counted once, padding tiles never
    halved = len(plan_tiles(*scaled_shape(130, 77, 0.5), 64, 16))
    assert len(shapes) == 1 + -(-tiles // 4) + -(-halved // 4)  # the warm-up's batch first


def test_warm_up_runs_once_per_tile_size(segmenter):
    pipeline = segmenter.device_pipeline()
    assert pipeline is segmenter.device_pipeline()  # kept with the segmenter
    calls = []
    run_tensor = pipeline.runner.run_tensor
    pipeline.runner.run_tensor = lambda x: calls.append(x.shape) or run_tensor(x)
    assert pipeline.warm_up(64) is True
    assert pipeline.warm_up(64) is False
    pipeline.segment(texture((64, 64), np.uint8), 1.0, OPTIONS)
    assert calls == [torch.Size([4, 1, 64, 64])] * 2  # the warm-up's batch and the image's
    assert pipeline.warm_up(128) is True


def test_a_warm_up_in_the_background_is_waited_for(segmenter, monkeypatch):
    pipeline = segmenter.device_pipeline()
    started, release = threading.Event(), threading.Event()
    run_tensor = pipeline.runner.run_tensor

    def slow_first_batch(x):
        started.set()
        release.wait(10)
        return run_tensor(x)

    monkeypatch.setattr(pipeline.runner, "run_tensor", slow_first_batch)
    thread = pipeline.warm_up_in_background(64)
    assert started.wait(10)
    assert not pipeline._warm_lock.acquire(blocking=False)  # the image's pass would wait
    release.set()
    thread.join(10)
    assert not thread.is_alive()
    assert pipeline.warm_up(64) is False


def test_running_out_of_gpu_memory_is_a_memory_error(segmenter, monkeypatch):
    pipeline = segmenter.device_pipeline()
    pipeline.warm_up(64)

    def out_of_memory(x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline.runner, "run_tensor", out_of_memory)
    with pytest.raises(MemoryError, match="out of memory"):
        pipeline.segment(texture((70, 70), np.uint8), 1.0, OPTIONS)


def test_an_image_too_large_for_the_gpu_is_tiled_from_the_host(segmenter, monkeypatch):
    image = texture((100, 90), np.uint16)
    cpu, _ = both_paths(image, segmenter, OPTIONS, monkeypatch)
    pipeline = segmenter.device_pipeline()

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    monkeypatch.setattr(pipeline, "_predict_tiled", out_of_memory)
    found = predict_image(image, segmenter, OPTIONS)
    np.testing.assert_array_equal(found.probabilities, cpu.probabilities)
    np.testing.assert_array_equal(found.mask, cpu.mask)


def test_where_the_pipeline_runs(model_dir, monkeypatch):
    monkeypatch.delenv(PIPELINE_ENV, raising=False)
    assert pipeline_enabled(torch.device("cuda")) and not pipeline_enabled(torch.device("cpu"))
    monkeypatch.setenv(PIPELINE_ENV, "off")
    assert not pipeline_enabled(torch.device("cuda"))
    monkeypatch.setenv(PIPELINE_ENV, "on")
    assert pipeline_enabled(torch.device("cpu"))
    torch_cpu = TorchSegmenter(*_network(model_dir), runtime=TORCH_FP32)
    assert isinstance(device_pipeline(torch_cpu), DevicePipeline)
    openvino = TorchSegmenter.__new__(TorchSegmenter)  # as from_model_dir makes it, uncompiled
    openvino._run = OpenVinoRunner.__new__(OpenVinoRunner)
    assert device_pipeline(openvino) is None
    monkeypatch.setenv(PIPELINE_ENV, "sometimes")
    with pytest.raises(AmsegError, match=PIPELINE_ENV):
        pipeline_enabled(torch.device("cpu"))


@pytest.mark.parametrize("source", [(230, 200), (231, 199), (64, 48)])
@pytest.mark.parametrize("scale", [0.5, 0.4, 1 / 3, 2 / 3, 1.5, 2.0])
def test_resampling_follows_opencv(source, scale):
    rng = np.random.default_rng(0)
    height, width = source
    shape = scaled_shape(height, width, scale)
    for dtype in (np.uint8, np.uint16):
        image = rng.integers(0, np.iinfo(dtype).max + 1, source).astype(dtype)
        levels = torch.from_numpy(image.astype(np.int32))
        got = resample_levels(levels, shape, int(np.iinfo(dtype).max)).numpy()
        difference = np.abs(got - resample(image, scale).astype(np.int64))
        assert difference.max() <= (0 if scale < 1 else 1)  # bicubic: cv2's fixed point
        assert np.count_nonzero(difference) <= 0.12 * difference.size
    probabilities = rng.random(source, dtype=np.float32)
    growing = shape[0] * shape[1] > height * width
    expected = cv2.resize(
        probabilities,
        shape[::-1],
        interpolation=cv2.INTER_AREA if not growing else cv2.INTER_LINEAR,
    )
    got = resize(torch.from_numpy(probabilities), shape, grow="bilinear").numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-5)  # float32 coordinates


def test_the_area_weights_of_each_target_pixel_sum_to_one():
    for source, target in ((10, 4), (230, 92), (1000, 667), (5, 5)):
        _, weights = device_module._area_taps(source, target)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / WEIGHTS_FILE).is_file(), reason="no shipped model")
def test_the_shipped_model_gives_the_same_masks(monkeypatch):
    shipped = TorchSegmenter.from_model_dir(
        runtime=RuntimeChoice(device="cpu", backend="torch", precision="fp32")
    )
    image, _ = disc_grid_scene()
    options = SegmentOptions(tile_size=shipped.tile_size, scale=1.0)
    cpu, device = both_paths(image.astype(np.uint16) * 200 + 37, shipped, options, monkeypatch)
    assert cpu.mask.mean() > 0.05  # it found the discs
    np.testing.assert_allclose(device.probabilities, cpu.probabilities, rtol=0, atol=HALF_STEP)
    np.testing.assert_array_equal(device.mask, cpu.mask)
