"""int8: NNCF quantization of the OpenVINO export, its cache, and when `auto` picks it.

The quantized model here is the tiny random-weight U-Net, calibrated on 2 generated slides
(8 tiles of 64 px). Whether int8 keeps a trained model's masks is the model card's recorded
check (benchmarks/int8_check.py), not something random weights can tell.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from model.errors import AmsegError
from model.segment import int8_recipe, quantize, runtime
from model.segment.neural import TorchSegmenter
from model.segment.runtime import (
    BF16_DICE_METRIC,
    INT8_DICE_DROP_METRIC,
    INT8_DICE_METRIC,
    RuntimeChoice,
    export_path,
    resolve_runtime,
)

HAVE_INT8 = all(importlib.util.find_spec(name) for name in ("openvino", "nncf"))
needs_int8 = pytest.mark.skipif(not HAVE_INT8, reason="openvino or nncf not installed")

INT8 = RuntimeChoice(backend="openvino", precision="int8")
FP32 = RuntimeChoice(backend="openvino", precision="fp32")
PASSED = {INT8_DICE_METRIC: 0.995, INT8_DICE_DROP_METRIC: 0.001}


@pytest.fixture(scope="module")
def int8_segmenter(model_dir, tmp_path_factory):
    """The tiny model quantized once for this module, in the session's private cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AMSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "amseg-cache"))
        patch.setattr(int8_recipe, "CALIBRATION_SLIDES", 2)
        yield TorchSegmenter.from_model_dir(model_dir, runtime=INT8)


def held_out_tiles(tile_size: int) -> np.ndarray:
    """Tiles like the calibration ones (what the network sees) from slides it never saw."""
    return quantize.calibration_tiles(tile_size, slides=1, first_seed=123_456)


@pytest.mark.slow
@needs_int8
def test_int8_runner_follows_fp32(int8_segmenter, model_dir):
    """A random net's fp32 probabilities spread little around 0.5 (std ~0.035), so masks say
    nothing: int8 must track them closely. Measured: correlation 0.998, mean |error| 0.002;
    a quantization with wrong ranges (an input scale off, say) decorrelates them."""
    assert int8_segmenter.runtime.precision == "int8"
    batch = held_out_tiles(int8_segmenter.tile_size)
    expected = TorchSegmenter.from_model_dir(model_dir, runtime=FP32).predict_batch(batch)
    got = int8_segmenter.predict_batch(batch)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.95
    assert np.abs(got - expected).mean() < 0.01
    assert np.abs(got - expected).max() > 0  # it is not the fp32 network after all


@pytest.mark.slow
@needs_int8
def test_int8_export_is_quantized_but_keeps_the_edge_layers_fp32(int8_segmenter, model_dir):
    import openvino as ov

    fingerprint = runtime.directory_fingerprint(model_dir)
    int8_xml, fp32_xml = export_path(fingerprint, "int8"), export_path(fingerprint)
    assert int8_xml.parent.parent == fp32_xml.parent.parent and int8_xml != fp32_xml
    model = ov.Core().read_model(str(int8_xml))
    kept = quantize.fp32_kept_layers(model)
    assert len(kept) == 2  # the encoder's first convolution and the segmentation head
    assert any("segmentation_head" in name for name in kept)
    fake_quantized = {
        node.get_friendly_name()
        for node in model.get_ordered_ops()
        if node.get_type_name() in ("Convolution", "GroupConvolution")
        and node.input_value(0).get_node().get_type_name() == "FakeQuantize"
    }
    assert fake_quantized and not fake_quantized & set(kept)


@pytest.mark.slow
@needs_int8
def test_int8_export_is_reused_not_quantized_again(int8_segmenter, model_dir, monkeypatch):
    def no_second_quantization(*args, **kwargs):
        raise AssertionError("quantized again")

    batch = held_out_tiles(int8_segmenter.tile_size)
    monkeypatch.setattr(quantize, "quantize_export", no_second_quantization)
    monkeypatch.setattr(quantize, "calibration_tiles", no_second_quantization)
    again = TorchSegmenter.from_model_dir(model_dir, runtime=INT8)
    np.testing.assert_allclose(
        again.predict_batch(batch), int8_segmenter.predict_batch(batch), atol=1e-6
    )


@needs_int8
def test_calibration_tiles_are_fixed_and_normalized():
    first = quantize.calibration_tiles(64, slides=2, per_slide=3)
    assert first.shape == (6, 64, 64) and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0 and first.std() > 0.01
    np.testing.assert_array_equal(first, quantize.calibration_tiles(64, slides=2, per_slide=3))


def test_int8_without_nncf_is_a_clear_error(tmp_path, monkeypatch):
    """Asked for explicitly and not cached: the error names the missing package."""
    monkeypatch.setattr(quantize, "nncf_available", lambda: False)
    with pytest.raises(AmsegError, match="pip install nncf"):
        quantize.ensure_int8_export(
            tmp_path / "int8" / "model.xml", lambda: pytest.fail("exported"), tile_size=64
        )


def test_int8_needs_openvino_on_the_cpu():
    with pytest.raises(AmsegError, match="int8 runs through OpenVINO"):
        resolve_runtime(RuntimeChoice(device="cpu", backend="torch", precision="int8"))


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """A CPU like most laptops: AVX2 (or AVX-512 VNNI) and no native bf16; NNCF installed."""
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(runtime, "nncf_available", lambda: True)
    monkeypatch.setattr(runtime, "openvino_available", lambda: True)
    runtime.cpu_int8_faster.cache_clear()
    yield
    runtime.cpu_int8_faster.cache_clear()


def auto_precision(metrics: dict | None, backend: str = "auto") -> str:
    return resolve_runtime(RuntimeChoice(device="cpu", backend=backend), metrics).precision


@pytest.mark.usefixtures("cpu_without_bf16")
def test_auto_picks_int8_without_bf16_only_after_a_passed_check(monkeypatch):
    assert auto_precision(PASSED) == "int8"
    assert auto_precision(PASSED, backend="torch") == "fp32"  # int8 is OpenVINO's
    assert auto_precision(None) == "fp32"  # no recorded check
    assert auto_precision({INT8_DICE_METRIC: 0.995}) == "fp32"  # half a check
    assert auto_precision(PASSED | {INT8_DICE_METRIC: 0.985}) == "fp32"  # masks differ
    assert auto_precision(PASSED | {INT8_DICE_DROP_METRIC: 0.006}) == "fp32"  # less accurate
    monkeypatch.setattr(runtime, "nncf_available", lambda: False)
    assert auto_precision(PASSED) == "fp32"  # it could not be quantized here


@pytest.mark.usefixtures("cpu_without_bf16")
def test_auto_keeps_fp32_where_int8_is_not_known_to_be_faster(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"neon", "asimd"})  # an Arm CPU
    runtime.cpu_int8_faster.cache_clear()
    assert auto_precision(PASSED) == "fp32"


@pytest.mark.usefixtures("cpu_without_bf16")
def test_auto_prefers_a_checked_int8_to_native_bf16_and_bf16_to_fp32(monkeypatch):
    """The fastest precision that passed its check: int8 (1.3x bf16 on an AVX-512 bf16 CPU with
    VNNI), then native bf16 unless the card vetoes it, then fp32."""
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert auto_precision(PASSED) == "int8"
    assert auto_precision(PASSED | {BF16_DICE_METRIC: 0.95}) == "int8"
    assert auto_precision(PASSED | {INT8_DICE_METRIC: 0.985}) == "bf16"  # int8 failed its check
    assert auto_precision(None) == "bf16"  # a model without an int8 check (a fine-tune)
    assert auto_precision(PASSED, backend="torch") == "bf16"
    assert auto_precision({BF16_DICE_METRIC: 0.95}) == "fp32"
    monkeypatch.setattr(runtime, "nncf_available", lambda: False)
    assert auto_precision(PASSED) == "bf16"  # no int8 IR and nothing to make one with


@pytest.mark.slow
@needs_int8
def test_cached_int8_export_loads_without_torch_or_nncf(int8_segmenter, model_dir):
    """Like the fp32 export: once quantized, a fresh process needs neither (~4 s of imports)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from model.segment import int8_recipe\n"
        "from model.segment.neural import TorchSegmenter\n"
        "from model.segment.runtime import RuntimeChoice\n"
        # the recipe int8_segmenter was quantized by (a part of the cache key)
        f"int8_recipe.CALIBRATION_SLIDES = {int8_recipe.CALIBRATION_SLIDES}\n"
        f"s = TorchSegmenter.from_model_dir({str(model_dir)!r}, "
        "runtime=RuntimeChoice(precision='int8'))\n"
        "assert s.predict_batch(np.zeros((1, 64, 64), np.float32)).shape == (1, 64, 64)\n"
        "print(s.runtime.precision, 'torch' in sys.modules, 'nncf' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert result.stdout.split() == ["int8", "False", "False"]
