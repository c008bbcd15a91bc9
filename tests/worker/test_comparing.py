"""A re-run says what changed against the task it was made from: the comparison on SQLite and a
local blob store, and through `process_task` with the shipped model."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from model.compare import ADDED, REMOVED
from model.image.io import read_image
from model.segment.neural import get_segmenter
from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from store.blobs import LocalBlobStore, TaskBlob, task_blob_key
from store.database import create_db_engine, create_session_factory, upgrade_database
from store.settings import Settings
from store.tasks import (
    TaskParameters,
    create_task,
    delete_task,
    finish_task,
    get_task,
    mark_running,
)
from tests.service_stack import png_bytes
from worker.comparing import compare_with_source
from worker.jobs import WorkerContext
from worker.processing import process_task

SHAPE = (64, 96)


@pytest.fixture
def context(tmp_path: Path) -> WorkerContext:
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings.database_url)
    return WorkerContext(
        settings=settings,
        sessions=create_session_factory(create_db_engine(settings.database_url)),
        blobs=LocalBlobStore(settings.blob_dir),
        load_segmenter=lambda name: get_segmenter(settings.model_dir_for(name)),
    )


def new_task(context: WorkerContext, data: bytes, source_task=None, **parameters):
    with context.sessions() as session:
        task, _ = create_task(
            session,
            parameters=TaskParameters(**parameters),
            input_content_type="image/png",
            input_size=len(data),
            image_width=SHAPE[1],
            image_height=SHAPE[0],
            source_task=source_task,
        )
        session.expunge(task)
    context.blobs.put_bytes(task_blob_key(task.id, TaskBlob.INPUT), data)
    return task


def finished_with_mask(context: WorkerContext, mask: np.ndarray):
    task = new_task(context, png_bytes(mask))
    key = task_blob_key(task.id, TaskBlob.MASK)
    context.blobs.put_bytes(key, png_bytes(mask))
    with context.sessions() as session:
        assert mark_running(session, task.id, stale_after_s=60, max_attempts=3)
        assert finish_task(session, task.id, result_keys={TaskBlob.MASK.value: key}, summary={})
    return task


def marks(*centres: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    for x, y in centres:
        cv2.circle(mask, (x, y), 6, 255, -1)
    return mask


def test_a_rerun_is_compared_with_its_source(context: WorkerContext, tmp_path: Path) -> None:
    source = finished_with_mask(context, marks((15, 15), (45, 15)))
    rerun = new_task(context, b"image", source_task=source.id)
    outputs, changes = compare_with_source(context, rerun, marks((15, 15), (75, 40)), tmp_path)
    assert changes == {
        "source_task": str(source.id),
        "before": 2,
        "after": 2,
        "added": 1,
        "removed": 1,
        "changed": 0,
        "grown": 0,
        "shrunk": 0,
        "unchanged": 1,
        "merged": 0,
        "merged_into": 0,
        "split": 0,
        "split_into": 0,
    }
    diff = read_image(outputs[TaskBlob.DIFF])
    assert diff.shape == SHAPE
    assert diff[15, 45] == REMOVED and diff[40, 75] == ADDED and diff[15, 15] == 0


def test_nothing_to_compare_is_not_an_error(context: WorkerContext, tmp_path: Path) -> None:
    mask = marks((15, 15))
    fresh = new_task(context, b"image")
    assert compare_with_source(context, fresh, mask, tmp_path) == ({}, None)
    unfinished = new_task(context, b"image")
    rerun = new_task(context, b"image", source_task=unfinished.id)
    assert compare_with_source(context, rerun, mask, tmp_path) == ({}, None)
    source = finished_with_mask(context, mask)
    rerun = new_task(context, b"image", source_task=source.id)
    with context.sessions() as session:
        delete_task(session, source.id)
    assert compare_with_source(context, rerun, mask, tmp_path) == ({}, None)
    other_size = finished_with_mask(context, np.zeros((10, 10), np.uint8))
    rerun = new_task(context, b"image", source_task=other_size.id)
    assert compare_with_source(context, rerun, mask, tmp_path) == ({}, None)


@pytest.mark.slow
def test_a_rerun_with_the_same_model_changes_nothing(context: WorkerContext) -> None:
    spec = fit_grid_inside(
        random_spec(5, height=256, width=256, rows=4, cols=4, mark_size=24, bit_depth=8)
    )
    data = png_bytes(generate_slide(spec, 5).image)
    source = new_task(context, data)
    assert process_task(context, source.id).action == "finished"
    rerun = new_task(context, data, source_task=source.id)
    assert process_task(context, rerun.id).action == "finished"
    with context.sessions() as session:
        task = get_task(session, rerun.id)
        changes = task.summary["changes"]
        assert TaskBlob.DIFF.value in task.result_keys
    assert changes["source_task"] == str(source.id)
    assert changes["before"] == changes["after"] == changes["unchanged"] > 0
    assert changes["added"] == changes["removed"] == changes["changed"] == 0
