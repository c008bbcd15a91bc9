"""The image's tile pack made beside the network, or taken as it is when the task already has
one (a re-run's, copied from its source's when the task was made)."""

from pathlib import Path

import numpy as np
import pytest

from store.blobs import LocalBlobStore, TaskBlob, task_blob_key
from store.settings import Settings
from worker import viewing
from worker.jobs import WorkerContext

IMAGE = np.random.default_rng(2).integers(0, 255, (300, 500), dtype=np.uint8)
TASK = "6f1c8a52-1d55-4d6b-9a56-3f0d8c1c2b7e"


@pytest.fixture
def context(tmp_path: Path) -> WorkerContext:
    settings = Settings(data_dir=tmp_path)
    blobs = LocalBlobStore(settings.blob_dir)
    return WorkerContext(settings=settings, sessions=None, blobs=blobs, load_segmenter=None)


def test_the_image_pack_is_made_and_stored_meanwhile(context, tmp_path):
    with viewing.image_views_meanwhile(context, TASK, IMAGE, tmp_path) as image_views:
        keys = image_views()
    key = task_blob_key(TASK, TaskBlob.VIEW_IMAGE)
    assert keys == {TaskBlob.VIEW_IMAGE.value: key}
    made = viewing.write_image_pack(IMAGE, tmp_path / "again.tiles").read_bytes()
    assert context.blobs.get_bytes(key) == made


def test_a_pack_the_task_has_is_not_made_again(context, tmp_path, monkeypatch):
    key = task_blob_key(TASK, TaskBlob.VIEW_IMAGE)
    context.blobs.put_bytes(key, b"the source's pack")

    def fail(*args, **kwargs):
        raise AssertionError("made again")

    monkeypatch.setattr(viewing, "write_image_pack", fail)
    with viewing.image_views_meanwhile(context, TASK, IMAGE, tmp_path) as image_views:
        assert image_views() == {TaskBlob.VIEW_IMAGE.value: key}
    assert context.blobs.get_bytes(key) == b"the source's pack"
