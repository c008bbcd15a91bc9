"""A register task run by `process_task` in this process (SQLite, local blobs): it numbers a
finished task's stored mask on another grid without segmenting, shares the source's image and
mask, and follows the same claim rules as every task."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from model.image.io import read_image
from store.blobs import LocalBlobStore, TaskBlob, task_blob_key
from store.database import create_db_engine, create_session_factory, upgrade_database
from store.settings import Settings
from store.tasks import (
    RegisterParameters,
    TaskParameters,
    TaskStatus,
    create_task,
    finish_task,
    get_task,
    mark_running,
)
from tests.model.grid_masks import GridSpec, make_grid_mask
from tests.service_stack import png_bytes
from worker.jobs import WorkerContext
from worker.processing import process_task
from worker.registering import SUMMARY_COUNTS

ROWS, COLS = 6, 8


def no_segmentation(name: str | None):
    raise AssertionError("a register task must not load a segmenter")


@pytest.fixture
def context(tmp_path: Path) -> WorkerContext:
    settings = Settings(data_dir=tmp_path, task_stale_after_s=2.0, task_max_attempts=2)
    upgrade_database(settings.database_url)
    return WorkerContext(
        settings=settings,
        sessions=create_session_factory(create_db_engine(settings.database_url)),
        blobs=LocalBlobStore(settings.blob_dir),
        load_segmenter=no_segmentation,
    )


def finished_source(context: WorkerContext, mask: np.ndarray) -> str:
    """A FINISHED segment task of a 6 x 8 grid whose stored mask is `mask`."""
    with context.sessions() as session:
        task, _ = create_task(
            session,
            parameters=TaskParameters(rows=ROWS, cols=COLS),
            input_content_type="image/png",
            input_size=1,
            image_width=mask.shape[1],
            image_height=mask.shape[0],
            name="slide7.png",
        )
        mask_key = task_blob_key(task.id, TaskBlob.MASK)
        context.blobs.put_bytes(task.input_key, png_bytes(mask // 2 + 40))
        context.blobs.put_bytes(mask_key, png_bytes(mask))
        assert mark_running(session, task.id, stale_after_s=60, max_attempts=2)
        assert finish_task(session, task.id, result_keys={TaskBlob.MASK.value: mask_key})
        return str(task.id)


def queue_register(context: WorkerContext, source_id: str, **parameters) -> str:
    with context.sessions() as session:
        source = get_task(session, source_id)
        task, _ = create_task(
            session,
            parameters=RegisterParameters(**parameters),
            input_content_type="image/png",
            input_size=1,
            image_width=source.image_width,
            image_height=source.image_height,
            name=source.name,
            source_task=source.id,
            input_key=source.input_key,
            result_keys={TaskBlob.MASK.value: source.result_keys[TaskBlob.MASK.value]},
        )
        return str(task.id)


def marks_of(context: WorkerContext, key: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(context.blobs.get_bytes(key).decode())))


def test_a_register_task_numbers_the_stored_mask_on_another_grid(context: WorkerContext) -> None:
    grid = make_grid_mask(GridSpec(rows=ROWS, cols=COLS, pitch_x=40, pitch_y=40, seed=1))
    mask = grid.mask.astype(np.uint8) * 255
    source_id = finished_source(context, mask)
    task_id = queue_register(context, source_id, rows=ROWS, cols=COLS + 2)

    outcome = process_task(context, task_id)

    assert outcome.action == "finished", outcome
    with context.sessions() as session:
        task, source = get_task(session, task_id), get_task(session, source_id)
    assert task.status == TaskStatus.FINISHED and task.progress == 1.0
    assert task.result_keys["mask.png"] == f"tasks/{source_id}/mask.png"  # shared, not copied
    for blob in ("labels.png", "ams.csv", "qc.json", "overlay.png"):
        assert task.result_keys[blob] == f"tasks/{task_id}/{blob}"
    assert not context.blobs.exists(f"tasks/{task_id}/input")  # the image is the source's
    assert task.summary["found"] == ROWS * COLS
    assert task.summary["expected"] == ROWS * (COLS + 2)
    assert any("ambiguous anchoring" in w for w in task.summary["warnings"])
    # The task's counts are qc.json's, under the same names.
    qc = json.loads(context.blobs.get_bytes(task.result_keys["qc.json"]))
    assert task.summary == {**{k: qc[k] for k in SUMMARY_COUNTS}, "warnings": qc["warnings"]}
    assert (qc["missing"], qc["extra"]) == (ROWS * 2, 0)
    # Each mark keeps its grid place; its id counts COLS + 2 columns a row now.
    labels = read_image(context.blobs.path_for(task.result_keys["labels.png"]))
    truth = grid.labels.astype(np.int64)
    row, col = (truth - 1) // COLS, (truth - 1) % COLS
    expected = np.where(truth > 0, row * (COLS + 2) + col + 1, 0)
    assert np.array_equal(labels[truth > 0], expected[truth > 0])
    marks = marks_of(context, task.result_keys["ams.csv"])
    assert {int(m["id"]) for m in marks} == set(np.unique(expected[expected > 0]).tolist())
    # The source is as it was.
    assert source.status == TaskStatus.FINISHED
    assert source.result_keys == {"mask.png": f"tasks/{source_id}/mask.png"}

    again = process_task(context, task_id)  # a duplicate delivery changes nothing
    assert (again.action, again.detail) == ("skipped", "FINISHED")


def test_a_lost_mask_fails_the_task_in_words(context: WorkerContext) -> None:
    grid = make_grid_mask(GridSpec(rows=ROWS, cols=COLS, pitch_x=40, pitch_y=40, seed=2))
    source_id = finished_source(context, grid.mask.astype(np.uint8) * 255)
    task_id = queue_register(context, source_id, rows=ROWS, cols=COLS)
    context.blobs.delete_prefix(f"tasks/{source_id}/mask.png")

    assert process_task(context, task_id).action == "failed"
    with context.sessions() as session:
        error = get_task(session, task_id).error
    assert error.startswith("the mask this task registers is missing from storage")


def test_a_grid_that_does_not_fit_fails_the_task_in_words(context: WorkerContext) -> None:
    source_id = finished_source(context, np.zeros((64, 64), np.uint8))
    task_id = queue_register(context, source_id, rows=ROWS, cols=COLS)

    assert process_task(context, task_id).action == "failed"
    with context.sessions() as session:
        task = get_task(session, task_id)
    assert task.status == TaskStatus.FAILED and task.error


def test_a_register_task_joins_its_imzml_and_takes_the_grid_from_it(
    context: WorkerContext, tmp_path: Path
) -> None:
    from tests.model.register.imzml_files import serpentine, write_imzml

    grid = make_grid_mask(GridSpec(rows=ROWS, cols=COLS, pitch_x=40, pitch_y=40, seed=3))
    source_id = finished_source(context, grid.mask.astype(np.uint8) * 255)
    positions = [(x, ROWS + 1 - y) for x, y in serpentine(ROWS, COLS)]  # y bottom to top
    imzml = write_imzml(tmp_path / "run.imzML", positions)
    task_id = queue_register(context, source_id, imzml=True, flip_y=True)
    context.blobs.put_bytes(task_blob_key(task_id, TaskBlob.IMZML), imzml.read_bytes())

    assert process_task(context, task_id).action == "finished"
    with context.sessions() as session:
        task = get_task(session, task_id)
    assert task.summary["expected"] == ROWS * COLS  # the imzML's extent
    assert task.summary["acquisition"] == {
        "rows": ROWS,
        "cols": COLS,
        "spectra": ROWS * COLS,
        "marks_with_spectrum": ROWS * COLS,
        "marks_without_spectrum": 0,
    }
    marks = marks_of(context, task.result_keys["ams.csv"])
    expected = {(ROWS - y, x - 1): index for index, (x, y) in enumerate(positions)}
    assert {(int(m["row"]), int(m["col"])): int(m["spectrum"]) for m in marks} == expected


def test_an_unreadable_imzml_fails_the_task_in_words(context: WorkerContext) -> None:
    grid = make_grid_mask(GridSpec(rows=ROWS, cols=COLS, pitch_x=40, pitch_y=40, seed=4))
    source_id = finished_source(context, grid.mask.astype(np.uint8) * 255)
    task_id = queue_register(context, source_id, rows=ROWS, cols=COLS, imzml=True)
    context.blobs.put_bytes(task_blob_key(task_id, TaskBlob.IMZML), b"<html></html>")

    assert process_task(context, task_id).action == "failed"
    with context.sessions() as session:
        error = get_task(session, task_id).error
    assert "acquisition.imzML: not an imzML file (its root element is <html>" in error
