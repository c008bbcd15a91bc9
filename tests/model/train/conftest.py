"""Fixtures of the training tests: a tiny disc data set, and no shipped model to start from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model.train.discs import make_disc_data


@pytest.fixture
def disc_data(tmp_path: Path) -> Path:
    return make_disc_data(tmp_path / "data")


@pytest.fixture(autouse=True)
def no_shipped_model(monkeypatch, tmp_path: Path):
    """Tests never fine-tune from a model that happens to be shipped in model/weights/."""
    monkeypatch.setattr("model.train.base.DEFAULT_MODEL_DIR", tmp_path / "weights" / "default")
