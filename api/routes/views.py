"""What the web viewer reads, also for scripts: the image and mask as a tile pyramid, a preview,
and the mark table as JSON. Built on the first request and kept on the API's disk
(see api/view_cache.py); every answer is small, whatever the slide's size."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, TypeVar

import anyio
from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import StreamingResponse

from api.deps import Services, ServicesDep, require_api_key
from api.names import content_disposition, download_name
from api.problems import Problem
from api.pyramid import Pyramid, PyramidShape, TileOutOfRange, encode_png
from api.routes.common import PROBLEM_RESPONSE, finished_task, not_failed_task
from api.view_cache import ViewUnavailable
from store.blobs import BlobNotFoundError, TaskBlob
from store.tasks import Task, TaskStatus

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


@router.get(
    "/tasks/{task_id}/pyramid",
    summary="The tile pyramid's levels, and the tile URLs",
    responses={404: PROBLEM_RESPONSE, 409: PROBLEM_RESPONSE},
)
def read_pyramid(svc: ServicesDep, task_id: str) -> dict:
    """Level 0 is the image at full size, each next level half as large, down to one tile.
    Tiles are `tile_size` px squares (the last column and row may be smaller) counted from the
    top-left. The mask and outline layers exist once the task is FINISHED; a FAILED task has
    no pyramid (409 with its error)."""
    task = not_failed_task(svc, task_id)
    described = PyramidShape(task.image_width, task.image_height).describe()
    layers = [TileLayer.IMAGE.value]
    if task.status == TaskStatus.FINISHED:
        layers += [TileLayer.MASK.value, TileLayer.OUTLINE.value]
    if TaskBlob.DIFF.value in task.result_keys:
        layers.append(TileLayer.DIFF.value)
    return {
        **described,
        "layers": layers,
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
    """The first request for a task builds its pyramid (seconds for a 5000² slide); mask and
    outline tiles need a FINISHED task (409 before), image tiles one that did not FAIL (409),
    diff tiles a re-run (404 `no-changes` otherwise)."""
    pyramid = await _pyramid(svc, task_id, layer)
    read = pyramid.outline_tile if layer == TileLayer.OUTLINE else pyramid.tile
    try:
        pixels = await anyio.to_thread.run_sync(read, level, col, row)
    except TileOutOfRange as error:
        raise Problem(404, str(error), kind="no-such-tile") from None
    png = await anyio.to_thread.run_sync(encode_png, pixels)
    return Response(png, media_type="image/png", headers=_CACHE)


async def _pyramid(svc: Services, task_id: str, layer: TileLayer) -> Pyramid:
    if layer == TileLayer.IMAGE:
        task = await anyio.to_thread.run_sync(not_failed_task, svc, task_id)
        return await view_or_409(svc.views.image, task)
    task = await anyio.to_thread.run_sync(finished_task, svc, task_id)
    if layer == TileLayer.DIFF:
        _require_changes(task)
        return await view_or_409(svc.views.diff, task)
    return await view_or_409(svc.views.mask, task)


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


async def view_or_409(build: Callable[[Task], Awaitable[T]], task: Task) -> T:
    """A view of the task, or a 409 problem in words when its stored image cannot be read
    (logged once per task, not a traceback per tile)."""
    try:
        return await build(task)
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
    pyramid = await view_or_409(svc.views.image, task)
    pixels = await anyio.to_thread.run_sync(pyramid.preview, max_side)
    png = await anyio.to_thread.run_sync(encode_png, pixels)
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
