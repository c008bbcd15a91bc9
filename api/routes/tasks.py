"""Tasks: upload an image as a task, list, read and delete tasks."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Annotated
from uuid import uuid4

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import ValidationError

from api.deps import MetricsDep, Services, ServicesDep, require_api_key
from api.names import clean_name
from api.problems import Problem, invalid_parameters
from api.routes.common import (
    POLL_AFTER_S,
    PROBLEM_RESPONSE,
    cancel_and_delete,
    check_grid_inside,
    check_model_name,
    load_task,
    publish_or_leave_to_sweep,
)
from api.schemas import TaskCreated, TaskPage, TaskPublic, TaskQuery, task_links, task_public
from api.uploads import IMAGE_CONTENT_TYPES, MULTIPART, ReceivedImage, receive_upload
from store.blobs import TaskBlob, task_blob_key, task_prefix
from store.tasks import (
    MAX_PAGE_SIZE,
    Task,
    TaskParameters,
    TaskStatus,
    create_task,
    get_task_by_idempotency_key,
    list_tasks,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["tasks"], dependencies=[Depends(require_api_key)])

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
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "imzml": {
                            "type": "string",
                            "format": "binary",
                            "description": "The acquisition's .imzML (no .ibd needed): marks "
                            "are joined to its spectra, rows and cols default to its grid",
                        },
                    },
                }
            },
        },
    }
}


@router.post(
    "/tasks",
    status_code=201,
    response_model=TaskCreated,
    summary="Upload an image as a new task",
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": TaskCreated, "description": "Idempotency-Key seen before: that task"},
        401: PROBLEM_RESPONSE,
        408: PROBLEM_RESPONSE,
        413: PROBLEM_RESPONSE,
        415: PROBLEM_RESPONSE,
        422: PROBLEM_RESPONSE,
        503: PROBLEM_RESPONSE,
    },
)
async def create_task_route(
    request: Request,
    svc: ServicesDep,
    metrics: MetricsDep,
    response: Response,
    query: Annotated[TaskQuery, Query()],
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
    """Upload an image (raw body or multipart field `file`) and queue it for segmentation.
    The task keeps `name`, or else the multipart file name, as the slide's name. A multipart
    body may add the acquisition's imzML as the part `imzml`: the marks are then joined to its
    spectra (`flip_x`, `flip_y`, `transpose` orient it), and `rows`, `cols` default to its grid.

    The API checks the image's header (format, size) and the imzML's first bytes; the worker
    decodes them, so damaged data fails the task with a message in its `error`."""
    if query.model is not None:
        await anyio.to_thread.run_sync(check_model_name, svc, query.model)

    with tempfile.TemporaryDirectory(prefix="amseg-upload-") as scratch:
        received = await receive_upload(request, Path(scratch), with_imzml=True)
        parameters = checked_parameters(query, svc, received)
        name = clean_name(query.name or received.filename)
        task, created = await anyio.to_thread.run_sync(
            _store_and_create, svc, received, parameters, idempotency_key, name
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
        metrics.uploads.inc()
        await publish_or_leave_to_sweep(svc, task.id)
    response.headers["Location"] = f"/tasks/{task.id}"
    return TaskCreated(id=str(task.id), status=task.status, links=task_links(task))


def checked_parameters(query: TaskQuery, svc: Services, received: ReceivedImage) -> TaskParameters:
    """The task's parameters once the body says whether an imzML came; a 422 problem in
    words for orientation flags without one, or a grid the image cannot hold."""
    try:
        parameters = query.task_parameters(
            svc.settings.default_accurate, imzml=received.imzml is not None
        )
    except ValidationError as error:
        raise invalid_parameters(error) from None
    if parameters.rows is not None:
        check_grid_inside(parameters.rows, parameters.cols, received.width, received.height)
    return parameters


def _store_and_create(
    svc: Services,
    received: ReceivedImage,
    parameters: TaskParameters,
    idempotency_key: str | None,
    name: str | None,
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
    svc.blobs.put_file(input_key, received.path, content_type=received.content_type)
    try:
        if received.imzml is not None:
            imzml_key = task_blob_key(task_id, TaskBlob.IMZML)
            svc.blobs.put_file(imzml_key, received.imzml, content_type="application/xml")
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
                name=name,
            )
            session.expunge(task)
    except BaseException:
        svc.blobs.delete_prefix(task_prefix(task_id))
        raise
    if not created:  # a concurrent request with the same key won
        svc.blobs.delete_prefix(task_prefix(task_id))
    return task, created


@router.get("/tasks", response_model=TaskPage, summary="List tasks, newest first")
def list_tasks_route(
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    status: TaskStatus | None = None,
) -> TaskPage:
    """One page of tasks; pass `next_cursor` as `cursor` for the next one."""
    with svc.sessions() as session:
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


@router.get(
    "/tasks/{task_id}",
    response_model=TaskPublic,
    summary="Status, progress and result links of a task",
    responses={404: PROBLEM_RESPONSE},
)
def read_task(svc: ServicesDep, response: Response, task_id: str) -> TaskPublic:
    """The task's state; while it is not over, `Retry-After` says when to poll again."""
    task = load_task(svc, task_id)
    if not task.is_terminal:
        response.headers["Retry-After"] = str(POLL_AFTER_S)
    return task_public(task)


@router.delete(
    "/tasks/{task_id}",
    status_code=204,
    summary="Cancel a task and delete it with its files",
    responses={404: PROBLEM_RESPONSE},
)
def delete_task_route(svc: ServicesDep, task_id: str) -> Response:
    """Stops the task if it runs (its worker notices within seconds) and removes everything."""
    cancel_and_delete(svc, task_id)
    return Response(status_code=204)
