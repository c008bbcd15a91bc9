"""`amseg train` end to end on a tiny synthetic training set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import model.cli.train  # noqa: F401  registers the command
from model.cli.app import app
from model.errors import AmsegError
from model.segment.network import load_model
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from model.synth.writers import write_training_layout

runner = CliRunner()
FAST = ["--encoder", "resnet18", "--tile-size", "64", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(autouse=True)
def no_shipped_model(monkeypatch, tmp_path: Path):
    monkeypatch.setattr("model.train.base.DEFAULT_MODEL_DIR", tmp_path / "weights" / "default")
    # One intra-op thread: two threads spin badly when other work shares the two cores.
    monkeypatch.setattr("model.train.loop.os.cpu_count", lambda: 1)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    for i, split in enumerate(("train", "train", "valid")):
        spec = random_spec(i, height=128, width=160, mark_size=20.0, bit_depth=8 + 8 * (i % 2))
        slide = generate_slide(spec, i)
        write_training_layout(
            root, slide, split=split, dataset="synth", group=f"g{i}", tile_size=None
        )
    return root


def run(args: list[str]):
    return runner.invoke(app, ["train", *[str(a) for a in args]])


def test_train_writes_a_loadable_model_directory(synth_data, tmp_path):
    out = tmp_path / "model"
    args = [synth_data, "--matrix", "DHB", *FAST, "--epochs", "1", "--crops-per-epoch", "4"]
    result = run([*args, "--out", out])
    assert result.exit_code == 0, result.output + repr(result.exception)
    text = " ".join(result.output.split())
    assert "random initialisation" in text and "best val Dice" in text
    network, card = load_model(out)
    assert card.encoder == "resnet18" and card.matrix == "DHB" and card.threshold == 0.5
    assert card.decoder_channels == (128, 64, 32, 16, 8)
    assert card.training["epochs"] == 1 and card.training["batch_size"] == 4
    assert "val_dice" in card.metrics and "val_object_f1" in card.metrics
    assert (out / "training_curves.png").stat().st_size > 0
    with torch.inference_mode():
        assert network(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)

    # Fine-tuning from it keeps its architecture and says so.
    tuned = tmp_path / "tuned"
    again = run(
        [*args, "--init-from", out, "--out", tuned, "--scale-range", "0.8,1.25", "--ema", "0.99",
         "--mark-range", "8,60", "--disturb", "0.3"]
    )  # fmt: skip
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert "fine-tuning from" in " ".join(again.output.split())
    training = load_model(tuned)[1].training
    assert training["init_from"] == str(out) and training["scale_range"] == [0.8, 1.25]
    assert training["augmentations"]["scale"].startswith("log-uniform zoom 0.8-1.25x")
    assert training["mark_range"] == [8, 60]
    assert "within 8-60 px" in training["augmentations"]["scale"]
    assert load_model(out)[1].training["mark_range"] is None
    assert "EMA decay 0.99" in training["weight_average"]
    for disturbance in ("dust", "uneven_light", "defocus"):
        assert training["augmentations"][disturbance].startswith("p 0.3, ")
    assert "dust" not in load_model(out)[1].training["augmentations"]


def test_shipped_matrix_model_is_the_base(synth_data, tmp_path, monkeypatch):
    first = tmp_path / "first"
    base = [synth_data, *FAST, "--epochs", "1", "--crops-per-epoch", "4"]
    assert run([*base, "--matrix", "DAN", "--out", first]).exit_code == 0
    weights = tmp_path / "shipped"
    monkeypatch.setattr("model.train.base.DEFAULT_MODEL_DIR", weights / "default")
    (weights).mkdir()
    first.rename(weights / "dan")
    result = run([synth_data, "--matrix", "DAN", "--epochs", "1", "--crops-per-epoch", "4",
                  "--tile-size", "64", "--out", tmp_path / "second"])  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    text = " ".join(result.output.split())
    assert f"fine-tuning from the shipped model {weights / 'dan'}" in text


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", [], "no train/ folder"),
        ("empty", [], "no training images"),
        ("ok", ["--matrix", "XYZ"], "DHB or DAN"),
        ("ok", ["--in-channels", "2"], "1 or 3"),
        ("ok", ["--tile-size", "70"], "multiple of 32"),
        ("ok", ["--decoder", "huge"], "light or standard"),
        ("ok", ["--resume"], "no checkpoint"),
        ("ok", ["--scale-range", "2,1"], "0 < MIN <= MAX"),
        ("ok", ["--scale-range", "big"], "MIN,MAX"),
        ("ok", ["--mark-range", "60,8"], "0 < MIN <= MAX"),
        ("ok", ["--mark-range", "8"], "--mark-range must be MIN,MAX"),
        ("ok", ["--loss", "focal"], "unknown loss"),
    ],
)
def test_bad_inputs_give_clear_errors(tmp_path, synth_data, setup, args, message):
    data = tmp_path / "data"
    data.mkdir()
    if setup == "empty":
        (data / "train" / "ds" / "g" / "source").mkdir(parents=True)
    if setup == "ok":
        data = synth_data
    if "--matrix" not in args:
        args = ["--matrix", "DHB", *args]
    result = run([data, *args, "--out", tmp_path / "out", "--device", "cpu"])
    assert_user_error(result, message)


def assert_user_error(result, message: str) -> None:
    """A user error: one `error:` line and exit code 2 (or the raw AmsegError, if uncaught)."""
    if isinstance(result.exception, AmsegError):
        assert message in str(result.exception)
        return
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "error:" in result.output and message in " ".join(result.output.split())


def test_help_documents_the_base_model_choice():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "model/weights/default/" in text and "--legacy" in text and "--init-from" in text


def test_sixteen_bit_and_eight_bit_sources_are_normalized(synth_data):
    from model.train.config import TrainConfig
    from model.train.data import load_training_data

    train, valid, _ = load_training_data(TrainConfig(data=synth_data))
    for sample in train + valid:
        assert sample.image.dtype == np.float32
        assert sample.image.min() >= 0.0 and sample.image.max() <= 1.0
        assert sample.image.max() == pytest.approx(1.0)
