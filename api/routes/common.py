"""What the task, result and model routes share: loading and deleting a task of one kind,
its 404, and the error docs."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from uuid import UUID, uuid4

import anyio
from sqlalchemy.orm import Session

from api.deps import Services
from api.problems import Problem
from model.errors import RegistrationError
from model.register.records import check_grid_fits
from store.blobs import (
    SHARED_RESULTS,
    BlobNotFoundError,
    BlobStore,
    TaskBlob,
    task_blob_key,
    task_prefix,
)
from store.model_refs import UnknownModelError, check_model_usable
from store.tasks import (
    FinetuneParameters,
    Task,
    TaskKind,
    TaskParameters,
    TaskStatus,
    create_task,
    delete_task,
    delete_views_tasks,
    get_task,
    keys_read_by_others,
    kind_family,
    request_cancel,
)

log = logging.getLogger(__name__)

# While a task runs, clients are told to poll again after this many seconds.
POLL_AFTER_S = 2
PROBLEM_RESPONSE = {"content": {"application/problem+json": {}}}
_NOUNS = {TaskKind.SEGMENT: "task", TaskKind.REGISTER: "task", TaskKind.FINETUNE: "model"}


def unknown_task(task_id: str, kind: TaskKind = TaskKind.SEGMENT) -> Problem:
    noun = _NOUNS[kind]
    return Problem(404, f"no {noun} with id {task_id!r}", kind=f"unknown-{noun}")


def load_task(svc: Services, task_id: str, kind: TaskKind = TaskKind.SEGMENT) -> Task:
    """The task of that kind (segment and register tasks for SEGMENT), detached from its
    session, or a 404 problem."""
    with svc.sessions() as session:
        task = get_task(session, task_id)
        if task is None or task.kind not in kind_family(kind):
            raise unknown_task(task_id, kind)
        session.expunge(task)
    return task


def finished_task(svc: Services, task_id: str) -> Task:
    """The segmentation task, or a 404 problem, or a 409 one while it has no results."""
    task = load_task(svc, task_id)
    if task.status == TaskStatus.FINISHED:
        return task
    raise not_finished(task)


def not_failed_task(svc: Services, task_id: str) -> Task:
    """The segmentation task unless it FAILED (409 then: a failed task has nothing to show,
    maybe not even a readable image), or a 404 problem."""
    task = load_task(svc, task_id)
    if task.status == TaskStatus.FAILED:
        raise not_finished(task)
    return task


def not_finished(task: Task) -> Problem:
    """The 409 for a task without results: FAILED with its error, or still going."""
    if task.status == TaskStatus.FAILED:
        raise Problem(
            409,
            f"task {task.id} FAILED, so it has no results: {task.error}",
            kind="task-failed",
            task_status=task.status.value,
        )
    return Problem(
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
        if task is None or task.kind not in kind_family(kind):
            raise unknown_task(task_id, kind)
        request_cancel(session, task.id)
        # Two sharers deleted at the same moment may each see the other and leave the shared
        # image behind: a leak, never a task that loses its image.
        still_read = keys_read_by_others(session, task.input_key, besides=task.id)
        delete_blobs(svc.blobs, task, still_read=still_read)
        delete_task(session, task.id)
        delete_views_tasks(session, task.id)
    svc.views.drop(task.id)


def delete_blobs(blobs: BlobStore, task: Task, *, still_read: set[str]) -> None:
    """A task's own blobs. The image and mask (and their tile packs) it shares with the
    register tasks made from it (or with the task it was registered from) stay while another
    task reads them (`still_read`: what the others hold), and go with the last one."""
    own = task_prefix(task.id)
    shared = {task.input_key} | {
        task.result_keys[blob.value] for blob in SHARED_RESULTS if blob.value in task.result_keys
    }
    kept = shared & still_read
    own_kept = {key for key in kept if key.startswith(own)}
    if own_kept:
        for key in list(blobs.list_keys(own)):
            if key not in own_kept:
                blobs.delete_prefix(key)
    else:
        blobs.delete_prefix(own)
    for key in shared - kept:
        if not key.startswith(own):
            blobs.delete_prefix(key)


def check_grid_inside(rows: int, cols: int, width: int, height: int) -> None:
    """A 422 problem in words when an image of width x height px cannot hold the grid."""
    try:
        check_grid_fits(rows, cols, width=width, height=height)
    except RegistrationError as error:
        raise Problem(422, str(error), kind="grid-too-large") from None


def check_model_name(svc: Services, name: str) -> None:
    """A 422 problem unless `name` is a model a task can use now: "default", a directory of
    MODELS_DIR, or the id of a FINISHED fine-tune (store.model_refs decides)."""
    try:
        with svc.sessions() as session:
            check_model_usable(session, svc.settings, name)
    except UnknownModelError as error:
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
    labels PNG for a fine-tune; it keeps the source's name. The blobs are stored before the row
    is committed: a queued task always has its inputs."""
    task_id = uuid4()
    try:
        svc.blobs.copy(source.input_key, task_blob_key(task_id, TaskBlob.INPUT))
        if getattr(parameters, "imzml", False):  # a re-run joins the same acquisition
            copy_imzml(svc, source, task_id)
        if labels is not None:
            with labels.open("rb") as handle:
                key = task_blob_key(task_id, TaskBlob.TRAIN_MASK)
                svc.blobs.put_stream(key, handle, content_type="image/png")
        if isinstance(parameters, TaskParameters):  # a re-run: it shows the same image
            copy_image_views(svc, source, task_id)
        with svc.sessions() as session:
            task = _task_from_source(session, source, parameters, task_id)
            session.expunge(task)
    except BaseException:
        svc.blobs.delete_prefix(task_prefix(task_id))
        raise
    return task


def create_registration(
    svc: Services, source: Task, parameters: TaskParameters, imzml: Path | None = None
) -> Task:
    """A register task that reads `source`'s image and mask where they are (nothing is copied;
    deleting keeps shared blobs while a task reads them). Its imzML is `imzml` when sent, else
    a copy of the source's when it has one. A 409 problem when the source was deleted
    meanwhile."""
    # The mask, and the image's and the mask's tile packs when the source has them (else
    # the register task makes its own).
    shared = {
        blob.value: source.result_keys[blob.value]
        for blob in SHARED_RESULTS
        if blob.value in source.result_keys
    }
    task_id = uuid4()
    try:
        if imzml is not None:
            key = task_blob_key(task_id, TaskBlob.IMZML)
            svc.blobs.put_file(key, imzml, content_type="application/xml")
        elif getattr(parameters, "imzml", False):
            copy_imzml(svc, source, task_id)
        return _register_task_row(svc, source, parameters, task_id, shared)
    except BaseException:
        svc.blobs.delete_prefix(task_prefix(task_id))
        raise


def _register_task_row(
    svc: Services, source: Task, parameters: TaskParameters, task_id: UUID, shared: dict[str, str]
) -> Task:
    with svc.sessions() as session:
        task = _task_from_source(
            session, source, parameters, task_id,
            input_key=source.input_key, result_keys=shared,
        )  # fmt: skip
        # Committed first, checked after: a delete of the source that counted its sharers
        # before this commit has taken (or is taking) the blobs; refuse rather than queue a
        # task without them.
        mask_key = shared[TaskBlob.MASK.value]
        if not (svc.blobs.exists(source.input_key) and svc.blobs.exists(mask_key)):
            delete_task(session, task.id)
            raise Problem(409, f"task {source.id} was deleted meanwhile", kind="source-deleted")
        session.expunge(task)
    return task


def _task_from_source(session: Session, source: Task, parameters, task_id: UUID, **more) -> Task:
    """A new task row on `source`'s image (its type, size and hash), named after it."""
    task, _ = create_task(
        session,
        parameters=parameters,
        input_content_type=source.input_content_type,
        input_size=source.input_size,
        image_width=source.image_width,
        image_height=source.image_height,
        input_sha256=source.input_sha256,
        task_id=task_id,
        name=source.name,
        source_task=source.id,
        **more,
    )
    return task


def copy_image_views(svc: Services, source: Task, task_id: UUID) -> None:
    """The source's image tile pack, copied for a re-run of the same image: its worker finds
    it and does not make it again (seconds of a core on a large slide). None to copy (the
    source has not made it, or it went): the worker makes it."""
    key = source.result_keys.get(TaskBlob.VIEW_IMAGE.value)
    if key is None:
        return
    with contextlib.suppress(BlobNotFoundError):
        svc.blobs.copy(key, task_blob_key(task_id, TaskBlob.VIEW_IMAGE))


def copy_imzml(svc: Services, source: Task, task_id: UUID) -> None:
    """The source task's imzML, copied to the new task (a 409 problem when it is gone)."""
    try:
        svc.blobs.copy(
            task_blob_key(source.id, TaskBlob.IMZML), task_blob_key(task_id, TaskBlob.IMZML)
        )
    except BlobNotFoundError:
        raise Problem(
            409, f"task {source.id}'s imzML is missing from storage", kind="imzml-missing"
        ) from None
