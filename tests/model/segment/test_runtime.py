"""Runtimes: backends and precisions agreeing with eager fp32, the OpenVINO export and its
cache, the runtime choice, and the wrapped network's input normalization.

Models here have tiny random weights. Their logits sit near 0, so bf16 rounding flips many
mask pixels: bf16 is only checked to run and stay close in probability; whether it keeps the
masks (Dice >= 0.99) is checked on the real crops with the trained default model, when present
(test_agreement.py).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from model.errors import AmsegError
from model.segment.card import ModelCard
from model.segment.neural import TorchSegmenter
from model.segment.runtime import BF16_DICE_METRIC, RuntimeChoice, resolve_runtime
from model.segment.torch_runtime import ProbabilityNet
from tests.model.segment.tiny_models import TINY, make_model_dir, tiles

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None


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
    # Compiled afresh and written back whole (not byte for byte: two compiles of the same
    # network differ by a few hundred bytes in OpenVINO 2026.4).
    assert abs(blob.stat().st_size - size) < 0.01 * size


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


def test_probability_net_rejects_mismatched_normalization():
    card = ModelCard(**TINY, in_channels=3, input_mean=(0.1, 0.2), input_std=(0.2, 0.2))
    with pytest.raises(AmsegError, match="input_mean"):
        ProbabilityNet(torch.nn.Identity(), card)


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
