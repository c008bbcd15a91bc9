"""Operations: health of the components (open) and Prometheus metrics (behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from sqlalchemy import func, select, text

from api.deps import MetricsDep, Services, ServicesDep, require_api_key
from api.schemas import ComponentHealth, Health
from store.tasks import Task

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    response_model=Health,
    summary="Database, broker and storage reachability",
    responses={503: {"model": Health}},
)
def health(svc: ServicesDep, response: Response) -> Health:
    """200 when every component answers, else 503 with what is wrong."""
    checks = {
        "database": lambda: _check_database(svc),
        "broker": lambda: _check_broker(svc),
        "storage": lambda: svc.blobs.exists("health/probe"),
    }
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = ComponentHealth(ok=True, detail="ok")
        except Exception as error:
            results[name] = ComponentHealth(ok=False, detail=f"{type(error).__name__}: {error}")
    healthy = all(result.ok for result in results.values())
    if not healthy:
        response.status_code = 503
    return Health(status="ok" if healthy else "degraded", **results)


def _check_database(svc: Services) -> None:
    with svc.sessions() as session:
        session.execute(text("SELECT 1"))


def _check_broker(svc: Services) -> None:
    with svc.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


@router.get(
    "/metrics",
    dependencies=[Depends(require_api_key)],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(svc: ServicesDep, registry: MetricsDep) -> Response:
    """Request counts and latencies, and tasks by status."""

    def count_tasks() -> dict[str, int]:
        with svc.sessions() as session:
            rows = session.execute(select(Task.status, func.count()).group_by(Task.status))
            return {status.value: count for status, count in rows}

    registry.task_counts.count_tasks = count_tasks
    return Response(registry.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
