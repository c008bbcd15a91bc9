"""The neural segmenter (TorchSegmenter): shapes, input normalization, loading once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.errors import AmsegError
from model.segment import neural
from model.segment.network import load_model
from model.segment.neural import TorchSegmenter, get_segmenter
from model.segment.runtime import RuntimeChoice
from tests.model.segment.tiny_models import tiles


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
