"""The OpenVINO IR shipped with a model: used on the first run (no export, no quantization,
neither torch nor NNCF imported), checked against the weights, card and int8 recipe it was made
from, passed over when the installed OpenVINO cannot load it, and the int8 cache key."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.segment import int8_recipe, neural, quantize, runtime, shipped_ir
from model.segment.card import CARD_FILE, DEFAULT_MODEL_DIR, WEIGHTS_FILE
from model.segment.neural import TorchSegmenter
from model.segment.runtime import (
    INT8_DICE_DROP_METRIC,
    INT8_DICE_METRIC,
    RuntimeChoice,
    directory_fingerprint,
    export_path,
)
from model.segment.shipped_ir import MANIFEST_FILE, SHIPPED_DIR, build_shipped_ir
from tests.model.segment.tiny_models import make_model_dir, tiles

HAVE_INT8 = all(importlib.util.find_spec(name) for name in ("openvino", "nncf"))
needs_int8 = pytest.mark.skipif(not HAVE_INT8, reason="openvino or nncf not installed")
REBUILD = "python -m model.segment.shipped_ir build"


def test_the_shipped_ir_is_the_default_models_own():
    """Fails when the weights, the card's graph fields or the int8 recipe changed without
    the IR being made again (REBUILD), or a file of it is not the one recorded."""
    manifest = json.loads((DEFAULT_MODEL_DIR / SHIPPED_DIR / MANIFEST_FILE).read_text())
    assert manifest["fingerprint"] == directory_fingerprint(DEFAULT_MODEL_DIR), REBUILD
    assert manifest["irs"]["int8"]["recipe"] == int8_recipe.int8_recipe_key(), REBUILD
    for kind in shipped_ir.KINDS:
        xml = shipped_ir.shipped_ir(DEFAULT_MODEL_DIR, kind)
        assert xml is not None, (kind, REBUILD)
        for name, record in manifest["irs"][kind]["files"].items():
            data = (xml.parent / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == record["sha256"], (kind, name)
    # Small enough to ship: the int8 IR is about a third of the fp32 one.
    sizes = {kind: sum(p.stat().st_size for p in (DEFAULT_MODEL_DIR / SHIPPED_DIR / kind).iterdir())
             for kind in shipped_ir.KINDS}  # fmt: skip
    assert sizes["int8"] < 0.5 * sizes["fp32"] < 12e6


def test_a_fresh_cache_runs_the_shipped_ir_without_torch_or_nncf(tmp_path):
    """A fresh install's first run: every CPU precision from the shipped IR, in a process
    that imports neither torch nor NNCF, and nothing exported into the empty cache."""
    precisions = ["fp32", "int8"] + (["bf16"] if runtime.cpu_supports_bf16() else [])
    code = (
        "import sys, numpy as np\n"
        "from model.segment.neural import TorchSegmenter\n"
        "from model.segment.runtime import RuntimeChoice\n"
        f"for precision in {precisions!r}:\n"
        "    s = TorchSegmenter.from_model_dir(None, runtime=RuntimeChoice(precision=precision))\n"
        "    out = s.predict_batch(np.full((1, 128, 128), 0.5, np.float32))\n"
        "    assert out.shape == (1, 128, 128) and np.isfinite(out).all()\n"
        "    print(s.runtime.precision, s.ir_source.split(' ')[0])\n"
        "print('torch' in sys.modules, 'nncf' in sys.modules)\n"
    )
    env = os.environ | {"AMSEG_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    lines = result.stdout.split("\n")
    assert lines[: len(precisions)] == [f"{p} shipped" for p in precisions]
    assert lines[len(precisions)] == "False False"
    made = [p.name for p in (tmp_path / "cache" / "openvino").iterdir()]
    assert all(name.startswith("shipped-") for name in made), made  # compiled networks only


@pytest.fixture
def no_export_or_quantization(monkeypatch):
    """Any export or quantization fails the test."""

    def fail(*args, **kwargs):
        raise AssertionError("exported or quantized although the IR ships")

    monkeypatch.setattr(quantize, "quantize_export", fail)
    monkeypatch.setattr(quantize, "calibration_tiles", fail)
    monkeypatch.setattr(neural, "_openvino_ir", fail)
    monkeypatch.setattr(runtime, "ensure_openvino_export", fail)


@pytest.fixture
def cpu_without_bf16_or_nncf(monkeypatch):
    """A laptop CPU (AVX2, no bf16) in the lean install: no NNCF to quantize with."""
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(runtime, "nncf_available", lambda: False)
    runtime.cpu_int8_faster.cache_clear()
    yield
    runtime.cpu_int8_faster.cache_clear()


@pytest.mark.usefixtures("no_export_or_quantization", "cpu_without_bf16_or_nncf")
def test_auto_picks_the_shipped_int8_without_nncf(tmp_path, monkeypatch):
    monkeypatch.setenv("AMSEG_CACHE_DIR", str(tmp_path / "cache"))
    segmenter = TorchSegmenter.from_model_dir(None)
    assert segmenter.runtime.precision == "int8"
    assert segmenter.ir_source.startswith("shipped IR")
    # A model without a shipped int8 IR stays in fp32 here: it could not be quantized.
    copy = Path(shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "copy"))
    shutil.rmtree(copy / SHIPPED_DIR / "int8")
    assert TorchSegmenter.from_model_dir(copy).runtime.precision == "fp32"


@pytest.fixture(scope="module")
def tiny_shipped(tmp_path_factory):
    """A tiny model directory with its own shipped IR (calibrated on 2 slides)."""
    if not HAVE_INT8:
        pytest.skip("openvino or nncf not installed")
    directory = make_model_dir(tmp_path_factory.mktemp("tiny-shipped"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8_recipe, "CALIBRATION_SLIDES", 2)
        build_shipped_ir(directory)
    return directory


@pytest.fixture
def two_slide_recipe(monkeypatch):
    monkeypatch.setattr(int8_recipe, "CALIBRATION_SLIDES", 2)


@pytest.mark.slow
@needs_int8
@pytest.mark.usefixtures("two_slide_recipe")
def test_the_shipped_ir_follows_its_weights_card_and_recipe(tiny_shipped, tmp_path):
    directory = Path(shutil.copytree(tiny_shipped, tmp_path / "model"))
    assert shipped_ir.shipped_ir(directory, "int8") is not None
    assert shipped_ir.shipped_ir(directory, "bf16") == directory / SHIPPED_DIR / "fp32/model.xml"
    # A check recorded in the card, or another threshold, changes nothing the graph reads.
    card = json.loads((directory / CARD_FILE).read_text())
    card["metrics"] |= {INT8_DICE_METRIC: 0.995, INT8_DICE_DROP_METRIC: 0.0}
    card["threshold"] = 0.4
    (directory / CARD_FILE).write_text(json.dumps(card))
    assert shipped_ir.shipped_ir(directory, "int8") is not None
    # Another quantization recipe: the int8 IR is stale, the fp32 one is not.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8_recipe, "CALIBRATION_SLIDES", 3)
        assert shipped_ir.shipped_ir(directory, "int8") is None
        assert shipped_ir.shipped_ir(directory, "fp32") is not None
    # Other input normalization or other weights: neither is this model's any more.
    card["input_std"] = [0.3]
    (directory / CARD_FILE).write_text(json.dumps(card))
    assert shipped_ir.shipped_ir(directory, "fp32") is None
    card["input_std"] = [0.25]
    (directory / CARD_FILE).write_text(json.dumps(card))
    assert shipped_ir.shipped_ir(directory, "fp32") is not None
    weights = directory / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert shipped_ir.shipped_ir(directory, "fp32") is None
    assert shipped_ir.shipped_ir(directory, "int8") is None


@pytest.mark.slow
@needs_int8
@pytest.mark.usefixtures("two_slide_recipe")
def test_the_shipped_ir_gives_what_the_cache_would(tiny_shipped, tmp_path, monkeypatch):
    """The same network as an export and quantization made on the spot (bit-exact here:
    both are deterministic for the same inputs)."""
    monkeypatch.setenv("AMSEG_CACHE_DIR", str(tmp_path / "cache"))
    batch = tiles(2)
    for precision in ("fp32", "int8"):
        choice = RuntimeChoice(backend="openvino", precision=precision)
        shipped = TorchSegmenter.from_model_dir(tiny_shipped, runtime=choice)
        assert shipped.ir_source.startswith("shipped IR")
        network_dir = Path(shutil.copytree(tiny_shipped, tmp_path / f"bare-{precision}"))
        shutil.rmtree(network_dir / SHIPPED_DIR)
        made = TorchSegmenter.from_model_dir(network_dir, runtime=choice)
        assert made.ir_source.startswith("cached IR")
        np.testing.assert_allclose(
            shipped.predict_batch(batch), made.predict_batch(batch), atol=1e-6
        )


@pytest.mark.slow
@needs_int8
@pytest.mark.usefixtures("two_slide_recipe")
def test_a_shipped_ir_that_does_not_load_falls_back_to_the_cache(
    tiny_shipped, tmp_path, monkeypatch
):
    """As with an OpenVINO that cannot read it: passed over with a warning, then exported
    and quantized into the cache as without a shipped IR."""
    monkeypatch.setenv("AMSEG_CACHE_DIR", str(tmp_path / "cache"))
    directory = Path(shutil.copytree(tiny_shipped, tmp_path / "model"))
    xml = directory / SHIPPED_DIR / "int8" / "model.xml"
    xml.write_bytes(b"<" + b" " * (xml.stat().st_size - 1))  # same size, unreadable
    assert shipped_ir.shipped_ir(directory, "int8") == xml
    segmenter = TorchSegmenter.from_model_dir(
        directory, runtime=RuntimeChoice(backend="openvino", precision="int8")
    )
    assert segmenter.ir_source.startswith("cached IR")
    assert segmenter.predict_batch(tiles(1)).shape == (1, 64, 64)
    assert runtime.is_cached(export_path(directory_fingerprint(directory), "int8"))


def test_the_int8_cache_key_names_the_recipe_and_nncf(monkeypatch):
    pytest.importorskip("openvino")
    fp32 = export_path("f" * 24)
    int8 = export_path("f" * 24, "int8")
    assert fp32.parent.parent == int8.parent.parent and fp32 != int8
    assert int8_recipe.int8_recipe_key() in int8.parent.name
    assert f"nncf{runtime.package_version('nncf')}" in int8.parent.name
    monkeypatch.setattr(runtime, "package_version", lambda name: "9.9.9")
    assert export_path("f" * 24, "int8") != int8  # another NNCF quantizes again
    monkeypatch.setattr(int8_recipe, "CALIBRATION_TILES_PER_SLIDE", 8)
    assert int8_recipe.int8_recipe_key() not in int8.parent.name
    assert export_path("f" * 24) == fp32  # the fp32 export does not depend on either
