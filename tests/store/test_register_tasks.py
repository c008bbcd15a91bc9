"""Register tasks in the task table (SQLite and Postgres): their kind, parameters, shared image
and source; the words of grid errors; and what a model reference resolves to."""

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from store.blobs import TaskBlob, task_blob_key
from store.model_refs import UnknownModelError, check_model_usable, resolve_model
from store.settings import Settings
from store.tasks import (
    FinetuneParameters,
    RegisterParameters,
    TaskKind,
    TaskParameters,
    TaskStatus,
    count_tasks_using_input,
    create_task,
    finish_task,
    get_task,
    list_tasks,
    mark_running,
)


def new_task(session: Session, parameters: Any, **extra: Any):
    task, _ = create_task(
        session,
        parameters=parameters,
        input_content_type="image/png",
        input_size=10,
        image_width=64,
        image_height=48,
        **extra,
    )
    return task


def test_a_register_task_shares_its_sources_image_and_mask(session: Session) -> None:
    source = new_task(session, TaskParameters(rows=4, cols=5, threshold=0.4), name="slide7.tif")
    mask_key = task_blob_key(source.id, TaskBlob.MASK)
    parameters = RegisterParameters(rows=5, cols=4, threshold=0.4)
    task = new_task(
        session,
        parameters,
        name=source.name,
        source_task=source.id,
        input_key=source.input_key,
        result_keys={TaskBlob.MASK.value: mask_key},
    )

    stored = get_task(session, task.id)
    assert stored.kind == TaskKind.REGISTER
    assert stored.name == "slide7.tif" and stored.source_task == source.id
    assert stored.input_key == source.input_key
    assert stored.result_keys == {"mask.png": mask_key}
    assert stored.task_parameters == parameters
    assert stored.task_parameters.segmentation() == TaskParameters(rows=5, cols=4, threshold=0.4)
    assert count_tasks_using_input(session, source.input_key, besides=source.id) == 1
    assert count_tasks_using_input(session, source.input_key, besides=task.id) == 1
    # Listed with the segment tasks: both are segmentations.
    listed = {t.id for t in list_tasks(session).tasks}
    assert {source.id, task.id} <= listed
    assert task.id not in {t.id for t in list_tasks(session, kind=TaskKind.FINETUNE).tasks}


def test_a_register_task_runs_and_finishes_like_any_task(session: Session) -> None:
    task = new_task(session, RegisterParameters(rows=2, cols=2))
    assert mark_running(session, task.id, stale_after_s=60, max_attempts=3)
    assert finish_task(session, task.id, result_keys={"mask.png": "tasks/x/mask.png"})
    assert get_task(session, task.id).status == TaskStatus.FINISHED


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"rows": 30}, "give both rows and columns (number of grid rows and columns, e.g. rows"),
    ],
)
def test_grid_errors_say_what_to_type(parameters: dict, words: str) -> None:
    with pytest.raises(ValidationError) as raised:
        TaskParameters(**parameters)
    assert words in str(raised.value)
    assert "Value error" not in str(raised.value)


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({}, "a registration needs the grid"),
        ({"rows": 3, "cols": 3, "mark_x": 1.0}, "give all four of mark_x, mark_y"),
        (
            {"rows": 3, "cols": 3, "mark_x": 1, "mark_y": 1, "mark_row": 3, "mark_col": 0},
            "must be below rows (3)",
        ),
    ],
)
def test_register_parameters_need_a_grid_and_a_whole_known_mark(
    parameters: dict, words: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        RegisterParameters(**parameters)
    assert words in str(raised.value)
    known = RegisterParameters(rows=3, cols=3, mark_x=5, mark_y=6, mark_row=2, mark_col=0)
    assert known.has_known_mark and not RegisterParameters(rows=3, cols=3).has_known_mark


def test_model_references_resolve_in_one_place(session: Session, tmp_path: Path) -> None:
    (tmp_path / "dan").mkdir()
    (tmp_path / "dan" / "model.safetensors").write_bytes(b"x")
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path)
    assert resolve_model(settings, None).is_default
    assert resolve_model(settings, "default").is_default
    assert resolve_model(settings, "dan").directory == tmp_path / "dan"
    with pytest.raises(UnknownModelError, match="known models: default, dan"):
        resolve_model(settings, "../etc")

    tune = new_task(session, FinetuneParameters(labelled=True))
    assert resolve_model(settings, str(tune.id)).finetune_id == tune.id
    with pytest.raises(UnknownModelError, match="is QUEUED; use a FINISHED model"):
        check_model_usable(session, settings, str(tune.id))
    assert mark_running(session, tune.id, stale_after_s=60, max_attempts=3)
    assert finish_task(session, tune.id, result_keys={})
    assert check_model_usable(session, settings, str(tune.id)).finetune_id == tune.id
    segment = new_task(session, TaskParameters())
    with pytest.raises(UnknownModelError, match="no model with id"):
        check_model_usable(session, settings, str(segment.id))
