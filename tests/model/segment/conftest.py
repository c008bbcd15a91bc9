"""Fixtures of the segment tests: a private export cache and tiny model directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.segment.card import IMAGENET_MEAN, IMAGENET_STD
from tests.model.segment.tiny_models import make_model_dir


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Exports go to a per-session temporary cache, never the user's."""
    monkeypatch.setenv("AMSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "amseg-cache"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-gray"))


@pytest.fixture(scope="module")
def rgb_model_dir(tmp_path_factory) -> Path:
    return make_model_dir(
        tmp_path_factory.mktemp("tiny-rgb"),
        in_channels=3,
        input_mean=IMAGENET_MEAN,
        input_std=IMAGENET_STD,
    )
