"""Errors as RFC 9457 problem details (`application/problem+json`), for every route.

Handlers cover our own `Problem`, Starlette/FastAPI HTTP errors (404 for unknown paths, 405),
request validation (422), an unreachable database (503 with Retry-After, one log line per burst)
and, last, any unexpected error (500, logged with its traceback, never shown to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from store.database import DATABASE_UNAVAILABLE, ThrottledWarning, describe_database_error

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://amseg.dev/problems/"
DATABASE_RETRY_AFTER_S = 5


class Problem(Exception):
    """An error response: status, a short title, a detail for this occurrence, extensions."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(
    request: Request,
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = {
        "type": PROBLEM_TYPE_BASE + kind if kind else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extensions,
    }
    return JSONResponse(
        jsonable_encoder(body), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(
        request,
        exc.status,
        exc.detail,
        kind=exc.kind,
        title=exc.title,
        headers=exc.headers,
        **exc.extensions,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such resource: {request.url.path}"
    return problem_response(request, exc.status_code, detail, headers=exc.headers)


# What to type in a parameter that takes a whole number, for when something else was typed.
WHOLE_NUMBER_HINTS = {
    "rows": "a whole number of grid rows, e.g. 30",
    "cols": "a whole number of grid columns, e.g. 30",
    "mark_row": "a whole number, the mark's grid row counted from 0, e.g. 0",
    "mark_col": "a whole number, the mark's grid column counted from 0, e.g. 0",
    "tile_size": "a whole number of pixels, e.g. 512",
    "max_side": "a whole number of pixels, e.g. 1024",
    "limit": "a whole number of tasks, e.g. 50",
}
_NOT_A_WHOLE_NUMBER = {"int_parsing", "int_from_float", "int_type"}
_REQUEST_PARTS = {"query", "path", "header", "body", "cookie"}


def worded_errors(errors: Sequence[Any]) -> tuple[str, list[dict[str, str]]]:
    """Pydantic's errors as a person reads them: one detail line, and each error with where it
    is (`query.rows`) and what to type instead."""
    worded = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        named = [part for part in location if part not in _REQUEST_PARTS]
        field = named[-1] if named else None  # None: the query as a whole (e.g. rows with cols)
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        if error.get("type") in _NOT_A_WHOLE_NUMBER and field in WHOLE_NUMBER_HINTS:
            message = f"{field} must be {WHOLE_NUMBER_HINTS[field]}"
        elif field and not message.startswith(field):
            message = f"{field}: {message}"
        worded.append({"location": ".".join(location), "message": message})
    detail = "; ".join(e["message"] for e in worded) or "invalid request"
    return detail, worded


def invalid_parameters(error: ValidationError) -> Problem:
    """A 422 problem for parameters a route checks itself (after combining them with a task's)."""
    detail, errors = worded_errors(error.errors())
    return Problem(422, detail, kind="invalid-request", title="Invalid request", errors=errors)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail, errors = worded_errors(exc.errors())
    return problem_response(
        request, 422, detail, kind="invalid-request", title="Invalid request", errors=errors
    )


database_outage_log = ThrottledWarning(log)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    database_outage_log.warn(
        f"database unreachable, answering 503 ({request.method} {request.url.path}): "
        f"{describe_database_error(exc)}"
    )
    return problem_response(
        request,
        503,
        "the task database cannot be reached right now; try again in a few seconds (an upload "
        "with the same Idempotency-Key, so that it is not stored twice)",
        kind="database-unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request, 500, "an internal error occurred; it has been logged", kind="internal-error"
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for error_class in DATABASE_UNAVAILABLE:
        app.add_exception_handler(error_class, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
