"""What the task, result and model routes share: loading and deleting a task of one kind,
its 404, and the error docs."""

from __future__ import annotations

import logging
from pathlib import Path
from uuid import UUID, uuid4

import anyio

from api.deps import Services
from api.problems import Problem
from store.blobs import TaskBlob, task_blob_key, task_prefix
from store.tasks import (
    FinetuneParameters,
    Task,
    TaskKind,
    TaskParameters,
    TaskStatus,
    create_task,
    delete_task,
    get_task,
    parse_task_id,
    request_cancel,
)

log = logging.getLogger(__name__)

# While a task runs, clients are told to poll again after this many seconds.
POLL_AFTER_S = 2
PROBLEM_RESPONSE = {"content": {"application/problem+json": {}}}
_NOUNS = {TaskKind.SEGMENT: "task", TaskKind.FINETUNE: "model"}


def unknown_task(task_id: str, kind: TaskKind = TaskKind.SEGMENT) -> Problem:
    noun = _NOUNS[kind]
    return Problem(404, f"no {noun} with id {task_id!r}", kind=f"unknown-{noun}")


def load_task(svc: Services, task_id: str, kind: TaskKind = TaskKind.SEGMENT) -> Task:
    """The task of that kind, detached from its session, or a 404 problem."""
    with svc.sessions() as session:
        task = get_task(session, task_id)
        if task is None or task.kind != kind:
            raise unknown_task(task_id, kind)
        session.expunge(task)
    return task


def finished_task(svc: Services, task_id: str) -> Task:
    """The segment task, or a 404 problem, or a 409 one while it has no results."""
    task = load_task(svc, task_id)
    if task.status == TaskStatus.FINISHED:
        return task
    if task.status == TaskStatus.FAILED:
        raise Problem(
            409,
            f"task {task.id} FAILED, so it has no results: {task.error}",
            kind="task-failed",
            task_status=task.status.value,
        )
    raise Problem(
        409,
        f"task {task.id} is {task.status.value} ({task.progress:.0%}); results are ready when "
        "it is FINISHED",
        kind="task-not-finished",
        task_status=task.status.value,
        headers={"Retry-After": str(POLL_AFTER_S)},
    )


def cancel_and_delete(svc: Services, task_id: str, kind: TaskKind = TaskKind.SEGMENT) -> None:
    """Stop the task if it runs (its worker notices within seconds) and remove everything."""
    with svc.sessions() as session:
        task = get_task(session, task_id)
        if task is None or task.kind != kind:
            raise unknown_task(task_id, kind)
        request_cancel(session, task.id)
        svc.blobs.delete_prefix(task_prefix(task.id))
        delete_task(session, task.id)
    svc.views.drop(task.id)


def check_model_name(svc: Services, name: str) -> None:
    """A 422 problem unless `name` is a model a task can use now: "default", a directory of
    MODELS_DIR, or the id of a FINISHED fine-tune."""
    if parse_task_id(name) is not None:
        with svc.sessions() as session:
            task = get_task(session, name)
            status = None if task is None or task.kind != TaskKind.FINETUNE else task.status
        if status == TaskStatus.FINISHED:
            return
        detail = f"no model with id {name!r}" if status is None else f"model {name} is {status}"
        raise Problem(422, f"{detail}; use a FINISHED model", kind="unknown-model")
    try:
        svc.settings.model_dir_for(name)
    except ValueError as error:
        raise Problem(422, str(error), kind="unknown-model") from None


async def publish_or_leave_to_sweep(svc: Services, task_id: UUID) -> None:
    """Send the task's message now; if the broker is down the sweep re-sends QUEUED tasks."""
    try:
        await anyio.to_thread.run_sync(svc.publish, str(task_id))
    except Exception as error:
        log.warning("could not queue task %s now (%s); the sweep will", task_id, error)


def create_from_task(
    svc: Services,
    source: Task,
    parameters: TaskParameters | FinetuneParameters,
    labels: Path | None = None,
) -> Task:
    """A new task on `source`'s image (copied, so deleting the source loses nothing), with a
    labels PNG for a fine-tune. The blobs are stored before the row is committed: a queued task
    always has its inputs."""
    task_id = uuid4()
    try:
        svc.blobs.copy(source.input_key, task_blob_key(task_id, TaskBlob.INPUT))
        if labels is not None:
            with labels.open("rb") as handle:
                key = task_blob_key(task_id, TaskBlob.TRAIN_MASK)
                svc.blobs.put_stream(key, handle, content_type="image/png")
        with svc.sessions() as session:
            task, _ = create_task(
                session,
                parameters=parameters,
                input_content_type=source.input_content_type,
                input_size=source.input_size,
                image_width=source.image_width,
                image_height=source.image_height,
                input_sha256=source.input_sha256,
                task_id=task_id,
            )
            session.expunge(task)
    except BaseException:
        svc.blobs.delete_prefix(task_prefix(task_id))
        raise
    return task
