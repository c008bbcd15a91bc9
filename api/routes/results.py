"""Results of a finished task: mask, registered ids, ams.csv, overlay, QC."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import RedirectResponse, StreamingResponse

from api.deps import Services, ServicesDep, require_api_key
from api.names import content_disposition, download_name
from api.problems import Problem
from api.routes.common import PROBLEM_RESPONSE, finished_task
from store.blobs import BlobNotFoundError, TaskBlob
from store.tasks import Task

log = logging.getLogger(__name__)

router = APIRouter(tags=["results"], dependencies=[Depends(require_api_key)])


def _stream_result(svc: Services, task: Task, blob: TaskBlob) -> StreamingResponse:
    key = task.result_keys.get(blob.value)
    if key is None:
        if blob in (TaskBlob.LABELS, TaskBlob.LABELS_TIFF, TaskBlob.AMS, TaskBlob.QC):
            raise Problem(
                404,
                f"task {task.id} was submitted without rows and cols, so its marks were not "
                "registered; submit the image again with ?rows=R&cols=C",
                kind="not-registered",
            )
        raise Problem(404, f"task {task.id} has no {blob.value}", kind="no-such-result")
    try:
        chunks = svc.blobs.iter_chunks(key)  # raises BlobNotFoundError now, not mid-stream
    except BlobNotFoundError:
        raise Problem(
            404, f"task {task.id}'s {blob.value} is missing from storage", kind="result-missing"
        ) from None
    filename = download_name(task.name, task.id, blob.value)  # slide7_mask.png, slide7_ams.csv
    return StreamingResponse(
        chunks,
        media_type=blob.content_type,
        headers={"Content-Disposition": content_disposition(filename)},
    )


_RESULT_RESPONSES = {404: PROBLEM_RESPONSE, 409: PROBLEM_RESPONSE}


@router.get(
    "/masks/{task_id}",
    summary="The mask PNG (0/255, the input's size)",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}}}, 303: {}, **_RESULT_RESPONSES},
)
def read_mask(
    svc: ServicesDep,
    task_id: str,
    redirect: Annotated[bool, Query(description="Redirect to a presigned S3 URL")] = False,
):
    """The mask of a FINISHED task; 409 while it is not finished."""
    task = finished_task(svc, task_id)
    if redirect and (key := task.result_keys.get(TaskBlob.MASK.value)):
        url = svc.blobs.presigned_url(key, expires_in_s=3600)
        if url is not None:  # the local store has no URLs: stream it instead
            return RedirectResponse(url, status_code=303)
    return _stream_result(svc, task, TaskBlob.MASK)


@router.get(
    "/tasks/{task_id}/labels",
    summary="Registered ids (uint16 PNG; uint32 TIFF beyond 65 535 grid nodes; 0 = background)",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}, "image/tiff": {}}}, **_RESULT_RESPONSES},
)
def read_labels(svc: ServicesDep, task_id: str):
    """Each mark painted with its grid id row * cols + col + 1 (tasks given rows and cols, or
    an imzML): a 16-bit PNG while the grid's ids fit, else a 32-bit TIFF (the media type and
    the download name say which)."""
    task = finished_task(svc, task_id)
    return _stream_result(svc, task, labels_blob(task))


def labels_blob(task: Task) -> TaskBlob:
    """Which id image the task has: labels.png, or labels.tiff for a grid beyond 65 535 nodes."""
    tiff = TaskBlob.LABELS_TIFF.value in task.result_keys
    return TaskBlob.LABELS_TIFF if tiff else TaskBlob.LABELS


@router.get(
    "/tasks/{task_id}/ams.csv",
    summary="One row per registered mark",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}, **_RESULT_RESPONSES},
)
def read_ams_csv(svc: ServicesDep, task_id: str):
    """id, row, col, centre, area and bounding box of every mark."""
    return _stream_result(svc, finished_task(svc, task_id), TaskBlob.AMS)


@router.get(
    "/tasks/{task_id}/overlay.png",
    summary="The image with the marks (and ids) drawn on it",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}}}, **_RESULT_RESPONSES},
)
def read_overlay(svc: ServicesDep, task_id: str):
    """For a quick look at the result."""
    return _stream_result(svc, finished_task(svc, task_id), TaskBlob.OVERLAY)


@router.get(
    "/tasks/{task_id}/qc",
    summary="Registration quality: fit, coverage and warnings",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}}}, **_RESULT_RESPONSES},
)
def read_qc(svc: ServicesDep, task_id: str):
    """The QC record of the registration (JSON)."""
    return _stream_result(svc, finished_task(svc, task_id), TaskBlob.QC)
