"""`amseg pseudo-label`: confident crops of predicted datasets become training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import model.cli.pseudo_label as pseudo_label_cli
from model.cli.app import app
from model.image.io import read_image
from model.segment.card import ModelCard
from model.segment.network import build_unet, load_model, save_model
from model.segment.segmenter import ClassicalSegmenter
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from model.synth.writers import write_dataset_layout
from model.train.data import find_pairs

runner = CliRunner()


class LocalTorchSegmenter:
    """Stand-in for model.inference.TorchSegmenter: a model directory, eval mode, sigmoid."""

    def __init__(self, model_dir: Path) -> None:
        self.network, self.card = load_model(model_dir)
        self.threshold = self.card.threshold
        self.name = f"torch:{model_dir.name}"

    def predict_batch(self, tiles: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(tiles, np.float32))[:, None]
        x = (x - self.card.input_mean[0]) / self.card.input_std[0]
        with torch.inference_mode():
            return torch.sigmoid(self.network(x))[:, 0].numpy()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "slideA"
    for i, group in enumerate(("well1", "well2")):
        spec = random_spec(10 + i, height=300, width=260, mark_size=18.0, bit_depth=8)
        write_dataset_layout(root, generate_slide(spec, i), group=group)
    return root


def invoke(args: list) -> object:
    return runner.invoke(app, ["pseudo-label", *[str(a) for a in args]])


def kept_crops(train_dir: Path) -> int:
    return len(list((train_dir / "train").glob("pseudo_*/*/source/*.png")))


def test_writes_the_training_layout_with_a_torch_model(dataset, tmp_path, monkeypatch):
    torch.manual_seed(0)
    tiny = {"encoder": "resnet18", "decoder_channels": (16, 8, 8, 8, 8)}
    model_dir = save_model(tmp_path / "model", build_unet(**tiny), ModelCard(**tiny))
    monkeypatch.setattr(pseudo_label_cli, "load_segmenter", lambda path: LocalTorchSegmenter(path))
    train_dir = tmp_path / "train_data"
    # A random network is unsure everywhere; accept every crop to check the layout.
    args = [dataset, "--model", model_dir, "-o", train_dir, "--crop-size", "128"]
    result = invoke([*args, "--max-uncertain", "1", "--tile-size", "256"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    pairs = find_pairs(train_dir / "train")
    assert {(p[2], p[3]) for p in pairs} == {("pseudo_slideA", "well1"), ("pseudo_slideA", "well2")}
    assert len(pairs) == 2 * 3 * 3  # 300x260 cut into 128 px crops: 3 x 3 per group
    source, mask, _, _ = pairs[0]
    assert source.name == "0000.png" and mask is not None and mask.name == "0000.png"
    assert read_image(source).shape == read_image(mask).shape == (128, 128)
    assert set(np.unique(read_image(mask))) <= {0, 255}
    assert "kept 18 of 18 crops" in " ".join(result.output.split())


def test_stricter_confidence_keeps_no_more_crops(dataset, tmp_path, monkeypatch):
    # The classical segmenter gives graded probabilities, so the thresholds matter.
    monkeypatch.setattr(pseudo_label_cli, "load_segmenter", lambda path: ClassicalSegmenter())
    counts = {}
    for confidence in ("0.6", "0.9", "0.999"):
        out = tmp_path / confidence
        args = [dataset, "-o", out, "--crop-size", "64", "--min-confidence", confidence]
        result = invoke([*args, "--groups", "well1"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        counts[confidence] = kept_crops(out)
        assert f"kept {counts[confidence]} of 25 crops" in " ".join(result.output.split())
    assert counts["0.999"] <= counts["0.9"] <= counts["0.6"]
    assert counts["0.6"] > counts["0.999"]  # the option has an effect on this data


def test_rerun_replaces_earlier_crops(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(pseudo_label_cli, "load_segmenter", lambda path: ClassicalSegmenter())
    out = tmp_path / "train_data"
    base = [dataset, "-o", out, "--crop-size", "64", "--groups", "well1"]
    assert invoke([*base, "--max-uncertain", "1"]).exit_code == 0
    assert kept_crops(out) == 25
    assert invoke([*base, "--min-confidence", "0.999"]).exit_code == 0
    assert kept_crops(out) < 25


def test_bad_options_and_groups_are_user_errors(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(pseudo_label_cli, "load_segmenter", lambda path: ClassicalSegmenter())
    for args, message in (
        (["--min-confidence", "0.4"], "(0.5, 1)"),
        (["--groups", "nope"], "unknown group"),
    ):
        result = invoke([dataset, "-o", tmp_path / "x", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output


def test_the_command_asks_for_the_accurate_policy_unless_fast(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(pseudo_label_cli, "load_segmenter", lambda path: ClassicalSegmenter())
    seen = []
    real = pseudo_label_cli.pseudo_label_group

    def recording(*args, **kwargs):
        seen.append(kwargs["accurate"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pseudo_label_cli, "pseudo_label_group", recording)
    for flags, expected in (([], True), (["--fast"], False), (["--accurate"], True)):
        seen.clear()
        result = invoke([dataset, "-o", tmp_path / "train", *flags])
        assert result.exit_code == 0, result.output
        assert seen == [expected, expected]  # both groups
