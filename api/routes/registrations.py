"""Registering a finished task's marks again from its stored mask: on another grid, with one
mark's grid place given, or joined to (another) acquisition's imzML, in seconds, without
segmenting the image again. The result is a new task of kind `register` (the source task stays
as it is), read like any task."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError

from api.acquisitions import receive_imzml
from api.deps import Services, ServicesDep, require_api_key
from api.problems import Problem, invalid_parameters
from api.routes.common import (
    PROBLEM_RESPONSE,
    check_grid_inside,
    create_registration,
    not_finished,
    publish_or_leave_to_sweep,
    unknown_task,
)
from api.schemas import RegisterQuery, TaskCreated, task_links
from store.blobs import TaskBlob
from store.tasks import SEGMENTATION_KINDS, RegisterParameters, Task, TaskStatus, get_task

router = APIRouter(tags=["tasks"], dependencies=[Depends(require_api_key)])

_IMZML_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "imzml": {
                            "type": "string",
                            "format": "binary",
                            "description": "An acquisition's .imzML to join the marks to",
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "/tasks/{task_id}/register",
    status_code=201,
    response_model=TaskCreated,
    summary="Register a finished task's mask again: another grid, a known mark, an imzML",
    openapi_extra=_IMZML_BODY,
    responses={
        404: PROBLEM_RESPONSE,
        409: PROBLEM_RESPONSE,
        415: PROBLEM_RESPONSE,
        422: PROBLEM_RESPONSE,
    },
)
async def register_task(
    request: Request,
    svc: ServicesDep,
    response: Response,
    task_id: str,
    query: Annotated[RegisterQuery, Query()],
) -> TaskCreated:
    """A new task (`201`, `Location`) of kind `register` that numbers the marks of a FINISHED
    task's mask on `rows` x `cols` (default: the task's grid), optionally pinning the mark at
    (`mark_x`, `mark_y`) to grid row `mark_row`, column `mark_col` (all four or none). A
    multipart body with the part `imzml` joins the marks to that acquisition (else to the
    task's own imzML, if it had one), oriented by `flip_x`, `flip_y`, `transpose` (default:
    the task's). It reads the task's image and mask where they are; the task is not changed."""
    source = await anyio.to_thread.run_sync(registrable_task, svc, task_id)
    with tempfile.TemporaryDirectory(prefix="amseg-register-") as scratch:
        imzml = await receive_imzml(request, Path(scratch) / "acquisition.imzML")
        try:
            parameters = query.parameters(source, new_imzml=imzml is not None)
        except ValidationError as error:
            raise invalid_parameters(error) from None
        _check_mark_inside(parameters, source)
        if parameters.rows is not None:
            check_grid_inside(
                parameters.rows, parameters.cols, source.image_width, source.image_height
            )
        task = await anyio.to_thread.run_sync(create_registration, svc, source, parameters, imzml)
    await publish_or_leave_to_sweep(svc, task.id)
    response.headers["Location"] = f"/tasks/{task.id}"
    return TaskCreated(id=str(task.id), status=task.status, links=task_links(task))


def _check_mark_inside(parameters: RegisterParameters, source: Task) -> None:
    width, height = source.image_width, source.image_height
    if parameters.has_known_mark and not (parameters.mark_x < width and parameters.mark_y < height):
        raise Problem(
            422,
            f"the known mark at x={parameters.mark_x:g}, y={parameters.mark_y:g} is outside "
            f"the image ({width} x {height} px): give its centre in image pixels",
            kind="invalid-request",
        )


def registrable_task(svc: Services, task_id: str) -> Task:
    """The FINISHED segment or register task with a mask; else a 404 or 409 problem."""
    with svc.sessions() as session:
        task = get_task(session, task_id)
        if task is not None:
            session.expunge(task)
    if task is None:
        raise unknown_task(task_id)
    if task.kind not in SEGMENTATION_KINDS:
        raise Problem(
            409,
            f"{task.id} is a model (a fine-tune), not a segmented slide; register the id of "
            "a task from GET /tasks",
            kind="not-registrable",
        )
    if task.status != TaskStatus.FINISHED:
        raise not_finished(task)
    if TaskBlob.MASK.value not in task.result_keys:
        raise Problem(
            409, f"task {task.id} has no mask to register; segment it again", kind="no-mask"
        )
    return task
