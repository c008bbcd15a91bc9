"""A task's draft corrections: the labels PNG the page's correction tools build (0 background,
255 mark, 128 not labelled, the image's size), kept on the server while a person draws, so that
nothing is lost on Back, a reload or a closed tab. The API stores the bytes as they come; it
checks only the PNG's header (8-bit gray, the task's size) and never decodes a pixel. Whatever
the page keeps beside the pixels (its boxes, whether the draft was sent to a fine-tune) travels
in the PNG's own text chunks.

Two tabs on one task must not overwrite each other's work unseen: GET and PUT give the draft's
ETag (a hash of its bytes), and PUT or DELETE with `If-Match` (or `If-None-Match: *` where the
page saw no draft) answers 412 `draft-changed` when the draft is no longer the one the page
last saw. This is a check, not a lock: two writes in the same instant can still both pass."""

from __future__ import annotations

import hashlib
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from tempfile import SpooledTemporaryFile
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from api.deps import Services, ServicesDep, require_api_key
from api.problems import Problem
from api.routes.common import PROBLEM_RESPONSE, load_task
from api.uploads import ReceivedImage, receive_upload
from store.blobs import BlobNotFoundError, task_prefix
from store.tasks import Task, get_task

router = APIRouter(tags=["corrections"], dependencies=[Depends(require_api_key)])

# Under the task's prefix, so deleting the task deletes its draft; not a TaskBlob: no run
# reads or writes it, and a re-run of the task does not copy it.
DRAFT_NAME = "corrections/draft.png"
_GRAY, _EIGHT_BITS = 0, 8
_PNG_BODY = {
    "requestBody": {
        "required": True,
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "description": "8-bit gray PNG at the image's size: 0 background, 255 mark, 128 not "
        "labelled (what POST /models takes)",
    }
}


ETAG_CHARS = 32  # of the draft's sha256, hex
SPOOL_BYTES = 8 * 1024**2  # a GET's copy of the draft stays in memory up to this size
CHUNK_BYTES = 1024**2
IF_MATCH = "Store only if the draft is still the one with this ETag (else 412)"
IF_NONE_MATCH = 'With "*": store only if the task has no draft yet (else 412)'


def draft_key(task: Task) -> str:
    return task_prefix(task.id) + DRAFT_NAME


@router.put(
    "/tasks/{task_id}/corrections",
    status_code=204,
    summary="Keep the draft corrections of a task (replaces any earlier draft)",
    openapi_extra=_PNG_BODY,
    responses={
        404: PROBLEM_RESPONSE,
        412: PROBLEM_RESPONSE,
        413: PROBLEM_RESPONSE,
        415: PROBLEM_RESPONSE,
        422: PROBLEM_RESPONSE,
    },
)
async def put_corrections(
    request: Request,
    svc: ServicesDep,
    task_id: str,
    if_match: Annotated[str | None, Header(description=IF_MATCH)] = None,
    if_none_match: Annotated[str | None, Header(description=IF_NONE_MATCH)] = None,
) -> Response:
    """Any task status; the body is checked from its header only and stored as it is. The
    new draft's ETag comes back."""
    task = await anyio.to_thread.run_sync(load_task, svc, task_id)
    with tempfile.TemporaryDirectory(prefix="amseg-draft-") as scratch:
        received = await receive_upload(request, Path(scratch))
        await anyio.to_thread.run_sync(_check_draft, received, task)
        await anyio.to_thread.run_sync(_check_unchanged, svc, task, if_match, if_none_match)
        await anyio.to_thread.run_sync(_store, svc, task, received.path)
    return Response(status_code=204, headers={"ETag": _quoted(received.sha256[:ETAG_CHARS])})


@router.get(
    "/tasks/{task_id}/corrections",
    summary="The draft corrections of a task (labels PNG)",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}}}, 404: PROBLEM_RESPONSE},
)
def get_corrections(svc: ServicesDep, task_id: str) -> StreamingResponse:
    """404 `no-corrections` when the task has none. Never cached: a draft changes. Its ETag
    is what `If-Match` takes on the next PUT or DELETE."""
    task = load_task(svc, task_id)
    draft, etag = _read_draft(svc, task)
    headers = {"Cache-Control": "no-store", "ETag": _quoted(etag)}
    # Closed by _drain, or here when the client left before the body began.
    return StreamingResponse(
        _drain(draft),
        media_type="image/png",
        headers=headers,
        background=BackgroundTask(draft.close),
    )


@router.delete(
    "/tasks/{task_id}/corrections",
    status_code=204,
    summary="Drop the draft corrections of a task",
    responses={404: PROBLEM_RESPONSE, 412: PROBLEM_RESPONSE},
)
def delete_corrections(
    svc: ServicesDep,
    task_id: str,
    if_match: Annotated[str | None, Header(description=IF_MATCH)] = None,
    if_none_match: Annotated[str | None, Header(description=IF_NONE_MATCH)] = None,
) -> Response:
    """404 `no-corrections` when there was none. With `If-None-Match: *` (the page saw no
    draft) a draft saved meanwhile elsewhere is kept: 412."""
    task = load_task(svc, task_id)
    _check_unchanged(svc, task, if_match, if_none_match)
    if not svc.blobs.delete_prefix(draft_key(task)):
        raise _no_draft(task)
    return Response(status_code=204)


def _draft_hash(svc: Services, task: Task) -> str | None:
    """The stored draft's hash (read piece by piece), or None when there is none."""
    digest = hashlib.sha256()
    try:
        for chunk in svc.blobs.iter_chunks(draft_key(task)):
            digest.update(chunk)
    except BlobNotFoundError:
        return None
    return digest.hexdigest()[:ETAG_CHARS]


def _read_draft(svc: Services, task: Task) -> tuple[SpooledTemporaryFile, str]:
    """The stored draft, read once: a copy of its bytes (in memory up to SPOOL_BYTES, then on
    disk) and their hash, so that the ETag is always the body's even when a PUT lands while
    the draft is read. A 404 problem when there is none."""
    copy = SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (_drain closes it)
    digest = hashlib.sha256()
    try:
        for chunk in svc.blobs.iter_chunks(draft_key(task)):
            digest.update(chunk)
            copy.write(chunk)
    except BaseException as error:
        copy.close()
        if isinstance(error, BlobNotFoundError):
            raise _no_draft(task) from None
        raise
    copy.seek(0)
    return copy, digest.hexdigest()[:ETAG_CHARS]


def _drain(copy: SpooledTemporaryFile) -> Iterator[bytes]:
    with copy:
        while chunk := copy.read(CHUNK_BYTES):
            yield chunk


def _quoted(etag: str) -> str:
    return f'"{etag}"'


def _check_unchanged(
    svc: Services, task: Task, if_match: str | None, if_none_match: str | None
) -> None:
    """A 412 problem when the request's precondition says the page saw another draft than
    the one stored (see the module's docstring)."""
    if if_match is None and if_none_match is None:
        return
    stored = _draft_hash(svc, task)
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise Problem(400, 'If-None-Match takes only "*" here', kind="bad-precondition")
        changed = stored is not None
    else:
        seen = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
        changed = not (stored is not None and ("*" in seen or _quoted(stored) in seen))
    if changed:
        raise Problem(
            412,
            "the draft corrections of this task were changed elsewhere (another tab or window) "
            "since this page loaded them",
            kind="draft-changed",
        )


def _no_draft(task: Task) -> Problem:
    return Problem(404, f"task {task.id} has no draft corrections", kind="no-corrections")


def _check_draft(received: ReceivedImage, task: Task) -> None:
    """A 415/422 problem unless the body is an 8-bit gray PNG of the task's size (its IHDR)."""
    if received.content_type != "image/png":
        raise Problem(415, "draft corrections are a PNG image", kind="not-a-png")
    with received.path.open("rb") as handle:
        bit_depth, colour_type = struct.unpack(">BB", handle.read(26)[24:26])
    if (bit_depth, colour_type) != (_EIGHT_BITS, _GRAY):
        raise Problem(
            422,
            f"the draft is a PNG of bit depth {bit_depth} and colour type {colour_type}; send "
            "an 8-bit gray PNG (0 background, 255 mark, 128 not labelled)",
            kind="invalid-corrections",
        )
    if (received.width, received.height) != (task.image_width, task.image_height):
        raise Problem(
            422,
            f"the draft is {received.width}x{received.height} px but the task's image is "
            f"{task.image_width}x{task.image_height}; send labels of the image's size",
            kind="mask-size-mismatch",
        )


def _store(svc: Services, task: Task, path: Path) -> None:
    svc.blobs.put_file(draft_key(task), path, content_type="image/png")
    # A task deleted while its draft arrived must not keep a blob nobody can reach.
    with svc.sessions() as session:
        if get_task(session, task.id) is None:
            svc.blobs.delete_prefix(draft_key(task))
            raise Problem(404, f"task {task.id} was deleted meanwhile", kind="unknown-task")
