"""Models: fine-tune the model on a task's image (from a user's labels or from the acquisition
grid), follow the job, read its card, delete it. A FINISHED model is used with
`POST /tasks?model=<id>`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from api.deps import ServicesDep, require_api_key
from api.problems import Problem
from api.routes.common import (
    POLL_AFTER_S,
    PROBLEM_RESPONSE,
    cancel_and_delete,
    check_model_name,
    create_from_task,
    load_task,
    publish_or_leave_to_sweep,
)
from api.schemas import ModelPage, ModelPublic, ModelQuery, model_public
from api.uploads import ReceivedImage, receive_upload
from store.blobs import TaskBlob
from store.tasks import (
    MAX_PAGE_SIZE,
    FinetuneParameters,
    Task,
    TaskKind,
    TaskStatus,
    list_tasks,
)

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])

_MASK_BODY = {
    "requestBody": {
        "required": False,
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "description": "Labels at the image's size: 0 background, 255 mark, 128 not labelled. "
        "Without a body the labels come from the grid and the shipped model's confident marks.",
    }
}


@router.post(
    "/models",
    status_code=201,
    response_model=ModelPublic,
    summary="Fine-tune a model on a task's image",
    openapi_extra=_MASK_BODY,
    responses={404: PROBLEM_RESPONSE, 413: PROBLEM_RESPONSE, 422: PROBLEM_RESPONSE},
)
async def create_model_route(
    request: Request, svc: ServicesDep, query: Annotated[ModelQuery, Query()]
) -> ModelPublic:
    """Queue a fine-tune from a mask in the body (labelled mode) or from the grid (no body)."""
    source = await anyio.to_thread.run_sync(load_task, svc, query.task)
    parameters = _finetune_parameters(query, source, labelled=_has_body(request))
    if parameters.base is not None:
        await anyio.to_thread.run_sync(check_model_name, svc, parameters.base)
    received = None
    with tempfile.TemporaryDirectory(prefix="amseg-labels-") as scratch:
        if parameters.labelled:
            received = await receive_upload(request, Path(scratch))
            _check_mask_size(received, source)
        labels = received.path if received is not None else None
        task = await anyio.to_thread.run_sync(create_from_task, svc, source, parameters, labels)
    await publish_or_leave_to_sweep(svc, task.id)
    return model_public(task)


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return (length is not None and length != "0") or "transfer-encoding" in request.headers


def _finetune_parameters(query: ModelQuery, source: Task, *, labelled: bool) -> FinetuneParameters:
    grid = source.task_parameters
    rows, cols = (query.rows, query.cols) if query.rows or query.cols else (grid.rows, grid.cols)
    try:
        return FinetuneParameters(
            source_task=str(source.id),
            labelled=labelled,
            rows=rows,
            cols=cols,
            minutes=query.minutes,
            base=query.base,
        )
    except ValidationError as error:
        raise Problem(422, error.errors()[0]["msg"], kind="invalid-parameters") from None


def _check_mask_size(received: ReceivedImage, source: Task) -> None:
    if (received.width, received.height) != (source.image_width, source.image_height):
        raise Problem(
            422,
            f"the labels are {received.width}x{received.height} px but the task's image is "
            f"{source.image_width}x{source.image_height}; send a mask of the image's size",
            kind="mask-size-mismatch",
        )


@router.get("/models", response_model=ModelPage, summary="List fine-tuned models, newest first")
def list_models_route(
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ModelPage:
    """One page of models; pass `next_cursor` as `cursor` for the next one."""
    with svc.sessions() as session:
        try:
            page = list_tasks(session, limit=limit, cursor=cursor, kind=TaskKind.FINETUNE)
        except ValueError as error:
            raise Problem(422, str(error), kind="invalid-cursor") from None
        data = [model_public(task) for task in page.tasks]
    next_link = None
    if page.next_cursor is not None:
        next_link = f"/models?limit={limit}&cursor={page.next_cursor}"
    return ModelPage(data=data, next_cursor=page.next_cursor, links={"next": next_link})


@router.get(
    "/models/{model_id}",
    response_model=ModelPublic,
    summary="Status, progress and held-out scores of a fine-tune",
    responses={404: PROBLEM_RESPONSE},
)
def read_model(svc: ServicesDep, response: Response, model_id: str) -> ModelPublic:
    """The job's state; while it is not over, `Retry-After` says when to poll again."""
    task = load_task(svc, model_id, TaskKind.FINETUNE)
    if not task.is_terminal:
        response.headers["Retry-After"] = str(POLL_AFTER_S)
    return model_public(task)


@router.get(
    "/models/{model_id}/model_card.json",
    summary="The model card: what it was trained on, how long, its scores",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}}}, 404: PROBLEM_RESPONSE},
)
def read_model_card(svc: ServicesDep, model_id: str):
    """The card of a FINISHED model (the weights stay inside the service)."""
    task = load_task(svc, model_id, TaskKind.FINETUNE)
    key = task.result_keys.get(TaskBlob.MODEL_CARD.value)
    if task.status != TaskStatus.FINISHED or key is None:
        raise Problem(
            404, f"model {task.id} is {task.status.value}, it has no card yet", kind="no-card"
        )
    return StreamingResponse(svc.blobs.iter_chunks(key), media_type="application/json")


@router.delete(
    "/models/{model_id}",
    status_code=204,
    summary="Stop a fine-tune, or delete a model, with its files",
    responses={404: PROBLEM_RESPONSE},
)
def delete_model_route(svc: ServicesDep, model_id: str) -> Response:
    """Tasks that asked for this model and have not started yet will fail: it is gone."""
    cancel_and_delete(svc, model_id, TaskKind.FINETUNE)
    return Response(status_code=204)
