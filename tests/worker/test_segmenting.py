"""A worker warms its GPU segmenter up once, at start (here: the device pipeline on the CPU)."""

from __future__ import annotations

import pytest

from model.segment.device_pipeline import PIPELINE_ENV
from model.segment.neural import TorchSegmenter
from model.segment.runtime import RuntimeChoice
from model.segment.segmenter import ClassicalSegmenter
from tests.model.segment.tiny_models import make_model_dir
from worker.segmenting import warm_up_segmenter


@pytest.fixture
def tiny_segmenter(tmp_path, monkeypatch) -> TorchSegmenter:
    monkeypatch.setenv("AMSEG_CACHE_DIR", str(tmp_path / "cache"))
    choice = RuntimeChoice(device="cpu", backend="torch", precision="fp32", batch_size=2)
    return TorchSegmenter.from_model_dir(make_model_dir(tmp_path / "tiny"), runtime=choice)


def test_a_device_segmenter_warms_up_once(tiny_segmenter, monkeypatch):
    monkeypatch.setenv(PIPELINE_ENV, "on")
    runner = tiny_segmenter.device_pipeline().runner
    shapes = []
    run_tensor = runner.run_tensor
    monkeypatch.setattr(
        runner, "run_tensor", lambda x: shapes.append(tuple(x.shape)) or run_tensor(x)
    )
    assert warm_up_segmenter(tiny_segmenter) is True
    assert warm_up_segmenter(tiny_segmenter) is False
    size = tiny_segmenter.tile_size
    assert shapes == [(2, 1, size, size)]  # one batch at the shape every task's batches have


def test_nothing_to_warm_up_off_the_device(tiny_segmenter, monkeypatch):
    monkeypatch.setenv(PIPELINE_ENV, "off")
    assert warm_up_segmenter(tiny_segmenter) is False
    assert warm_up_segmenter(ClassicalSegmenter()) is False
