"""Where training starts: the architecture asked for, the base model to fine-tune (or none),
the network built from them, and the optimizer's parameter groups."""

from __future__ import annotations

from pathlib import Path

import torch

from model.errors import AmsegError
from model.segment.card import (
    DEFAULT_MODEL_DIR,
    LIGHT_DECODER,
    SMP_DEFAULT_DECODER,
    ModelCard,
    is_model_dir,
    read_card,
)
from model.segment.network import add_full_res_skip, build_from_card, legacy_card, load_model
from model.train.config import TrainConfig

DEFAULT_ENCODER = "efficientnet-b0"
DECODERS = {"light": LIGHT_DECODER, "standard": SMP_DEFAULT_DECODER}


def _explicit_architecture(config: TrainConfig) -> bool:
    return config.legacy or any(
        v is not None
        for v in (config.encoder, config.decoder, config.decoder_channels, config.in_channels)
    )


def requested_card(config: TrainConfig) -> ModelCard:
    """The card of the architecture the options ask for (defaults filled in)."""
    if config.legacy:
        card = legacy_card()
        if config.encoder not in (None, card.encoder) or config.in_channels not in (None, 3):
            raise AmsegError("--legacy fixes the encoder (resnext50_32x4d) and 3 input channels")
        return card
    decoder = config.decoder or "light"
    if decoder not in DECODERS:
        raise AmsegError(f"unknown decoder {decoder!r}; use light or standard")
    in_channels = config.in_channels or 1
    if in_channels not in (1, 3):
        raise AmsegError(f"--in-channels must be 1 or 3, got {in_channels}")
    return ModelCard(
        encoder=config.encoder or DEFAULT_ENCODER,
        decoder_channels=tuple(config.decoder_channels or DECODERS[decoder]),
        in_channels=in_channels,
        full_res_skip=config.full_res_skip or 0,
        input_mean=(0.5,) * in_channels,
        input_std=(0.25,) * in_channels,
    )


def _same_architecture(a: ModelCard, b: ModelCard) -> bool:
    return (a.architecture, a.encoder, tuple(a.decoder_channels), a.in_channels) == (
        b.architecture,
        b.encoder,
        tuple(b.decoder_channels),
        b.in_channels,
    )


def shipped_base_model(matrix: str | None) -> Path | None:
    """model/weights/<matrix>/ when shipped, else model/weights/default/, else None."""
    candidates = [DEFAULT_MODEL_DIR.parent / matrix.lower()] if matrix else []
    candidates.append(DEFAULT_MODEL_DIR)
    for candidate in candidates:
        if is_model_dir(candidate):
            return candidate
    return None


def choose_base_model(config: TrainConfig) -> tuple[Path | None, str]:
    """Which weights training starts from, and a sentence saying so (and why)."""
    if config.init_from is not None:
        if config.from_scratch:
            raise AmsegError("--init-from and --from-scratch contradict each other; give one")
        return Path(config.init_from), f"fine-tuning from {config.init_from}"
    if config.from_scratch:
        return None, "training from random initialisation (--from-scratch)"
    shipped = shipped_base_model(config.matrix)
    if shipped is None:
        return None, "training from random initialisation (no shipped model to fine-tune)"
    shipped_card = read_card(shipped)
    # A full-resolution skip can be added to a plain shipped model, not removed or resized.
    changes_skip = shipped_card.full_res_skip > 0 and config.full_res_skip not in (
        None,
        shipped_card.full_res_skip,
    )
    if changes_skip or (
        _explicit_architecture(config)
        and not _same_architecture(requested_card(config), shipped_card)
    ):
        return None, (
            f"training from random initialisation (the shipped model {shipped} has a "
            "different architecture than the one asked for)"
        )
    return shipped, f"fine-tuning from the shipped model {shipped}"


def build_network(config: TrainConfig, base: Path | None) -> tuple[torch.nn.Module, ModelCard]:
    """The network to train (seeded init or loaded base weights) and its starting card."""
    if base is None:
        card = requested_card(config)
        torch.manual_seed(config.seed)
        return build_from_card(card), card
    network, base_card = load_model(base)
    if _explicit_architecture(config) and not _same_architecture(requested_card(config), base_card):
        raise AmsegError(
            f"{base} is a {base_card.encoder} U-Net with decoder {list(base_card.decoder_channels)}"
            f" and {base_card.in_channels} input channel(s); drop the architecture options to "
            "fine-tune it"
        )
    full_res_skip = base_card.full_res_skip
    if config.full_res_skip is not None and config.full_res_skip != full_res_skip:
        if full_res_skip:
            raise AmsegError(
                f"{base} has a full-resolution skip of {full_res_skip} channels; drop "
                "--full-res-skip or give that number to fine-tune it"
            )
        network = add_full_res_skip(network, base_card, config.full_res_skip)
        full_res_skip = config.full_res_skip
    card = ModelCard(
        encoder=base_card.encoder,
        decoder_channels=tuple(base_card.decoder_channels),
        in_channels=base_card.in_channels,
        full_res_skip=full_res_skip,
        input_mean=tuple(base_card.input_mean),
        input_std=tuple(base_card.input_std),
    )
    return network, card


# Layers added to a trained base model (a full-resolution skip starts at zero weights) learn at
# this multiple of --lr: at 1x the new weights of a fine-tune from the shipped model moved only
# ~0.005 in 4 epochs (the old ones are ~0.11), i.e. the branch stayed unused.
ADDED_LAYERS_LR_FACTOR = 10.0


def added_layer_prefixes(card: ModelCard, base: Path | None) -> list[str]:
    """Parameter-name prefixes of the layers `build_network` added to the base model: the new
    stem, and the last decoder block, rebuilt wider (its base weights copied in; the whole
    block learns faster, as one tensor holds both its old and its new input channels)."""
    if base is None or not card.full_res_skip or read_card(base).full_res_skip:
        return []
    last = len(card.decoder_channels) - 1
    return ["decoder.full_res_stem.", f"decoder.blocks.{last}."]


def parameter_groups(network: torch.nn.Module, fresh: list[str], lr: float) -> list[dict]:
    """AdamW groups: every parameter at `lr`, those under the `fresh` prefixes faster."""
    named = list(network.named_parameters())
    rest = [p for n, p in named if not n.startswith(tuple(fresh))]
    added = [p for n, p in named if fresh and n.startswith(tuple(fresh))]
    groups = [{"params": rest}]
    if added:
        groups.append({"params": added, "lr": lr * ADDED_LAYERS_LR_FACTOR})
    return groups
