"""A registered task's marks for other tools: GeoJSON that QuPath imports, and the ids as a
32-bit TIFF that napari opens as labels. A worker makes them from the stored ids on the first
request (the API decodes no image) and stores them with the task's results; that request
waits for it up to EXPORT_WAIT_S (api/view_cache.py)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from api.deps import ServicesDep, require_api_key
from api.names import content_disposition, download_name
from api.problems import Problem
from api.routes.common import PROBLEM_RESPONSE, finished_task
from api.routes.views import view_or_409
from store.blobs import BlobNotFoundError, TaskBlob
from store.tasks import Task, ViewPart

router = APIRouter(tags=["results"], dependencies=[Depends(require_api_key)])

GEOJSON_MEDIA = "application/geo+json"
# The first request for an export waits this long for the worker making it (seconds for
# 90 000 marks), then answers 409 `tiles-not-ready` with Retry-After.
EXPORT_WAIT_S = 30.0
_RESPONSES = {404: PROBLEM_RESPONSE, 409: PROBLEM_RESPONSE}


@router.get(
    "/tasks/{task_id}/marks.geojson",
    summary="The marks as GeoJSON polygons, as QuPath imports them",
    response_class=StreamingResponse,
    responses={200: {"content": {GEOJSON_MEDIA: {}}}, **_RESPONSES},
)
async def read_marks_geojson(svc: ServicesDep, task_id: str) -> StreamingResponse:
    """A FeatureCollection with one feature per registered mark: its outline (a Polygon, a
    MultiPolygon for a mark in pieces) along pixel edges in image pixels, origin at the image's
    top-left corner; properties `id`, `row`, `col`, `spectrum` (null without one) and, for
    QuPath, `objectType` "detection", `name`, `classification` and `measurements`. A worker
    makes it on the first request (seconds for 90 000 marks), which waits for it."""
    task = await anyio.to_thread.run_sync(finished_task, svc, task_id)
    _require_ids(task)
    key = await view_or_409(
        svc.views.export,
        task,
        TaskBlob.EXPORT_GEOJSON,
        ViewPart.GEOJSON,
        EXPORT_WAIT_S,
        not_ready="export",
    )
    return _stream(svc, task, key, GEOJSON_MEDIA, _named(task, "marks.geojson"))


@router.get(
    "/tasks/{task_id}/labels.tiff",
    summary="Registered ids as a 32-bit TIFF (napari opens it as labels)",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/tiff": {}}}, **_RESPONSES},
)
async def read_labels_tiff(svc: ServicesDep, task_id: str):
    """The id image as uint32, zlib-compressed, tiled TIFF, whatever the grid's size: napari
    opens a 32-bit integer image as a labels layer. For a grid beyond 65 535 nodes this is
    the stored id image itself."""
    task = await anyio.to_thread.run_sync(finished_task, svc, task_id)
    _require_ids(task)
    headers = _named(task, "labels.tiff")
    key = task.result_keys.get(TaskBlob.LABELS_TIFF.value) or await view_or_409(
        svc.views.export,
        task,
        TaskBlob.EXPORT_LABELS_TIFF,
        ViewPart.LABELS_TIFF,
        EXPORT_WAIT_S,
        not_ready="export",
    )
    return _stream(svc, task, key, "image/tiff", headers)


def _stream(
    svc: ServicesDep, task: Task, key: str, media_type: str, headers: dict[str, str]
) -> StreamingResponse:
    try:
        chunks = svc.blobs.iter_chunks(key)
    except BlobNotFoundError:
        raise Problem(404, f"task {task.id}'s export is missing", kind="result-missing") from None
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


def _require_ids(task: Task) -> None:
    if TaskBlob.AMS.value not in task.result_keys:
        raise Problem(
            404,
            f"task {task.id} was submitted without rows and cols (or an imzML), so its marks "
            "were not registered; register them with POST /tasks/{id}/register?rows=R&cols=C",
            kind="not-registered",
        )


def _named(task: Task, what: str) -> dict[str, str]:
    return {"Content-Disposition": content_disposition(download_name(task.name, task.id, what))}
