"""Prometheus metrics for `/metrics`: request counts and latencies, tasks by status."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.tasks import TaskStatus

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _TaskCounts(Collector):
    """Tasks per status, read from the database at scrape time (the database is the truth)."""

    def __init__(self) -> None:
        self.count_tasks: Callable[[], dict[str, int]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.count_tasks is None:
            return
        family = GaugeMetricFamily("amseg_tasks", "Tasks by status", labels=["status"])
        counts = self.count_tasks()
        for status in TaskStatus:
            family.add_metric([status.value], counts.get(status.value, 0))
        yield family


class Metrics:
    """One registry per app, so several apps (tests) never clash over metric names."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "amseg_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "amseg_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.uploads = Counter(
            "amseg_tasks_created", "Tasks created by uploads", registry=self.registry
        )
        self.uploads_in_progress = Gauge(
            "amseg_uploads_in_progress",
            "Uploads this API process is receiving or storing (at most MAX_CONCURRENT_UPLOADS)",
            registry=self.registry,
        )
        self.task_counts = _TaskCounts()
        self.registry.register(self.task_counts)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (a plain ASGI middleware, so
    errors raised while the body streams, like the body limit's 413, pass through intact)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(
                scope["method"], route, status, time.perf_counter() - start
            )
