"""The U-Net builder, the full-resolution skip and the model directory round trip."""

from __future__ import annotations

import pytest
import torch

from model.errors import AmsegError
from model.segment.card import ModelCard
from model.segment.network import (
    FullResUnetDecoder,
    add_full_res_skip,
    build_from_card,
    build_unet,
    load_model,
    save_model,
)

TINY = {"encoder": "resnet18", "decoder_channels": (16, 8, 8, 8, 8)}


def test_full_res_skip_reaches_the_last_block_at_full_resolution():
    network = build_unet(**TINY, full_res_skip=4).eval()
    assert isinstance(network.decoder, FullResUnetDecoder)
    assert network.decoder.blocks[-1].conv1[0].in_channels == 8 + 4
    seen = {}
    network.decoder.full_res_stem.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    with torch.inference_mode():
        out = network(torch.randn(2, 1, 64, 96))
    assert out.shape == (2, 1, 64, 96) and seen["shape"] == (2, 4, 64, 96)


def test_the_skip_changes_outputs_pixel_by_pixel():
    """A one-pixel change of the input moves the logit there through the full-res branch even
    when the rest of the network is blind to it (all other weights zero)."""
    network = build_unet(**TINY, full_res_skip=4).eval()
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if not name.startswith(("decoder.full_res_stem", "decoder.blocks.4", "segmentation")):
                parameter.zero_()
    x = torch.zeros(1, 1, 64, 64)
    y = x.clone()
    y[0, 0, 31, 31] = 5.0
    with torch.inference_mode():
        changed = (network(x) - network(y)).abs()[0, 0] > 1e-6
    assert changed[31, 31] and changed.sum() <= 81  # stem, block, head: four 3x3 convs, 9x9


def test_adding_the_skip_keeps_the_function_then_trains(tmp_path):
    torch.manual_seed(0)
    plain, card = build_unet(**TINY).eval(), ModelCard(**TINY)
    wider = add_full_res_skip(plain, card, 4).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        # Zero weights on the new channels: the same sums, up to the kernel's summation order.
        torch.testing.assert_close(wider(x), plain(x), rtol=0, atol=1e-6)
    # The new input channels start at zero but receive gradients.
    wider.train()
    wider(x).sum().backward()
    assert wider.decoder.blocks[-1].conv1[0].weight.grad[:, 8:].abs().sum() > 0
    with pytest.raises(AmsegError, match="already"):
        add_full_res_skip(wider, ModelCard(**TINY, full_res_skip=4), 4)


def test_model_directory_round_trip_keeps_the_skip(tmp_path):
    card = ModelCard(**TINY, full_res_skip=4)
    network = build_from_card(card).eval()
    save_model(tmp_path / "m", network, card)
    loaded, loaded_card = load_model(tmp_path / "m")
    assert loaded_card.full_res_skip == 4
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(network(x), loaded(x))
    # Weights of a plain U-Net do not fit a card that promises the skip, and the error says so.
    save_model(tmp_path / "plain", build_unet(**TINY), ModelCard(**TINY))
    (tmp_path / "plain" / "model_card.json").write_text(card.to_json())
    with pytest.raises(AmsegError, match="tensor shapes differ"):
        load_model(tmp_path / "plain")


def test_old_cards_without_the_field_load_as_plain_u_nets():
    text = ModelCard(**TINY).to_json().replace('"full_res_skip": 0,', "")
    assert "full_res_skip" not in text
    assert ModelCard.from_json(text).full_res_skip == 0
    with pytest.raises(AmsegError, match=">= 0"):
        build_unet(**TINY, full_res_skip=-1)


def test_the_swapped_in_decoder_gets_smps_initialisation():
    """smp initialises its modules (Kaiming) in Unet.__init__; the decoder swapped in after it
    must get the same, or a model with the skip starts from smaller decoder weights."""
    torch.manual_seed(0)
    plain = build_unet(**TINY)
    torch.manual_seed(0)
    wider = build_unet(**TINY, full_res_skip=4)
    # Same encoder and block shapes except the last block: compare the first block's conv.
    plain_std = plain.decoder.blocks[0].conv1[0].weight.detach().std()
    wider_std = wider.decoder.blocks[0].conv1[0].weight.detach().std()
    assert abs(float(wider_std / plain_std) - 1.0) < 0.25


def test_the_skip_keeps_smps_center_block():
    """smp adds a center block for VGG encoders; the decoder with the skip keeps it."""
    plain = build_unet("vgg11", (16, 8, 8, 8, 8), 1)
    wider = build_unet("vgg11", (16, 8, 8, 8, 8), 1, full_res_skip=4)
    assert not isinstance(plain.decoder.center, torch.nn.Identity)
    assert type(wider.decoder.center) is type(plain.decoder.center)
