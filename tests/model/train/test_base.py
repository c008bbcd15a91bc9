"""Where training starts: the shipped base model, architectures, an added full-resolution skip."""

from __future__ import annotations

import pytest
import torch

from model.errors import AmsegError
from model.segment.card import ModelCard
from model.segment.network import build_unet, legacy_card, load_model, save_model
from model.train.base import (
    ADDED_LAYERS_LR_FACTOR,
    added_layer_prefixes,
    build_network,
    choose_base_model,
    parameter_groups,
    requested_card,
)
from model.train.config import TrainConfig
from model.train.loop import train_model
from tests.model.train.discs import TINY, tiny_config


def test_base_model_choice(tmp_path, monkeypatch):
    weights = tmp_path / "w"
    monkeypatch.setattr("model.train.base.DEFAULT_MODEL_DIR", weights / "default")
    config = TrainConfig(data=tmp_path, matrix="DHB")
    assert choose_base_model(config)[0] is None
    save_model(weights / "default", build_unet(**TINY), ModelCard(**TINY))
    assert choose_base_model(config)[0] == weights / "default"
    save_model(weights / "dhb", build_unet(**TINY), ModelCard(**TINY))
    assert choose_base_model(config)[0] == weights / "dhb"
    assert choose_base_model(TrainConfig(data=tmp_path, matrix="DAN"))[0] == weights / "default"
    # An architecture the shipped model does not have: start from scratch, and say why.
    base, note = choose_base_model(TrainConfig(data=tmp_path, matrix="DHB", encoder="resnet34"))
    assert base is None and "different architecture" in note
    assert choose_base_model(TrainConfig(data=tmp_path, matrix="DHB", from_scratch=True))[0] is None
    with pytest.raises(AmsegError, match="contradict"):
        choose_base_model(TrainConfig(data=tmp_path, init_from=weights / "dhb", from_scratch=True))


def test_legacy_and_three_channel_configurations(disc_data, tmp_path):
    card, legacy = requested_card(TrainConfig(data=tmp_path, legacy=True)), legacy_card()
    fields = ("encoder", "decoder_channels", "in_channels", "input_mean", "input_std")
    assert [getattr(card, f) for f in fields] == [getattr(legacy, f) for f in fields]
    with pytest.raises(AmsegError, match="--legacy"):
        requested_card(TrainConfig(data=tmp_path, legacy=True, in_channels=1))
    train_model(tiny_config(disc_data, tmp_path / "rgb", in_channels=3))
    network, card = load_model(tmp_path / "rgb")
    assert card.in_channels == 3 and len(card.input_mean) == 3
    assert network.encoder.conv1.in_channels == 3


def test_fine_tuning_can_add_a_full_resolution_skip(disc_data, tmp_path):
    base = tmp_path / "base"
    save_model(base, build_unet(**TINY).eval(), ModelCard(**TINY))
    plain, _ = load_model(base)
    config = tiny_config(disc_data, tmp_path / "out", init_from=base, full_res_skip=4)
    wider, card = build_network(config, base)
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(wider.eval()(x), plain(x), rtol=0, atol=1e-6)  # as the base
    assert card.full_res_skip == 4
    # The added layers learn faster than the rest (they start from zero).
    fresh = added_layer_prefixes(card, base)
    groups = parameter_groups(wider, fresh, 1e-3)
    assert [g.get("lr") for g in groups] == [None, 1e-3 * ADDED_LAYERS_LR_FACTOR]
    assert sum(len(g["params"]) for g in groups) == len(list(wider.parameters()))
    assert added_layer_prefixes(card, None) == []
    result = train_model(config)
    assert (
        result.card.full_res_skip == 4
        and "added or widened for the base" in result.card.training["optimizer"]
    )
    assert load_model(tmp_path / "out")[1].full_res_skip == 4
    # --resume after the base model itself gained the skip: its optimizer no longer fits.
    save_model(base, *load_model(tmp_path / "out"))
    with pytest.raises(AmsegError, match="changed since the interrupted run"):
        train_model(
            tiny_config(
                disc_data, tmp_path / "out", init_from=base, full_res_skip=4, epochs=2, resume=True
            )
        )
    # A base that has a skip of another width is refused; not asking keeps the base's own.
    with pytest.raises(AmsegError, match="full-resolution skip of 4"):
        build_network(tiny_config(disc_data, tmp_path / "x", full_res_skip=8), tmp_path / "out")
    assert (
        build_network(tiny_config(disc_data, tmp_path / "x"), tmp_path / "out")[1].full_res_skip
        == 4
    )


def test_dropping_the_shipped_models_skip_trains_from_random_weights(tmp_path, monkeypatch):
    shipped = tmp_path / "weights" / "default"
    save_model(shipped, build_unet(**TINY, full_res_skip=4), ModelCard(**TINY, full_res_skip=4))
    monkeypatch.setattr("model.train.base.DEFAULT_MODEL_DIR", shipped)
    for asked, expected in [(None, shipped), (4, shipped), (0, None), (8, None)]:
        base, note = choose_base_model(TrainConfig(data=tmp_path, full_res_skip=asked))
        assert base == expected, (asked, note)
    # A plain shipped model can be widened.
    save_model(shipped, build_unet(**TINY), ModelCard(**TINY))
    assert choose_base_model(TrainConfig(data=tmp_path, full_res_skip=8))[0] == shipped
