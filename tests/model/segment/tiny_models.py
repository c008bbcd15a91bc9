"""Tiny random-weight U-Nets and random tiles, for the segment tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.segment.card import ModelCard
from model.segment.network import build_from_card, save_model

TINY = {"encoder": "resnet18", "decoder_channels": (16, 8, 8, 8, 8), "tile_size": 64}


def make_model_dir(root: Path, **card_fields) -> Path:
    torch.manual_seed(0)
    card = ModelCard(**(TINY | card_fields))
    return save_model(root, build_from_card(card), card)


def tiles(n: int = 3, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size), dtype=np.float32)
