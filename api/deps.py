"""Typed dependencies of the routes: the app's services, its settings, and the API-key check.

A route asks for `svc: ServicesDep` and reads like prose; nothing reaches into `request.app`.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, FastAPI, Request
from fastapi.security import APIKeyHeader
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.metrics import Metrics
from api.problems import Problem
from api.view_cache import ViewStore
from store.blobs import BlobStore
from store.queue import send_process_task, waiting_task_ids
from store.settings import Settings


@dataclass
class Services:
    """What the routes use; built once per app in the lifespan."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    celery: Celery
    views: ViewStore  # the web viewer's tiles and tables, and the exports, as workers stored them

    def publish(self, task_id: str) -> None:
        """Send the task's message to the broker (blocking; call from a thread)."""
        send_process_task(self.celery, task_id, self.settings.task_queue)

    def publish_first(self, task_id: str) -> None:
        """Send the message of a task handed back after a fault, at the head of the queue."""
        send_process_task(self.celery, task_id, self.settings.task_queue, first=True)

    def waiting_task_ids(self) -> Collection[str]:
        """The tasks with a message waiting in the broker (blocking; call from a thread)."""
        return waiting_task_ids(self.settings)


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


ServicesDep = Annotated[Services, Depends(get_services)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(request: Request, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """With API_KEYS set, every route but /health and the docs needs one of them."""
    keys = request.app.state.settings.api_keys
    if not keys:
        return
    if key is None or not any(secrets.compare_digest(key, known) for known in keys):
        raise Problem(
            401,
            "a valid X-API-Key header is required",
            kind="unauthorized",
            headers={"WWW-Authenticate": "APIKey"},
        )


def reject_unknown_query_parameters(request: Request) -> None:
    """A query parameter the route does not document is refused, not ignored: `?row=8` for
    `?rows=8` would otherwise run without registration, and the user would lose the grid.
    So is one given twice (`?rows=5&rows=6`)."""
    route = request.scope.get("route")
    allowed = _documented_query_names(request.app, getattr(route, "path", None), request.method)
    if allowed is None:
        return
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no query parameters"
        raise Problem(
            422,
            f"unknown query parameter {', '.join(unknown)}; this route takes {takes}",
            kind="unknown-query-parameter",
        )
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # which one would count is the framework's guess, not the caller's
        raise Problem(
            422,
            f"the query parameter {', '.join(repeated)} is given more than once; give it once",
            kind="repeated-query-parameter",
        )


def _documented_query_names(app: FastAPI, path: str | None, method: str) -> set[str] | None:
    """The query parameters the OpenAPI document lists for a route (None: not documented)."""
    names = getattr(app.state, "query_names", None)
    if names is None:
        names = {}
        for route_path, operations in app.openapi().get("paths", {}).items():
            for verb, operation in operations.items():
                parameters = operation.get("parameters", [])
                names[route_path, verb.upper()] = {
                    p["name"] for p in parameters if p["in"] == "query"
                }
        app.state.query_names = names
    method = "GET" if method == "HEAD" else method
    return names.get((path, method))
