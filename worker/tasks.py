"""The Celery task and the per-process resources of a worker.

Start a worker with `amseg worker` (or `celery -A worker.tasks worker`). Database engines,
the blob client and the network are created in each pool process after the fork: pooled
connections and CUDA contexts must not cross a fork.
"""

from __future__ import annotations

import logging
import os
import threading

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from botocore.exceptions import BotoCoreError
from celery import Task as CeleryTask
from celery.exceptions import SoftTimeLimitExceeded, Terminated
from celery.signals import worker_process_init
from celery.worker.request import Request
from celery.worker.state import task_ready
from sqlalchemy.exc import OperationalError

from store.blobs import create_blob_store
from store.database import (
    DATABASE_UNAVAILABLE,
    create_db_engine,
    create_session_factory,
    describe_database_error,
)
from store.messages import PRIORITY_FIRST
from store.queue import PROCESS_TASK, create_celery, send_process_task
from store.settings import Settings, get_settings
from store.tasks import (
    TaskStatus,
    claimant_id,
    fail_task,
    get_task,
    release_claim,
    release_task,
)
from worker.jobs import WorkerContext
from worker.main_process import main_process_session, may_start, worker_stopping
from worker.models import ModelDirectories
from worker.processing import database_outage_log, fail_with_error, process_task
from worker.segmenting import warm_up_segmenter

log = logging.getLogger(__name__)

# Transient infrastructure errors worth another try with backoff; anything else is final.
RETRY_BACKOFF_MAX_S = 60

app = create_celery(get_settings())

# The worker's main process (this module is imported there before the pool forks, and pool
# children inherit the value): a claim names the worker that sees its process die.
WORKER_PID = os.getpid()
# Failures of a request that mean the process running it stopped (killed, exited, terminated).
PROCESS_STOPPED = (WorkerLostError, Terminated, SystemExit, KeyboardInterrupt)

_context: WorkerContext | None = None
_context_pid: int | None = None
_context_lock = threading.Lock()


def build_context(settings: Settings) -> WorkerContext:
    """Everything one worker process needs, created fresh in that process."""
    from model.segment.neural import get_segmenter
    from model.segment.runtime import RuntimeChoice

    engine = create_db_engine(settings.database_url)
    blobs = create_blob_store(settings)
    model_dirs = ModelDirectories(settings, blobs)

    def load_segmenter(name: str | None):
        choice = RuntimeChoice(device=settings.worker_device)
        return get_segmenter(model_dirs(name), runtime=choice)

    return WorkerContext(
        settings=settings,
        sessions=create_session_factory(engine),
        blobs=blobs,
        load_segmenter=load_segmenter,
        model_dir=model_dirs,
    )


def worker_context() -> WorkerContext:
    """This process's context; rebuilt after a fork, so a child never uses its parent's."""
    global _context, _context_pid
    with _context_lock:
        if _context is None or _context_pid != os.getpid():
            _context = build_context(get_settings())
            _context_pid = os.getpid()
        return _context


@worker_process_init.connect
def _load_after_fork(**_: object) -> None:
    """Open connections and load the default network as soon as a pool child starts (on a GPU
    also run it once, so that the first task does not wait for cuDNN's autotuning)."""
    context = worker_context()
    try:
        warm_up_segmenter(context.load_segmenter(None))
    except Exception:  # the task will report it; a worker must still start
        log.exception("could not preload the default model")


class HandBackRequest(Request):
    """The worker's main process's view of one message.

    Before the pool starts it: a duplicate (a task nobody could claim now) is acknowledged and
    dropped without reaching the pool, and once the worker is stopping nothing starts (the
    message stays unacknowledged: the broker gets it back, first in the queue, when the worker
    closes). When the pool process running it dies: the task is handed back and its message
    sent again at the head of the queue, so it keeps its place."""

    def revoked(self) -> bool:
        if super().revoked():
            return True
        if not self.args:
            return False
        task_id = str(self.args[0])
        if worker_stopping():
            log.info("task %s not started: the worker is stopping", task_id)
            self._drop(acknowledge=False)
            return True
        if not may_start(task_id, get_settings()):
            log.info("task %s: a duplicate message, dropped", task_id)
            self._drop(acknowledge=True)
            return True
        return False

    def _drop(self, *, acknowledge: bool) -> None:
        task_ready(self)
        if acknowledge:
            self.acknowledge()
        self._already_revoked = True  # Celery's "skip it" flag: asked again, the answer stays

    def on_failure(
        self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False
    ) -> object:
        error = exc_info.exception
        if isinstance(error, ExceptionWithTraceback):
            error = error.exc
        if isinstance(error, PROCESS_STOPPED) and self.worker_pid is not None and self.args:
            queue = (self.delivery_info or {}).get("routing_key") or get_settings().task_queue
            hand_back(str(self.args[0]), self.worker_pid, queue)
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )


def hand_back(task_id: str, pid: int, queue: str) -> None:
    """Release pool process `pid`'s claim of the task, from the worker's main process, and
    send its message again at the head of `queue`.

    The attempt stays counted: a task that kills its process every time runs out of attempts.
    """
    settings = get_settings()
    try:
        with main_process_session(settings) as session:
            status = release_claim(
                session,
                task_id,
                claimant=claimant_id(WORKER_PID, pid),
                max_attempts=settings.task_max_attempts,
            )
        if status == TaskStatus.QUEUED:
            send_process_task(app, task_id, queue, first=True)
    except Exception:  # the database or broker is away: the sweep hands it back once stale
        log.exception("could not hand back task %s of the lost process %d", task_id, pid)
        return
    if status is not None:
        log.warning("process %d running task %s stopped; the task is %s", pid, task_id, status)


@app.task(
    name=PROCESS_TASK,
    bind=True,
    Request=HandBackRequest,
    # The bound for retries after passing infrastructure errors.
    max_retries=get_settings().task_max_attempts,
    default_retry_delay=2,
)
def process(self: CeleryTask, task_id: str) -> str:
    """Process task `task_id` (a UUID string); returns what happened, for the worker log."""
    context = worker_context()
    try:
        outcome = process_task(context, task_id, claimant=claimant_id(WORKER_PID))
    except SoftTimeLimitExceeded:
        with context.sessions() as session:
            fail_task(
                session,
                task_id,
                error=(
                    f"the task ran longer than {context.settings.task_soft_time_limit_s} s "
                    "(TASK_SOFT_TIME_LIMIT_S) and was stopped"
                ),
            )
        return "failed: time limit"
    except (OperationalError, BotoCoreError, OSError, ConnectionError) as error:
        # Database or storage trouble: give the task back and try again later, while it has
        # attempts left (a released task without any could never be claimed again).
        try:
            with context.sessions() as session:
                task = get_task(session, task_id)
                attempts_left = task is not None and (
                    task.attempts < context.settings.task_max_attempts
                )
                if attempts_left and self.request.retries < self.max_retries:
                    release_task(session, task_id)
                else:
                    attempts_left = False
        except DATABASE_UNAVAILABLE as outage:
            database_outage_log.warn(
                f"could not release task {task_id}, the sweep will: "
                f"{describe_database_error(outage)}"
            )
            raise error from None
        except Exception:
            log.exception("could not release task %s; the sweep will", task_id)
            raise error from None
        if not attempts_left:
            fail_with_error(context, task_id, error)
            raise
        log.warning("task %s hit %s; retrying", task_id, error)
        countdown = min(2 ** (self.request.retries + 1), RETRY_BACKOFF_MAX_S)
        # First in the queue, as every task handed back: it keeps its place.
        raise self.retry(exc=error, countdown=countdown, priority=PRIORITY_FIRST) from error
    except Exception as error:
        # A bug, not a passing failure: running it again would fail again. Say so at once
        # instead of letting the sweep retry it until the attempts run out.
        log.exception("task %s failed unexpectedly", task_id)
        fail_with_error(context, task_id, error)
        return f"failed: {type(error).__name__}"
    return f"{outcome.action} {outcome.detail}".strip()
