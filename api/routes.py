"""The routes: tasks (create, list, read, delete), their results, health and metrics."""

from __future__ import annotations

import logging
import secrets
import tempfile
from pathlib import Path
from typing import Annotated
from uuid import uuid4

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from sqlalchemy import func, select, text

from api.problems import Problem
from api.schemas import (
    ComponentHealth,
    Health,
    TaskCreated,
    TaskPage,
    TaskPublic,
    task_links,
    task_public,
)
from api.uploads import IMAGE_CONTENT_TYPES, MULTIPART, ReceivedImage, receive_upload
from store.blobs import TaskBlob, task_blob_key, task_prefix
from store.tasks import (
    MAX_PAGE_SIZE,
    Task,
    TaskParameters,
    TaskStatus,
    create_task,
    delete_task,
    get_task,
    get_task_by_idempotency_key,
    list_tasks,
    request_cancel,
)

log = logging.getLogger(__name__)

# While a task runs, clients are told to poll again after this many seconds.
POLL_AFTER_S = 2
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(request: Request, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """With API_KEYS set, every route but /health and the docs needs one of them."""
    keys = request.app.state.settings.api_keys
    if not keys:
        return
    if key is None or not any(secrets.compare_digest(key, known) for known in keys):
        raise Problem(
            401,
            "a valid X-API-Key header is required",
            kind="unauthorized",
            headers={"WWW-Authenticate": "APIKey"},
        )


def services(request: Request):
    return request.app.state.services


router = APIRouter()
protected = APIRouter(dependencies=[Depends(require_api_key)])

_PROBLEM = {"content": {"application/problem+json": {}}}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in IMAGE_CONTENT_TYPES
            },
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


def _unknown_task(task_id: str) -> Problem:
    return Problem(404, f"no task with id {task_id!r}", kind="unknown-task")


def _load_task(request: Request, task_id: str) -> Task:
    with services(request).sessions() as session:
        task = get_task(session, task_id)
        if task is None:
            raise _unknown_task(task_id)
        session.expunge(task)
    return task


# ------------------------------------------------------------------------------------ tasks


@protected.post(
    "/tasks",
    status_code=201,
    response_model=TaskCreated,
    summary="Upload an image as a new task",
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": TaskCreated, "description": "Idempotency-Key seen before: that task"},
        401: _PROBLEM,
        413: _PROBLEM,
        415: _PROBLEM,
        422: _PROBLEM,
    },
)
async def create_task_route(
    request: Request,
    response: Response,
    rows: Annotated[
        int | None, Query(ge=1, le=10_000, description="Grid rows (with cols: register ids)")
    ] = None,
    cols: Annotated[int | None, Query(ge=1, le=10_000, description="Grid columns")] = None,
    model: Annotated[
        str | None, Query(max_length=100, description="Model name (default: shipped model)")
    ] = None,
    threshold: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="Probability threshold")
    ] = None,
    tile_size: Annotated[int | None, Query(ge=64, le=4096, description="Tile edge, px")] = None,
    accurate: Annotated[
        bool | None,
        Query(
            description="Enlarge grids of small marks 2x first: sharper outlines, 4x the "
            "network time on those images (default: ACCURATE_SEGMENTATION, else on only for "
            "the gpu queue)"
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Same key, same task: a retried upload does not create a second task",
        ),
    ] = None,
) -> TaskCreated:
    """Upload an image (raw body or multipart field `file`) and queue it for segmentation."""
    svc = services(request)
    try:
        parameters = TaskParameters(
            rows=rows,
            cols=cols,
            model=model,
            threshold=threshold,
            tile_size=tile_size,
            accurate=svc.settings.default_accurate if accurate is None else accurate,
        )
        svc.settings.model_dir_for(parameters.model)
    except (ValidationError, ValueError) as error:
        detail = error.errors()[0]["msg"] if isinstance(error, ValidationError) else str(error)
        raise Problem(422, detail, kind="invalid-parameters") from None

    with tempfile.TemporaryDirectory(prefix="amseg-upload-") as scratch:
        received = await receive_upload(request, Path(scratch))
        task, created = await anyio.to_thread.run_sync(
            _store_and_create, svc, received, parameters, idempotency_key
        )
    if not created:
        if task.input_sha256 != received.sha256 or task.task_parameters != parameters:
            raise Problem(
                422,
                "this Idempotency-Key was used for a different upload; use a new key",
                kind="idempotency-key-reused",
            )
        response.status_code = 200
    else:
        request.app.state.metrics.uploads.inc()
        try:
            await anyio.to_thread.run_sync(svc.publish, str(task.id))
        except Exception as error:  # the sweep re-sends QUEUED tasks, so nothing is lost
            log.warning("could not queue task %s now (%s); the sweep will", task.id, error)
    response.headers["Location"] = f"/tasks/{task.id}"
    return TaskCreated(id=str(task.id), status=task.status, links=task_links(task))


def _store_and_create(
    svc, received: ReceivedImage, parameters: TaskParameters, idempotency_key: str | None
) -> tuple[Task, bool]:
    """Upload the input first, then commit the row: a queued task always has its input."""
    if idempotency_key is not None:
        with svc.sessions() as session:
            existing = get_task_by_idempotency_key(session, idempotency_key)
            if existing is not None:
                session.expunge(existing)
                return existing, False
    task_id = uuid4()
    input_key = task_blob_key(task_id, TaskBlob.INPUT)
    with received.path.open("rb") as handle:
        svc.blobs.put_stream(input_key, handle, content_type=received.content_type)
    try:
        with svc.sessions() as session:
            task, created = create_task(
                session,
                parameters=parameters,
                input_content_type=received.content_type,
                input_size=received.size,
                image_width=received.width,
                image_height=received.height,
                input_sha256=received.sha256,
                idempotency_key=idempotency_key,
                task_id=task_id,
            )
            session.expunge(task)
    except BaseException:
        svc.blobs.delete_prefix(task_prefix(task_id))
        raise
    if not created:  # a concurrent request with the same key won
        svc.blobs.delete_prefix(task_prefix(task_id))
    return task, created


@protected.get("/tasks", response_model=TaskPage, summary="List tasks, newest first")
def list_tasks_route(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    status: TaskStatus | None = None,
) -> TaskPage:
    """One page of tasks; pass `next_cursor` as `cursor` for the next one."""
    with services(request).sessions() as session:
        try:
            page = list_tasks(session, limit=limit, cursor=cursor, status=status)
        except ValueError as error:
            raise Problem(422, str(error), kind="invalid-cursor") from None
        data = [task_public(task) for task in page.tasks]
    next_link = None
    if page.next_cursor is not None:
        next_link = f"/tasks?limit={limit}&cursor={page.next_cursor}"
        if status is not None:
            next_link += f"&status={status.value}"
    return TaskPage(data=data, next_cursor=page.next_cursor, links={"next": next_link})


@protected.get(
    "/tasks/{task_id}",
    response_model=TaskPublic,
    summary="Status, progress and result links of a task",
    responses={404: _PROBLEM},
)
def read_task(request: Request, response: Response, task_id: str) -> TaskPublic:
    """The task's state; while it is not over, `Retry-After` says when to poll again."""
    task = _load_task(request, task_id)
    if not task.is_terminal:
        response.headers["Retry-After"] = str(POLL_AFTER_S)
    return task_public(task)


@protected.delete(
    "/tasks/{task_id}",
    status_code=204,
    summary="Cancel a task and delete it with its files",
    responses={404: _PROBLEM},
)
def delete_task_route(request: Request, task_id: str) -> Response:
    """Stops the task if it runs (its worker notices within seconds) and removes everything."""
    svc = services(request)
    with svc.sessions() as session:
        task = get_task(session, task_id)
        if task is None:
            raise _unknown_task(task_id)
        request_cancel(session, task.id)
        svc.blobs.delete_prefix(task_prefix(task.id))
        delete_task(session, task.id)
    return Response(status_code=204)


# ---------------------------------------------------------------------------------- results


def _finished(request: Request, task_id: str) -> Task:
    task = _load_task(request, task_id)
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


def _stream_result(request: Request, task: Task, blob: TaskBlob) -> StreamingResponse:
    key = task.result_keys.get(blob.value)
    if key is None:
        if blob in (TaskBlob.LABELS, TaskBlob.AMS, TaskBlob.QC):
            raise Problem(
                404,
                f"task {task.id} was submitted without rows and cols, so its marks were not "
                "registered; submit the image again with ?rows=R&cols=C",
                kind="not-registered",
            )
        raise Problem(404, f"task {task.id} has no {blob.value}", kind="no-such-result")
    blobs = services(request).blobs
    chunks = blobs.iter_chunks(key)  # raises BlobNotFoundError now, not mid-stream
    filename = f"{task.id}_{blob.value.replace('.png', '').replace('.', '_')}"
    suffix = {"image/png": ".png", "text/csv": ".csv", "application/json": ".json"}
    filename += suffix.get(blob.content_type or "", "")
    return StreamingResponse(
        chunks,
        media_type=blob.content_type,
        headers={"Content-Disposition": f'inline; filename="{filename}"'},
    )


_RESULT_RESPONSES = {404: _PROBLEM, 409: _PROBLEM}


@protected.get(
    "/masks/{task_id}",
    summary="The mask PNG (0/255, the input's size)",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}}}, 303: {}, **_RESULT_RESPONSES},
)
def read_mask(
    request: Request,
    task_id: str,
    redirect: Annotated[bool, Query(description="Redirect to a presigned S3 URL")] = False,
):
    """The mask of a FINISHED task; 409 while it is not finished."""
    task = _finished(request, task_id)
    if redirect and (key := task.result_keys.get(TaskBlob.MASK.value)):
        url = services(request).blobs.presigned_url(key, expires_in_s=3600)
        if url is not None:  # the local store has no URLs: stream it instead
            return RedirectResponse(url, status_code=303)
    return _stream_result(request, task, TaskBlob.MASK)


@protected.get(
    "/tasks/{task_id}/labels",
    summary="Registered ids (uint16 PNG, 0 = background)",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}}}, **_RESULT_RESPONSES},
)
def read_labels(request: Request, task_id: str):
    """Each mark painted with its grid id row * cols + col + 1 (tasks given rows and cols)."""
    return _stream_result(request, _finished(request, task_id), TaskBlob.LABELS)


@protected.get(
    "/tasks/{task_id}/ams.csv",
    summary="One row per registered mark",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}, **_RESULT_RESPONSES},
)
def read_ams_csv(request: Request, task_id: str):
    """id, row, col, centre, area and bounding box of every mark."""
    return _stream_result(request, _finished(request, task_id), TaskBlob.AMS)


@protected.get(
    "/tasks/{task_id}/overlay.png",
    summary="The image with the marks (and ids) drawn on it",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}}}, **_RESULT_RESPONSES},
)
def read_overlay(request: Request, task_id: str):
    """For a quick look at the result."""
    return _stream_result(request, _finished(request, task_id), TaskBlob.OVERLAY)


@protected.get(
    "/tasks/{task_id}/qc",
    summary="Registration quality: fit, coverage and warnings",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}}}, **_RESULT_RESPONSES},
)
def read_qc(request: Request, task_id: str):
    """The QC record of the registration (JSON)."""
    return _stream_result(request, _finished(request, task_id), TaskBlob.QC)


# ----------------------------------------------------------------------------- operations


@router.get(
    "/health",
    response_model=Health,
    summary="Database, broker and storage reachability",
    responses={503: {"model": Health}},
)
def health(request: Request, response: Response) -> Health:
    """200 when every component answers, else 503 with what is wrong."""
    svc = services(request)
    checks = {
        "database": lambda: _check_database(svc),
        "broker": lambda: _check_broker(svc),
        "storage": lambda: svc.blobs.exists("health/probe"),
    }
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = ComponentHealth(ok=True, detail="ok")
        except Exception as error:
            results[name] = ComponentHealth(ok=False, detail=f"{type(error).__name__}: {error}")
    healthy = all(result.ok for result in results.values())
    if not healthy:
        response.status_code = 503
    return Health(status="ok" if healthy else "degraded", **results)


def _check_database(svc) -> None:
    with svc.sessions() as session:
        session.execute(text("SELECT 1"))


def _check_broker(svc) -> None:
    with svc.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


@protected.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(request: Request) -> Response:
    """Request counts and latencies, and tasks by status."""
    svc = services(request)

    def count_tasks() -> dict[str, int]:
        with svc.sessions() as session:
            rows = session.execute(select(Task.status, func.count()).group_by(Task.status))
            return {status.value: count for status, count in rows}

    registry = request.app.state.metrics
    registry.task_counts.count_tasks = count_tasks
    return Response(registry.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


router.include_router(protected)
