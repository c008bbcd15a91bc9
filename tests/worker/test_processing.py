"""`process_task` in this process, on SQLite and a local blob store, with the shipped model."""

import json
import threading
import time
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest
from scipy import ndimage
from sqlalchemy import update

from model.image.io import read_image
from model.image.normalize import intensity_window
from model.image.tilepack import read_file_index
from model.metrics import mark_id_accuracy
from model.segment.neural import get_segmenter
from model.segment.pitch import SMALL_MARK_SCALE
from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from store.blobs import SEGMENT_RESULTS, LocalBlobStore, TaskBlob, task_blob_key
from store.database import create_db_engine, create_session_factory, upgrade_database
from store.settings import Settings
from store.tasks import (
    CANCELLED_ERROR,
    Task,
    TaskParameters,
    TaskStatus,
    create_task,
    get_task,
    request_cancel,
)
from tests.service_stack import png_bytes, read_png
from worker.jobs import WorkerContext
from worker.processing import process_task


@pytest.fixture
def context(tmp_path: Path) -> WorkerContext:
    settings = Settings(data_dir=tmp_path, task_stale_after_s=2.0, task_max_attempts=2)
    upgrade_database(settings.database_url)
    return WorkerContext(
        settings=settings,
        sessions=create_session_factory(create_db_engine(settings.database_url)),
        blobs=LocalBlobStore(settings.blob_dir),
        load_segmenter=lambda name: get_segmenter(settings.model_dir_for(name)),
    )


def queue(context: WorkerContext, data: bytes, **parameters) -> str:
    """What the API does: store the input, then commit a QUEUED row."""
    with context.sessions() as session:
        task, _ = create_task(
            session,
            parameters=TaskParameters(**parameters),
            input_content_type="image/png",
            input_size=len(data),
            image_width=1,
            image_height=1,
        )
        task_id = task.id
    context.blobs.put_bytes(task_blob_key(task_id, TaskBlob.INPUT), data)
    return str(task_id)


def state(context: WorkerContext, task_id: str):
    with context.sessions() as session:
        return get_task(session, task_id)


def test_grid_slide_is_segmented_registered_and_stored(context: WorkerContext) -> None:
    spec = fit_grid_inside(
        random_spec(77, height=640, width=640, rows=8, cols=9, mark_size=26, bit_depth=8)
    )
    slide = generate_slide(spec, 77)
    task_id = queue(context, png_bytes(slide.image), rows=8, cols=9)

    outcome = process_task(context, task_id)

    assert outcome.action == "finished"
    task = state(context, task_id)
    assert task.status == TaskStatus.FINISHED and task.progress == 1.0
    viewer = ["views/image.tiles", "views/mask.tiles", "views/outline.tiles", "views/marks.json"]
    expected = {blob.value for blob in SEGMENT_RESULTS} | set(viewer)
    assert set(task.result_keys) == expected
    for name, key in task.result_keys.items():
        assert key == f"tasks/{task_id}/{name}"
        assert context.blobs.exists(key)
    labels = read_image(context.blobs.path_for(task.result_keys["labels.png"]))
    assert mark_id_accuracy(labels, slide.labels) >= 0.95
    # What the viewer reads, made here: the image as the model sees it, the mask, the marks.
    image = read_file_index(context.blobs.path_for(task.result_keys["views/image.tiles"]))
    window = intensity_window(slide.image)
    assert image.meta["window"] == [window.low, window.high]
    assert image.shape.level_sizes[0] == (640, 640)
    mask = read_image(context.blobs.path_for(task.result_keys["mask.png"]))
    mask_pack = context.blobs.path_for(task.result_keys["views/mask.tiles"])
    start, length = read_file_index(mask_pack).tile_span(0, 1, 1)
    with mask_pack.open("rb") as handle:
        handle.seek(start)
        np.testing.assert_array_equal(read_png(handle.read(length)), mask[256:512, 256:512])
    marks = json.loads(context.blobs.path_for(task.result_keys["views/marks.json"]).read_text())
    found = len(np.unique(labels[labels > 0]))
    assert (marks["rows"], marks["cols"], marks["found"]) == (8, 9, found)


def test_finished_task_is_not_run_again(context: WorkerContext) -> None:
    task_id = queue(context, png_bytes(np.zeros((64, 64), np.uint8)))
    assert process_task(context, task_id).action == "finished"
    again = process_task(context, task_id)
    assert (again.action, again.detail) == ("skipped", "FINISHED")
    assert state(context, task_id).attempts == 1


def test_two_deliveries_at_once_run_the_task_once(context: WorkerContext) -> None:
    task_id = queue(context, png_bytes(np.zeros((300, 300), np.uint8)))
    outcomes = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(process_task(context, task_id)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcome.action for outcome in outcomes) == ["finished", "skipped"]
    assert state(context, task_id).attempts == 1


def test_unreadable_input_fails_with_a_message_for_the_user(context: WorkerContext) -> None:
    task_id = queue(context, b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    outcome = process_task(context, task_id)
    task = state(context, task_id)
    assert outcome.action == "failed" and task.status == TaskStatus.FAILED
    assert task.error.startswith("the uploaded image")
    assert "amseg-task-" not in task.error  # no scratch paths
    assert context.blobs.exists(task.input_key)  # the input is kept


def test_missing_input_fails(context: WorkerContext) -> None:
    task_id = queue(context, png_bytes(np.zeros((8, 8), np.uint8)))
    context.blobs.delete_prefix(f"tasks/{task_id}/")
    process_task(context, task_id)
    assert "missing" in state(context, task_id).error


def test_cancel_while_running_stops_and_fails_the_task(context: WorkerContext) -> None:
    big = np.random.default_rng(0).integers(0, 256, (3072, 3072), dtype=np.uint8)
    task_id = queue(context, png_bytes(big))
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.append(process_task(context, task_id)))
    worker.start()
    deadline = time.monotonic() + 60
    while state(context, task_id).stage != "segmenting":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with context.sessions() as session:
        assert request_cancel(session, task_id)
    worker.join(timeout=120)
    assert outcomes[0].action == "stopped"
    task = state(context, task_id)
    assert task.status == TaskStatus.FAILED and task.error == CANCELLED_ERROR
    assert not context.blobs.exists(task_blob_key(task_id, TaskBlob.MASK))


def test_task_out_of_attempts_is_skipped(context: WorkerContext) -> None:
    task_id = queue(context, png_bytes(np.zeros((8, 8), np.uint8)))
    with context.sessions() as session:
        session.execute(update(Task).where(Task.id == UUID(task_id)).values(attempts=2))
        session.commit()
    assert process_task(context, task_id).action == "skipped"
    assert state(context, task_id).status == TaskStatus.QUEUED


def run_small_mark_task(
    context: WorkerContext, monkeypatch, **parameters
) -> tuple[list[tuple[float, str | None]], float]:
    """Runs a grid of 15 px marks past a segmenter blind to them at full resolution; returns
    every (progress, stage) the task reported and the id accuracy of its labels."""
    from dataclasses import replace

    import worker.jobs as jobs
    from tests.model.scenes import SmallMarkBlindSegmenter, disc_grid_scene

    image, labels = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    blind = replace(context, load_segmenter=lambda name: SmallMarkBlindSegmenter())
    reports = []
    real_report = jobs.report_progress

    def spy(session, task_id, *, progress, stage=None):
        reports.append((progress, stage))
        return real_report(session, task_id, progress=progress, stage=stage)

    monkeypatch.setattr(jobs, "report_progress", spy)
    task_id = queue(blind, png_bytes(image), rows=8, cols=9, **parameters)
    assert process_task(blind, task_id).action == "finished"
    ids = read_image(blind.blobs.path_for(state(blind, task_id).result_keys["labels.png"]))
    return reports, mark_id_accuracy(ids, labels)


def test_marks_too_small_at_first_are_found_on_the_second_look(
    context: WorkerContext, monkeypatch
) -> None:
    """The worker goes through predict_image's enlarged second look and says so as it runs."""
    reports, accuracy = run_small_mark_task(context, monkeypatch, accurate=False)
    assert accuracy >= 0.95
    stages = [stage for _, stage in reports if stage]
    assert "segmenting again at scale 1.5" in stages
    progress = [value for value, _ in reports]
    assert progress == sorted(progress)  # the bar never moves back


def test_an_accurate_task_enlarges_small_marks_in_one_pass(
    context: WorkerContext, monkeypatch
) -> None:
    reports, accuracy = run_small_mark_task(context, monkeypatch, accurate=True)
    assert accuracy >= 0.95
    stages = [stage for _, stage in reports if stage]
    assert f"segmenting at scale {SMALL_MARK_SCALE:g}" in stages  # says how it was run
    assert not any("again" in stage for stage in stages)  # enlarged from the start


def test_the_task_says_what_registration_found_and_warns_when_the_grid_is_doubtful(
    context: WorkerContext,
) -> None:
    spec = fit_grid_inside(
        random_spec(78, height=512, width=512, rows=6, cols=6, mark_size=24, bit_depth=8)
    )
    slide = generate_slide(spec, 78)
    sound = queue(context, png_bytes(slide.image), rows=6, cols=6)
    doubtful = queue(context, png_bytes(slide.image), rows=20, cols=20)  # the wrong grid
    for task_id in (sound, doubtful):
        assert process_task(context, task_id).action == "finished"

    summary = state(context, sound).summary
    assert summary["expected"] == 36 and summary["found"] >= 34
    assert summary["warnings"] == []
    summary = state(context, doubtful).summary
    assert summary["expected"] == 400 and summary["missing"] >= 400 - 36
    assert any("grid positions have a mark" in warning for warning in summary["warnings"])


def test_a_task_without_a_grid_counts_its_marks(context: WorkerContext) -> None:
    spec = fit_grid_inside(random_spec(79, height=384, width=384, rows=4, cols=4, mark_size=24))
    task_id = queue(context, png_bytes(generate_slide(spec, 79).image))
    assert process_task(context, task_id).action == "finished"
    task = state(context, task_id)
    mask = read_image(context.blobs.path_for(task.result_keys["mask.png"])) > 0
    objects = ndimage.label(mask, structure=np.ones((3, 3)))[1]
    # Counted as a registration counts: the pieces of one mark are one mark; specks apart.
    summary = task.summary
    assert set(summary) == {"found", "small_objects", "specks", "warnings"}
    assert 12 <= summary["found"] <= 16 and summary["warnings"] == []
    assert summary["found"] + summary["small_objects"] + summary["specks"] <= objects
