"""Re-running a task's image: a new task on the same input, with another model (for example one
fine-tuned on this slide), the same grid and settings; the upload is not sent again."""

from __future__ import annotations

from typing import Annotated
from uuid import uuid4

import anyio
from fastapi import APIRouter, Depends, Query, Response

from api.deps import Services, ServicesDep, require_api_key
from api.routes.common import (
    PROBLEM_RESPONSE,
    check_model_name,
    load_task,
    publish_or_leave_to_sweep,
)
from api.schemas import TaskCreated, task_links
from store.blobs import TaskBlob, task_blob_key, task_prefix
from store.tasks import Task, TaskParameters, create_task

router = APIRouter(tags=["tasks"], dependencies=[Depends(require_api_key)])


@router.post(
    "/tasks/{task_id}/rerun",
    status_code=201,
    response_model=TaskCreated,
    summary="Segment a task's image again, e.g. with a fine-tuned model",
    responses={404: PROBLEM_RESPONSE, 422: PROBLEM_RESPONSE},
)
async def rerun_task(
    svc: ServicesDep,
    response: Response,
    task_id: str,
    model: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Model of the new task: 'default', a MODELS_DIR name or the id of a "
            "FINISHED fine-tune (default: the task's own)",
        ),
    ] = None,
) -> TaskCreated:
    """A new task (`201`, `Location`) with the task's image, grid and settings; any status."""
    source = await anyio.to_thread.run_sync(load_task, svc, task_id)
    parameters = source.task_parameters
    if model is not None:
        await anyio.to_thread.run_sync(check_model_name, svc, model)
        parameters = parameters.model_copy(update={"model": model})
    task = await anyio.to_thread.run_sync(_copy_and_create, svc, source, parameters)
    await publish_or_leave_to_sweep(svc, task.id)
    response.headers["Location"] = f"/tasks/{task.id}"
    return TaskCreated(id=str(task.id), status=task.status, links=task_links(task))


def _copy_and_create(svc: Services, source: Task, parameters: TaskParameters) -> Task:
    """Copy the input first, then commit the row: a queued task always has its input."""
    task_id = uuid4()
    svc.blobs.copy(source.input_key, task_blob_key(task_id, TaskBlob.INPUT))
    try:
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
