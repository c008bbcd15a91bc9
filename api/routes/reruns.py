"""Re-running a task's image: a new task on the same input, with another model (for example one
fine-tuned on this slide), the same grid and settings; the upload is not sent again."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Query, Response

from api.deps import ServicesDep, require_api_key
from api.routes.common import (
    PROBLEM_RESPONSE,
    check_model_name,
    create_from_task,
    load_task,
    publish_or_leave_to_sweep,
)
from api.schemas import TaskCreated, task_links

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
    """A new task (`201`, `Location`) with the task's image, grid and settings; any status.
    A register task's re-run segments the image again, on the register task's grid."""
    source = await anyio.to_thread.run_sync(load_task, svc, task_id)
    parameters = source.task_parameters.segmentation()
    if model is not None:
        await anyio.to_thread.run_sync(check_model_name, svc, model)
        parameters = parameters.model_copy(update={"model": model})
    task = await anyio.to_thread.run_sync(create_from_task, svc, source, parameters)
    await publish_or_leave_to_sweep(svc, task.id)
    response.headers["Location"] = f"/tasks/{task.id}"
    return TaskCreated(id=str(task.id), status=task.status, links=task_links(task))
