"""Request bodies that cannot hurt the API: too big, too slow, broken off, too many at once.

`BodyGuardMiddleware` is a plain ASGI middleware around the app. Before the app runs it answers
a malformed Content-Length (400), a declared length over MAX_UPLOAD_BYTES (413) and an upload
beyond MAX_CONCURRENT_UPLOADS (503 with Retry-After). While the route reads the body, the
messages it receives are checked: past the byte limit 413, nothing for UPLOAD_IDLE_TIMEOUT_S
408, the client gone 499, a multipart body that ends without its closing boundary 422. These
are raised as `Problem`s inside the route, so they become problem+json answers through the
app's handlers, clean up like any refused upload and count in /metrics under their own status;
a client going away is one log line, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import Problem, problem_response
from api.uploads import is_upload

log = logging.getLogger(__name__)

# nginx's code for "the client closed the connection before the request was whole": a client
# event (4xx), never a server error.
CLIENT_CLOSED_REQUEST = 499
# When a client refused for too many uploads should try again.
UPLOADS_RETRY_AFTER_S = 5
# What may follow a multipart body's closing delimiter (a line break; RFC 2046 allows more).
MULTIPART_EPILOGUE = 64
# A refused request whose body is not read cannot share its connection with a next request.
_CLOSE = {"Connection": "close"}


class BodyGuardMiddleware:
    """See the module's docstring; `uploads_in_progress` is this process's count."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        idle_timeout_s: float,
        max_uploads: int,
        on_uploads_changed: Callable[[int], object] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.max_uploads = max_uploads
        self.on_uploads_changed = on_uploads_changed or (lambda count: None)
        self.uploads_in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            declared = declared_length(headers)
            if declared is not None and declared > self.max_bytes:
                raise too_large(self.max_bytes)
            upload = is_upload(scope["method"], headers.get("content-type"))
            if upload and self.uploads_in_progress >= self.max_uploads:
                raise self._too_many_uploads()
        except Problem as problem:
            await _answer(problem, scope, receive, send)
            return
        body = _GuardedBody(scope, receive, declared, self, multipart_end(headers))
        if upload:
            self._count_upload(+1)
        try:
            await self.app(scope, body.receive, send)
        finally:
            if upload:
                self._count_upload(-1)

    def _count_upload(self, change: int) -> None:
        self.uploads_in_progress += change
        self.on_uploads_changed(self.uploads_in_progress)

    def _too_many_uploads(self) -> Problem:
        log.warning(
            "refused an upload with 503: %d uploads in progress (MAX_CONCURRENT_UPLOADS)",
            self.uploads_in_progress,
        )
        return Problem(
            503,
            f"{self.uploads_in_progress} uploads are in progress, the most this server takes at "
            f"once (MAX_CONCURRENT_UPLOADS); try again in {UPLOADS_RETRY_AFTER_S} s",
            kind="too-many-uploads",
            headers={"Retry-After": str(UPLOADS_RETRY_AFTER_S), **_CLOSE},
        )


def declared_length(headers: Headers) -> int | None:
    """The body length the client declared, None without one; Problem 400 when it is not one
    decimal number (uvicorn refuses most such requests itself, see api.http_protocol)."""
    values = {value.strip() for value in headers.getlist("content-length")}
    if not values:
        return None
    if len(values) != 1 or not (value := values.pop()).isdigit() or not value.isascii():
        raise Problem(
            400,
            "the Content-Length header must be one non-negative decimal number of bytes",
            kind="invalid-content-length",
            headers=_CLOSE,
        )
    return int(value)


def multipart_end(headers: Headers) -> bytes | None:
    """The closing delimiter (`--boundary--`) of a multipart body; None for other bodies."""
    content_type = headers.get("content-type", "")
    media, _, parameters = content_type.partition(";")
    if media.strip().lower() != "multipart/form-data":
        return None
    for parameter in parameters.split(";"):
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return b"--" + value.strip().strip('"').encode("latin-1") + b"--"
    return None


def too_large(max_bytes: int) -> Problem:
    return Problem(
        413,
        f"the request body is over the upload limit of {max_bytes} bytes (MAX_UPLOAD_BYTES)",
        kind="upload-too-large",
        headers=_CLOSE,
    )


async def _answer(problem: Problem, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem_response(
        Request(scope),
        problem.status,
        problem.detail,
        kind=problem.kind,
        title=problem.title,
        headers=problem.headers,
    )
    await response(scope, receive, send)


class _GuardedBody:
    """The request's `receive`, checked until the body is complete; after that (a streaming
    response waiting for the client to leave) messages pass through untouched."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        declared: int | None,
        guard: BodyGuardMiddleware,
        multipart_end: bytes | None = None,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self.declared = declared
        self.guard = guard
        self.received = 0
        self.complete = False
        # A multipart body ends with its closing delimiter; the parser does not check it, so
        # a cut-off body would read as one without its file.
        self.multipart_end = multipart_end
        self.tail = b""

    async def receive(self) -> Message:
        if self.complete:
            return await self._receive()
        try:
            with anyio.fail_after(self.guard.idle_timeout_s):
                message = await self._receive()
        except TimeoutError:
            raise self._stalled() from None
        if message["type"] == "http.disconnect":
            raise self._client_closed()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.guard.max_bytes:
                raise too_large(self.guard.max_bytes)
            self.complete = not message.get("more_body", False)
            if self.multipart_end is not None:
                self._check_multipart_end(message.get("body", b""))
        return message

    def _check_multipart_end(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk)[-(len(self.multipart_end) + MULTIPART_EPILOGUE) :]
        if self.complete and self.multipart_end not in self.tail:
            log.warning(
                "%s %s: 422, the multipart body ends without its closing boundary after %s",
                self.scope["method"], self.scope["path"], self._progress(),
            )  # fmt: skip
            raise Problem(
                422,
                f"the multipart body is truncated: it ends after {self._progress()} without its"
                " closing boundary; send the whole file again",
                kind="truncated-multipart",
            )

    def _progress(self) -> str:
        of = f" of {self.declared}" if self.declared is not None else ""
        return f"{self.received}{of} bytes"

    def _stalled(self) -> Problem:
        seconds = f"{self.guard.idle_timeout_s:g}"
        log.warning(
            "%s %s: 408, no body data for %s s after %s (UPLOAD_IDLE_TIMEOUT_S)",
            self.scope["method"], self.scope["path"], seconds, self._progress(),
        )  # fmt: skip
        return Problem(
            408,
            f"no request body data arrived for {seconds} s (after {self._progress()}); "
            "the request was dropped, send it again",
            kind="request-timeout",
            headers=_CLOSE,
        )

    def _client_closed(self) -> Problem:
        log.warning(
            "%s %s: 499, the client closed the connection after %s of the body",
            self.scope["method"], self.scope["path"], self._progress(),
        )  # fmt: skip
        return Problem(
            CLIENT_CLOSED_REQUEST,
            f"the client closed the connection after {self._progress()} of the body",
            kind="client-closed-request",
            title="Client Closed Request",
            headers=_CLOSE,
        )
