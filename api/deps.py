"""Typed dependencies of the routes: the app's services, its settings, and the API-key check.

A route asks for `svc: ServicesDep` and reads like prose; nothing reaches into `request.app`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.metrics import Metrics
from api.problems import Problem
from store.blobs import BlobStore
from store.queue import send_process_task
from store.settings import Settings


@dataclass
class Services:
    """What the routes use; built once per app in the lifespan."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    celery: Celery

    def publish(self, task_id: str) -> None:
        """Send the task's message to the broker (blocking; call from a thread)."""
        send_process_task(self.celery, task_id, self.settings.task_queue)


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
