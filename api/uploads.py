"""Receiving an uploaded image safely: stream it to a temporary file, then check it fully.

`BodyLimitMiddleware` stops oversized bodies before or while they stream; `receive_upload`
sniffs the bytes (the client's Content-Type is not trusted), the pixel count is checked
from the header before decoding (decompression bombs), and the image is decoded once, so a
truncated file is refused now rather than failing in a worker later.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import Request
from starlette.datastructures import Headers, UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import Problem, problem_response
from model.errors import ImageInputError, ImageTooLargeError
from model.image.io import read_image, sniff_format

IMAGE_CONTENT_TYPES = {"image/png": "png", "image/tiff": "tiff", "image/jpeg": "jpeg"}
MULTIPART = "multipart/form-data"
CHUNK = 1024 * 1024
# Decoding a large slide takes memory; at most this many uploads decode at once per process.
_DECODE_SLOTS = anyio.CapacityLimiter(2)


@dataclass
class ReceivedImage:
    path: Path
    content_type: str
    size: int
    sha256: str
    width: int
    height: int


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def receive_upload(request: Request, scratch_dir: Path) -> ReceivedImage:
    """Store the request's image (raw body or multipart field `file`) as `scratch_dir/upload`,
    validate it; raises Problem (413/415/422) for anything that is not a usable image."""
    media_type = _media_type(request)
    path = scratch_dir / "upload"
    try:
        with path.open("wb") as handle:
            if media_type in IMAGE_CONTENT_TYPES:
                size, digest = await _copy_stream(request, handle)
            elif media_type == MULTIPART:
                size, digest = await _copy_multipart(request, handle)
            else:
                raise Problem(
                    415,
                    f"unsupported content type {media_type or '(none)'!r}: send the image as the "
                    "raw body with Content-Type image/png, image/tiff or image/jpeg, or as the "
                    "multipart/form-data field 'file'",
                    kind="unsupported-media-type",
                )
        if size == 0:
            raise Problem(422, "the uploaded image is empty (0 bytes)", kind="empty-upload")
        received = await _check_image(path, media_type, request.app.state.settings.max_pixels)
        received.size, received.sha256 = size, digest
        return received
    except BaseException:
        path.unlink(missing_ok=True)
        raise


async def _copy_stream(request: Request, handle) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        if chunk:
            digest.update(chunk)
            size += len(chunk)
            await anyio.to_thread.run_sync(handle.write, chunk)
    return size, digest.hexdigest()


async def _copy_multipart(request: Request, handle) -> tuple[int, str]:
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as error:  # malformed multipart framing
        raise Problem(422, f"malformed multipart body: {error}", kind="invalid-multipart") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Problem(
                422, "the multipart body has no file field named 'file'", kind="missing-file"
            )
        digest = hashlib.sha256()
        size = 0
        while chunk := await upload.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            await anyio.to_thread.run_sync(handle.write, chunk)
        return size, digest.hexdigest()
    finally:
        await form.close()


async def _check_image(path: Path, media_type: str, max_pixels: int) -> ReceivedImage:
    with path.open("rb") as file:
        head = file.read(16)
    kind = sniff_format(head)
    if kind is None:
        raise Problem(415, "the upload is not a PNG, JPEG or TIFF image", kind="not-an-image")
    declared = IMAGE_CONTENT_TYPES.get(media_type)
    if declared is not None and declared != kind:
        raise Problem(
            415,
            f"Content-Type says {media_type} but the body is a {kind.upper()} image",
            kind="content-type-mismatch",
        )
    try:
        async with _DECODE_SLOTS:
            image = await anyio.to_thread.run_sync(lambda: read_image(path, max_pixels=max_pixels))
    except ImageTooLargeError as error:
        raise Problem(413, _without_path(error, path), kind="too-many-pixels") from None
    except ImageInputError as error:
        raise Problem(422, _without_path(error, path), kind="unreadable-image") from None
    height, width = image.shape[:2]
    return ReceivedImage(
        path=path,
        content_type=f"image/{kind}",
        size=0,
        sha256="",
        width=int(width),
        height=int(height),
    )


def _without_path(error: Exception, path: Path) -> str:
    """The error's message without our temporary file's name (meaningless to the client)."""
    return str(error).replace(f"{path}: ", "").replace(str(path), "the upload")


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with a 413 problem, before reading them.

    A declared Content-Length over the limit is answered at once without touching the body;
    a body without one (chunked) is counted as it streams, and the route reading it gets a
    413 Problem as soon as the count passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> Problem:
        return Problem(
            413,
            f"the request body is over the upload limit of {self.max_bytes} bytes "
            "(MAX_UPLOAD_BYTES)",
            kind="upload-too-large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            problem = self._too_large()
            response = problem_response(
                Request(scope), problem.status, problem.detail, kind=problem.kind,
                headers={"Connection": "close"},
            )  # fmt: skip
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)
