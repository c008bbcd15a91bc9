"""A fresh worker's first task runs the IR shipped with the default model: no export and no
quantization (issue 38: the first task as fast as the next)."""

from __future__ import annotations

import numpy as np
import pytest

from model.segment import neural
from store.blobs import LocalBlobStore, TaskBlob, task_blob_key
from store.database import create_db_engine, create_session_factory, upgrade_database
from store.settings import Settings
from store.tasks import TaskParameters, TaskStatus, create_task, get_task
from tests.model.segment.test_shipped_ir import (  # noqa: F401  fixtures
    cpu_without_bf16_or_nncf,
    no_export_or_quantization,
)
from tests.service_stack import png_bytes
from worker.processing import process_task
from worker.tasks import build_context


@pytest.fixture
def fresh_segmenters():
    """No segmenter loaded by an earlier test (get_segmenter keeps them per process)."""
    neural._cached_segmenter.cache_clear()
    yield
    neural._cached_segmenter.cache_clear()


@pytest.mark.usefixtures(
    "no_export_or_quantization", "cpu_without_bf16_or_nncf", "fresh_segmenters"
)
def test_a_workers_first_task_neither_exports_nor_quantizes(tmp_path, monkeypatch):
    """A fresh worker (empty cache) on a CPU without bf16: the default model loads in int8
    from the shipped IR and the first task finishes with it."""
    monkeypatch.setenv("AMSEG_CACHE_DIR", str(tmp_path / "cache"))
    settings = Settings(data_dir=tmp_path / "data", worker_device="cpu")
    upgrade_database(settings.database_url)
    context = build_context(settings)
    loaded = []
    load = context.load_segmenter
    monkeypatch.setattr(
        context, "load_segmenter", lambda name: loaded.append(load(name)) or loaded[-1]
    )
    data = png_bytes(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8))
    with context.sessions() as session:
        task, _ = create_task(
            session,
            parameters=TaskParameters(),
            input_content_type="image/png",
            input_size=len(data),
            image_width=300,
            image_height=300,
        )
        task_id = str(task.id)
    context.blobs.put_bytes(task_blob_key(task.id, TaskBlob.INPUT), data)
    assert isinstance(context.blobs, LocalBlobStore)
    process_task(context, task_id, claimant="test")
    with create_session_factory(create_db_engine(settings.database_url))() as session:
        assert get_task(session, task_id).status == TaskStatus.FINISHED
    (segmenter,) = loaded
    assert segmenter.runtime.precision == "int8"
    assert segmenter.ir_source.startswith("shipped IR")
