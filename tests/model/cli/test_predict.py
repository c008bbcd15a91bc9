"""`amseg predict` end to end with a tiny random-weight model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

import model.cli.predict  # noqa: F401  registers the command on the app
from model.cli.app import app
from model.errors import AmsegError
from model.segment import neural
from model.segment.card import ModelCard
from model.segment.network import build_from_card, save_model


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AMSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "amseg-cache"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    card = ModelCard(encoder="resnet18", decoder_channels=(16, 8, 8, 8, 8), tile_size=64)
    return save_model(tmp_path_factory.mktemp("tiny"), build_from_card(card), card)


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    gray = folder / "gray8.png"
    Image.fromarray(rng.integers(0, 255, (71, 93), dtype=np.uint8)).save(gray)
    deep = folder / "deep16.tif"
    tifffile.imwrite(deep, rng.integers(0, 65535, (90, 65), dtype=np.uint16))
    colour = folder / "colour.jpg"
    Image.fromarray(rng.integers(0, 255, (57, 80, 3), dtype=np.uint8)).save(colour)
    return {"gray8": gray, "deep16": deep, "colour": colour}


def run(*args: str):
    return CliRunner().invoke(app, ["predict", *args])


def test_predict_writes_masks_of_the_input_size(model_dir, inputs, tmp_path):
    out = tmp_path / "out"
    result = run(
        *map(str, inputs.values()),
        "-o", str(out),
        "--model", str(model_dir),
        "--probabilities",
        "--tile-size", "64",
        "--overlap", "16",
        "--backend", "torch",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for stem, path in inputs.items():
        source = np.asarray(Image.open(path)) if path.suffix != ".tif" else tifffile.imread(path)
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == source.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        prob = np.asarray(Image.open(out / f"{stem}_prob.png"))
        assert prob.shape == source.shape[:2] and prob.dtype == np.uint8


def test_a_bad_file_is_reported_and_the_others_still_run(model_dir, inputs, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    result = run(
        str(bad), str(inputs["gray8"]), "-o", str(out), "--model", str(model_dir), "--scale", "1"
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if "broken.png" in line]
    assert len(lines) == 1, result.output
    assert (out / "gray8_mask.png").is_file()
    assert not (out / "broken_mask.png").exists()


def test_missing_default_model_is_a_clear_error(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(neural, "DEFAULT_MODEL_DIR", tmp_path / "no-model")
    result = run(str(inputs["gray8"]), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2  # a user error: one line, no traceback
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "no trained default model" in errors[0] and "--model" in errors[0]


def test_segment_defaults_to_classical_without_a_model(monkeypatch, tmp_path):
    from model.cli.segment import load_segmenter
    from model.segment.segmenter import ClassicalSegmenter

    monkeypatch.setattr(neural, "DEFAULT_MODEL_DIR", tmp_path / "no-model")
    assert isinstance(load_segmenter("auto"), ClassicalSegmenter)
    with pytest.raises(AmsegError, match="no trained default model"):
        load_segmenter("model")


def test_accurate_enlarges_small_marks_and_says_so(model_dir, tmp_path):
    from model.image.io import write_png
    from tests.model.scenes import disc_grid_scene

    small, _ = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    write_png(tmp_path / "small.png", small)
    common = ["-o", str(tmp_path / "out"), "--model", str(model_dir), "--backend", "torch"]
    common += ["--precision", "fp32"]  # the same mask on every CPU
    common += ["--tile-size", "64", "--overlap", "16"]
    # --scale 1 forces one full-resolution pass (this untrained network's outlines are all
    # uncertain, so the default would take a second, enlarged look).
    full = run(str(tmp_path / "small.png"), *common, "--scale", "1")
    accurate = run(str(tmp_path / "small.png"), *common, "--accurate")
    assert full.exit_code == 0 and accurate.exit_code == 0, full.output + accurate.output
    assert "network at scale" not in " ".join(full.output.split())
    assert "(network at scale 2)" in " ".join(accurate.output.split())
    mask = np.asarray(Image.open(tmp_path / "out" / "small_mask.png"))
    assert mask.shape == small.shape


def test_padding_is_reported_and_only_when_there_is_some(model_dir, tmp_path):
    from model.image.io import write_png
    from tests.model.scenes import disc_grid_scene

    image, _ = disc_grid_scene()
    height, width = image.shape
    padded = np.zeros((height * 2, width), np.uint8)  # a mosaic's black half
    padded[:height] = image
    write_png(tmp_path / "plain.png", image)
    write_png(tmp_path / "padded.png", padded)
    common = ["-o", str(tmp_path / "out"), "--model", str(model_dir), "--backend", "torch"]
    common += ["--tile-size", "64", "--overlap", "16", "--scale", "1"]
    plain, half = (
        run(str(tmp_path / "plain.png"), *common),
        run(str(tmp_path / "padded.png"), *common),
    )
    assert plain.exit_code == 0 and half.exit_code == 0, plain.output + half.output
    assert "padding left out" not in " ".join(plain.output.split())
    assert "(50% padding left out)" in " ".join(half.output.split())
    mask = np.asarray(Image.open(tmp_path / "out" / "padded_mask.png"))
    assert mask.shape == padded.shape and not mask[height:].any()


def test_accurate_and_a_given_scale_contradict(model_dir, inputs, tmp_path):
    result = run(str(inputs["gray8"]), "-o", str(tmp_path / "out"), "--accurate", "--scale", "1")
    assert result.exit_code == 2 and "--accurate or --scale" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_on_the_device_pipeline_it_warms_up_in_the_background(model_dir, inputs, tmp_path):
    """What `amseg predict --device cuda` does, forced onto the CPU: the warm-up starts while
    the image is read, and the masks are the CPU path's."""
    from model.segment.device_pipeline import PIPELINE_ENV, DevicePipeline

    common = [str(inputs["gray8"]), "--model", str(model_dir), "--backend", "torch"]
    common += ["--device", "cpu", "--precision", "fp32", "--scale", "1", "--probabilities"]
    started = []
    original = DevicePipeline.warm_up_in_background
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            DevicePipeline,
            "warm_up_in_background",
            lambda self, size: started.append(size) or original(self, size),
        )
        patch.setenv(PIPELINE_ENV, "on")
        on = run(*common, "-o", str(tmp_path / "on"))
        patch.setenv(PIPELINE_ENV, "off")
        off = run(*common, "-o", str(tmp_path / "off"))
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    assert started == [64]  # the model's tile size, once, and only on the device pipeline
    for name in ("gray8_mask.png", "gray8_prob.png"):
        on_pixels = np.asarray(Image.open(tmp_path / "on" / name)).astype(int)
        off_pixels = np.asarray(Image.open(tmp_path / "off" / name)).astype(int)
        assert np.abs(on_pixels - off_pixels).max() <= (0 if "mask" in name else 1)
