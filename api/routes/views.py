"""What the web viewer reads, also for scripts: the image and mask as a tile pyramid, a preview,
and the mark table as JSON. The worker makes them and stores them with the task's results; the
API sends stored bytes and decodes no image (see api/view_cache.py), so every answer is small
and cheap whatever the slide's size."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, TypeVar

import anyio
from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import StreamingResponse

from api.deps import ServicesDep, require_api_key
from api.names import content_disposition, download_name
from api.problems import Problem
from api.routes.common import PROBLEM_RESPONSE, finished_task, not_failed_task
from api.view_cache import RETRY_AFTER_S, ViewNotReady, ViewUnavailable
from model.image.pyramid import PNG_FOR_IMAGES, PyramidShape, TileOutOfRange, encode_png
from store.blobs import BlobNotFoundError, TaskBlob
from store.tasks import Task

T = TypeVar("T")

router = APIRouter(tags=["viewer"], dependencies=[Depends(require_api_key)])

MAX_PREVIEW_SIDE = 4096
MAX_LEVEL = 30  # 2^30: beyond any image the upload limits let in
# A task's pixels never change once there (the input at upload, the mask when FINISHED).
_CACHE = {"Cache-Control": "private, max-age=86400"}
_PNG = {200: {"content": {"image/png": {}}}}


class TileLayer(StrEnum):
    """What a tile shows."""

    IMAGE = "image"  # the input as the model sees it: gray, percentile-clipped, 8-bit
    MASK = "mask"  # the mask: 255 mark, 0 background; smaller levels: the share covered
    OUTLINE = "outline"  # 255 on the marks' edges at the level's resolution
    # A re-run's changes against its source (model.compare: 50 pixel lost, 100 gained, 150
    # removed mark, 200 added mark); smaller levels: the block maxima.
    DIFF = "diff"


# The tile pack of each layer (the outlines have their own, made with the mask's).
LAYER_PACKS = {
    TileLayer.IMAGE: TaskBlob.VIEW_IMAGE,
    TileLayer.MASK: TaskBlob.VIEW_MASK,
    TileLayer.OUTLINE: TaskBlob.VIEW_OUTLINE,
    TileLayer.DIFF: TaskBlob.VIEW_DIFF,
}


@router.get(
    "/tasks/{task_id}/pyramid",
    summary="The tile pyramid's levels, and the tile URLs",
    responses={404: PROBLEM_RESPONSE, 409: PROBLEM_RESPONSE},
)
async def read_pyramid(svc: ServicesDep, task_id: str) -> dict:
    """Level 0 is the image at full size, each next level half as large, down to one tile.
    Tiles are `tile_size` px squares (the last column and row may be smaller) counted from the
    top-left. `layers` are those stored now: the image once the task's worker made it (when
    it starts the task), mask and outline once the task is FINISHED, diff for a re-run.
    `state`: `ready`; `pending` while the task is QUEUED or RUNNING; `building` while a worker
    makes the tiles of a task finished before workers made them (asked for by this request);
    `failed` (with `error`) when it could not. A FAILED task has no pyramid (409 with its
    error)."""
    task = await anyio.to_thread.run_sync(not_failed_task, svc, task_id)
    described = PyramidShape(task.image_width, task.image_height).describe()
    state, stored, error = await svc.views.state(task)
    layers = [layer.value for layer, blob in LAYER_PACKS.items() if blob in stored]
    return {
        **described,
        "layers": layers,
        "state": state,
        **({"error": error} if error else {}),
        "links": {"tiles": f"/tasks/{task.id}/tiles/{{layer}}/{{level}}/{{col}}_{{row}}.png"},
    }


@router.get(
    "/tasks/{task_id}/tiles/{layer}/{level}/{col}_{row}.png",
    summary="One tile of the image, mask, outlines or changes (8-bit gray PNG)",
    response_class=Response,
    responses={**_PNG, 404: PROBLEM_RESPONSE, 409: PROBLEM_RESPONSE},
)
async def read_tile(
    svc: ServicesDep,
    task_id: str,
    layer: TileLayer,
    level: Annotated[int, Path(ge=0, le=MAX_LEVEL)],
    col: Annotated[int, Path(ge=0)],
    row: Annotated[int, Path(ge=0)],
) -> Response:
    """The tile as the worker stored it. Mask and outline tiles need a FINISHED task (409
    before), image tiles one that did not FAIL (409), diff tiles a re-run (404 `no-changes`
    otherwise). A tile not made yet is a 409 `tiles-not-ready` with `Retry-After`: the
    task's worker makes the image's when it starts it; a task finished before workers made
    tiles gets them from a worker now (this request asked for them)."""
    if layer == TileLayer.IMAGE:
        task = await anyio.to_thread.run_sync(not_failed_task, svc, task_id)
    else:
        task = await anyio.to_thread.run_sync(finished_task, svc, task_id)
    if layer == TileLayer.DIFF:
        _require_changes(task)
    try:
        png = await view_or_409(svc.views.tile, task, LAYER_PACKS[layer], level, col, row)
    except TileOutOfRange as error:
        raise Problem(404, str(error), kind="no-such-tile") from None
    return Response(png, media_type="image/png", headers=_CACHE)


def _require_changes(task: Task) -> None:
    if TaskBlob.DIFF.value not in task.result_keys:
        raise Problem(
            404,
            f"task {task.id} was not made from another task's image (POST /tasks/{{id}}/rerun), "
            "so there are no changes to show",
            kind="no-changes",
        )


@router.get(
    "/tasks/{task_id}/diff.png",
    summary="A re-run's changes against the task it was made from (8-bit gray PNG)",
    response_class=StreamingResponse,
    responses={**_PNG, 404: PROBLEM_RESPONSE, 409: PROBLEM_RESPONSE},
)
def read_diff(svc: ServicesDep, task_id: str) -> StreamingResponse:
    """The image's size; 0 unchanged, 50 a changed mark's lost pixel, 100 its gained pixel,
    150 a removed mark, 200 an added mark (the counts are in the task's summary.changes)."""
    task = finished_task(svc, task_id)
    _require_changes(task)
    try:
        chunks = svc.blobs.iter_chunks(task.result_keys[TaskBlob.DIFF.value])
    except BlobNotFoundError:
        raise Problem(404, f"task {task.id}'s changes are missing", kind="result-missing") from None
    filename = download_name(task.name, task.id, TaskBlob.DIFF.value)
    headers = {"Content-Disposition": content_disposition(filename)}
    return StreamingResponse(chunks, media_type="image/png", headers=headers)


async def view_or_409(
    read: Callable[..., Awaitable[T]], task: Task, *args: object, not_ready: str = "tiles"
) -> T:
    """A view of the task, or a 409 problem in words: not made yet (`tiles-not-ready`, or
    `export-not-ready` with `not_ready="export"`; with `Retry-After`), or a worker could not
    make it from the stored image (`image-unreadable`; the worker logged why, once)."""
    try:
        return await read(task, *args)
    except ViewNotReady as error:
        raise Problem(
            409,
            f"task {task.id} ({task.status.value}): {error}",
            kind=f"{not_ready}-not-ready",
            task_status=task.status.value,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    except ViewUnavailable as error:
        raise Problem(
            409,
            f"task {task.id} ({task.status.value}) cannot be shown: {error}",
            kind="image-unreadable",
            task_status=task.status.value,
        ) from None


@router.get(
    "/tasks/{task_id}/preview.png",
    summary="The whole image, downsampled (8-bit gray PNG)",
    response_class=Response,
    responses={**_PNG, 404: PROBLEM_RESPONSE, 409: PROBLEM_RESPONSE},
)
async def read_preview(
    svc: ServicesDep,
    task_id: str,
    max_side: Annotated[
        int, Query(ge=16, le=MAX_PREVIEW_SIDE, description="Longest side of the picture, px")
    ] = 1024,
) -> Response:
    """The image as the model sees it, its longer side `max_side` px (never enlarged); for
    thumbnails and quick looks. Any task status but FAILED (409)."""
    task = await anyio.to_thread.run_sync(not_failed_task, svc, task_id)
    pixels = await view_or_409(svc.views.preview, task, max_side)
    png = await anyio.to_thread.run_sync(encode_png, pixels, PNG_FOR_IMAGES)
    return Response(png, media_type="image/png", headers=_download(task, "preview.png"))


@router.get(
    "/tasks/{task_id}/marks",
    summary="The mark table as JSON, with missing nodes and unregistered objects",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}}},
        404: PROBLEM_RESPONSE,
        409: PROBLEM_RESPONSE,
    },
)
async def read_marks(svc: ServicesDep, task_id: str) -> Response:
    """`marks`: ams.csv's rows (id, row, col, centroid x/y, area, bbox [x0, y0, x1, y1) in
    image pixels); `missing`: ids with no mark and where their node is (an affine fit of the
    marks); `extra`: mask objects that got no id (largest first, at most 5000 of
    `extra_total`). Tasks submitted with rows and cols."""
    task = await anyio.to_thread.run_sync(finished_task, svc, task_id)
    _require_registration(task)
    body = await view_or_409(svc.views.marks, task)
    return Response(body, media_type="application/json", headers=_download(task, "marks.json"))


def _download(task: Task, what: str) -> dict[str, str]:
    """Headers of a whole-task answer: cached, and named after the slide when saved."""
    filename = download_name(task.name, task.id, what)
    return {**_CACHE, "Content-Disposition": content_disposition(filename)}


def _require_registration(task: Task) -> None:
    if TaskBlob.AMS.value not in task.result_keys:
        raise Problem(
            404,
            f"task {task.id} was submitted without rows and cols, so its marks were not "
            "registered; submit the image again with ?rows=R&cols=C",
            kind="not-registered",
        )
