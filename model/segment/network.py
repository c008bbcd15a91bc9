"""The segmentation network (a segmentation-models-pytorch U-Net) and its on-disk model directory.

A model directory holds `model.safetensors` (the state dict) and `model_card.json` (everything
needed to rebuild and use the network: architecture, encoder, input normalization, tile size,
threshold, scale, training data and metrics). Nothing is ever downloaded: encoders are built
with `encoder_weights=None` and weights come only from model directories.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # smp must never reach for a model hub

import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file, save_file
from segmentation_models_pytorch.base import modules as smp_modules
from segmentation_models_pytorch.base.initialization import initialize_decoder
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder, UnetDecoderBlock

from model.errors import AmsegError
from model.segment.card import (
    DEFAULT_MODEL_DIR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LIGHT_DECODER,
    SMP_DEFAULT_DECODER,
    WEIGHTS_FILE,
    ModelCard,
    read_card,
    write_card,
)


class FullResUnetDecoder(UnetDecoder):
    """smp's U-Net decoder plus a skip connection at full resolution.

    smp drops the encoder's full-resolution feature (the input itself), so the last decoder
    block only upsamples half-resolution features: thin arms of small marks get lost, and the
    network does markedly better on 1.5x upsampled slides. Here a 3x3 conv + BN + ReLU on the
    input gives `full_res_skip` channels that the last block concatenates after upsampling,
    at little cost (one conv at full resolution with a handful of channels).
    """

    def __init__(
        self, encoder_channels, decoder_channels, full_res_skip: int, add_center_block: bool
    ) -> None:
        super().__init__(
            encoder_channels,
            decoder_channels,
            n_blocks=len(decoder_channels),
            add_center_block=add_center_block,
        )
        in_channels = decoder_channels[-2] if len(decoder_channels) > 1 else encoder_channels[-1]
        self.full_res_stem = smp_modules.Conv2dReLU(
            encoder_channels[0], full_res_skip, kernel_size=3, padding=1
        )
        self.blocks[-1] = UnetDecoderBlock(in_channels, full_res_skip, decoder_channels[-1])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        full_res = self.full_res_stem(features[0])
        shapes = [f.shape[2:] for f in features][::-1]
        head, *skips = features[1:][::-1]
        skips.append(full_res)
        x = self.center(head)
        for i, block in enumerate(self.blocks):
            height, width = shapes[i + 1]
            x = block(x, height, width, skip_connection=skips[i])
        return x


def build_unet(
    encoder: str = "efficientnet-b0",
    decoder_channels: tuple[int, ...] = LIGHT_DECODER,
    in_channels: int = 1,
    full_res_skip: int = 0,
) -> torch.nn.Module:
    """A randomly initialised U-Net with one logit channel; any smp encoder name works."""
    try:
        network = smp.Unet(
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=1,
            decoder_channels=tuple(decoder_channels),
            activation=None,
        )
    except (KeyError, ValueError) as error:
        raise AmsegError(f"cannot build a U-Net with encoder {encoder!r}: {error}") from error
    if full_res_skip < 0:
        raise AmsegError(f"full_res_skip must be >= 0, got {full_res_skip}")
    if full_res_skip:
        network.decoder = FullResUnetDecoder(
            network.encoder.out_channels,
            tuple(decoder_channels),
            full_res_skip,
            # smp adds a center block for VGG encoders; keep whatever it chose.
            add_center_block=not isinstance(network.decoder.center, torch.nn.Identity),
        )
        # smp initialises its modules in Unet.__init__; the swapped-in decoder needs the same.
        initialize_decoder(network.decoder)
    return network


def add_full_res_skip(
    network: torch.nn.Module, card: ModelCard, full_res_skip: int
) -> torch.nn.Module:
    """A copy of a plain U-Net (`card.full_res_skip` 0) with a full-resolution skip that
    computes exactly the same function to start with: every weight is copied and the last
    block's first conv gets zero weights for the new input channels, so fine-tuning starts
    from the plain network's accuracy."""
    if card.full_res_skip:
        raise AmsegError("this model already has a full-resolution skip")
    wider = build_unet(card.encoder, card.decoder_channels, card.in_channels, full_res_skip)
    state = network.state_dict()
    key = f"decoder.blocks.{len(card.decoder_channels) - 1}.conv1.0.weight"
    old = state[key]
    new = torch.zeros(old.shape[0], old.shape[1] + full_res_skip, *old.shape[2:])
    new[:, : old.shape[1]] = old  # smp concatenates [upsampled, skip]
    state[key] = new
    missing, unexpected = wider.load_state_dict(state, strict=False)
    if unexpected or not all(k.startswith("decoder.full_res_stem.") for k in missing):
        raise AmsegError(
            f"cannot widen this {card.encoder} U-Net: its weights do not fit the card "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )
    return wider.to(next(network.parameters()).device)


def legacy_card() -> ModelCard:
    """The old am-segmentation configuration: ResNeXt-50 encoder, smp decoder, 3-channel input."""
    return ModelCard(
        encoder="resnext50_32x4d",
        decoder_channels=SMP_DEFAULT_DECODER,
        in_channels=3,
        input_mean=IMAGENET_MEAN,
        input_std=IMAGENET_STD,
    )


def build_from_card(card: ModelCard) -> torch.nn.Module:
    if card.architecture != "Unet":
        raise AmsegError(f"unsupported architecture {card.architecture!r}")
    return build_unet(card.encoder, card.decoder_channels, card.in_channels, card.full_res_skip)


def save_model(directory: str | os.PathLike, network: torch.nn.Module, card: ModelCard) -> Path:
    """Write weights and card into `directory` (created); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    tmp_weights = directory / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(tmp_weights))
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    write_card(directory, card)
    return directory


def load_model(
    directory: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ModelCard]:
    """Load a model directory (default: the model shipped with amseg) in eval mode."""
    directory = Path(directory) if directory is not None else DEFAULT_MODEL_DIR
    card = read_card(directory)
    weights_path = directory / WEIGHTS_FILE
    network = build_from_card(card)
    state = load_file(str(weights_path), device="cpu")
    # Shapes first: smp's load_state_dict would drop a misfit tensor with a loud warning.
    expected = network.state_dict()
    misfits = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if misfits:
        key = misfits[0]
        raise AmsegError(
            f"{weights_path}: weights do not fit the {card.encoder} U-Net its card describes "
            f"(tensor shapes differ: {key} is {tuple(state[key].shape)} in the file, "
            f"{tuple(expected[key].shape)} in the network; {len(misfits)} such tensors)"
        )
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AmsegError(
            f"{weights_path}: weights do not fit a {card.encoder} U-Net "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )
    network.to(device).eval()
    return network, card
