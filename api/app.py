"""The FastAPI application factory: `create_app(settings)`; `uvicorn api.app:app` serves it.

The app holds a database engine, the blob store and a Celery publisher in `app.state`, and
runs the sweep that re-sends lost tasks in the background while it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator

import anyio
from fastapi import Depends, FastAPI

import model
from api.body_guard import BodyGuardMiddleware
from api.deps import Services, reject_unknown_query_parameters
from api.metrics import Metrics, MetricsMiddleware
from api.origin_guard import OriginGuardMiddleware
from api.problems import database_outage_log, install_problem_handlers
from api.routes import (
    corrections,
    exports,
    models,
    operations,
    registrations,
    reruns,
    results,
    tasks,
    views,
)
from api.routes.web import install_web
from api.sweep import sweep_once
from api.view_cache import ViewStore
from store.blobs import create_blob_store
from store.database import (
    DATABASE_UNAVAILABLE,
    create_db_engine,
    create_session_factory,
    describe_database_error,
    upgrade_database,
)
from store.queue import create_celery, ensure_broker_dirs, send_process_task
from store.settings import Settings, apply_data_umask, get_settings

log = logging.getLogger(__name__)


def build_services(settings: Settings, *, migrate: bool) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        upgrade_database(settings.database_url)
    engine = create_db_engine(settings.database_url)
    ensure_broker_dirs(settings)
    blobs = create_blob_store(settings, create_bucket=True)
    sessions = create_session_factory(engine)
    celery = create_celery(settings)
    _remove_old_view_cache(settings)

    def publish_first(task_id: str) -> None:
        send_process_task(celery, task_id, settings.task_queue, first=True)

    return Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        blobs=blobs,
        celery=celery,
        views=ViewStore(blobs, sessions, publish_first, cache_bytes=settings.view_cache_bytes),
    )


def _remove_old_view_cache(settings: Settings) -> None:
    """Earlier versions of the API decoded images into DATA_DIR/views/ (up to 8 GiB); workers
    make the viewer's tiles now, so that folder is only in the way."""
    old = settings.data_dir / "views"
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
        log.info("removed %s: the viewer's tiles are made by the workers now", old)


async def _sweep_forever(services: Services) -> None:
    """Re-send lost tasks every SWEEP_INTERVAL_S; errors are logged, the loop goes on."""
    while True:
        await asyncio.sleep(services.settings.sweep_interval_s)
        try:
            await anyio.to_thread.run_sync(
                sweep_once,
                services.sessions,
                services.publish_first,
                services.settings,
                services.waiting_task_ids,
            )
        except DATABASE_UNAVAILABLE as error:  # an outage: one line, not a traceback a pass
            database_outage_log.warn(
                f"task sweep skipped, the database is unreachable: {describe_database_error(error)}"
            )
        except Exception:
            log.exception("task sweep failed; next try in %ss", services.settings.sweep_interval_s)


def create_app(
    settings: Settings | None = None, *, migrate: bool | None = None, sweep: bool = True
) -> FastAPI:
    """Build the API. `migrate` upgrades the database on start (default: MIGRATE_ON_START;
    with several API replicas migrate once, before, instead); `sweep` runs the re-send loop
    (safe in every replica)."""
    settings = settings or get_settings()
    if migrate is None:
        migrate = settings.migrate_on_start

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await anyio.to_thread.run_sync(lambda: build_services(settings, migrate=migrate))
        app.state.services = services
        sweeper = asyncio.create_task(_sweep_forever(services)) if sweep else None
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            services.celery.close()
            services.engine.dispose()

    app = FastAPI(
        title="amseg",
        version=model.__version__,
        summary="Segment and number MALDI ablation marks in microscopy images.",
        description=(
            "Upload an image to `POST /tasks` (optionally with the acquisition grid `rows` and "
            "`cols`), poll `GET /tasks/{id}` until it is FINISHED, then download the mask from "
            "`GET /masks/{id}` and, with a grid, the registered ids, CSV, overlay and QC."
        ),
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query_parameters)],
        docs_url=None,  # served by api.routes.web from local files, so they work offline
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_problem_handlers(app)
    for routes in (
        tasks,
        reruns,
        registrations,
        results,
        exports,
        views,
        corrections,
        models,
        operations,
    ):
        app.include_router(routes.router)
    install_web(app)
    # Before anything reads a body: refuses bodies too big, too slow, broken off or too many.
    app.add_middleware(
        BodyGuardMiddleware,
        max_bytes=settings.max_upload_bytes,
        idle_timeout_s=settings.upload_idle_timeout_s,
        max_uploads=settings.max_concurrent_uploads,
        on_uploads_changed=app.state.metrics.uploads_in_progress.set,
    )
    # Before the body guard: a foreign Host or another site's write is refused unread.
    app.add_middleware(OriginGuardMiddleware, allowed_hosts=settings.allowed_hosts)
    # Outermost, so that the guards' own refusals (400, 403, 413, 503) are counted too.
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def __getattr__(name: str) -> FastAPI:
    """`uvicorn api.app:app` builds the app from the environment on first access."""
    if name == "app":
        global app
        settings = get_settings()
        apply_data_umask(settings)  # a server process: what it stores under DATA_DIR is private
        app = create_app(settings)
        return app
    raise AttributeError(name)
