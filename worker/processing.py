"""What a worker does with one task: claim it, run it by its kind (segment an image, register
a stored mask again, fine-tune a model, or make the viewer's tiles of an earlier task), store
the results, and finish or fail it.

Safe to run twice: results go to deterministic keys, claiming and finishing are conditional
updates, and a task that is already FINISHED or FAILED is left as it is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

from model.errors import AmsegError
from store.blobs import TASK_INPUTS, BlobNotFoundError, TaskBlob, task_blob_key, task_prefix
from store.database import DATABASE_UNAVAILABLE, ThrottledWarning, describe_database_error
from store.tasks import (
    CANCELLED_ERROR,
    Task,
    TaskKind,
    fail_task,
    finish_task,
    get_task,
    mark_running,
    record_heartbeat,
)
from worker.finetuning import run_finetune
from worker.jobs import TaskStopped, WorkerContext
from worker.registering import run_register
from worker.segmenting import run_segment
from worker.viewing import run_views

log = logging.getLogger(__name__)
# While the database is down every heartbeat and retry fails: one line a burst, no tracebacks.
database_outage_log = ThrottledWarning(log)


# What runs a task of each kind: (context, task, still_ours) -> (result keys, summary).
RUNS = {
    TaskKind.SEGMENT: run_segment,
    TaskKind.REGISTER: run_register,
    TaskKind.FINETUNE: run_finetune,
    TaskKind.VIEWS: run_views,
}


@dataclass(frozen=True)
class Outcome:
    """What `process_task` did, for logs and tests."""

    task_id: UUID
    action: str  # "finished", "failed", "skipped", "stopped"
    detail: str = ""


def process_task(
    context: WorkerContext, task_id: UUID | str, claimant: str | None = None
) -> Outcome:
    """Run one task to FINISHED or FAILED, or skip it when it is not this worker's to run.

    `claimant` (`store.tasks.claimant_id`) is recorded with the claim, so that the worker can
    hand the task back at once if this process dies.

    Input errors (an image that cannot be read, a grid that does not fit) mark the task FAILED
    with a message for the user. Infrastructure errors (database, blob store) propagate, so
    that Celery can retry; the claim then goes stale and the sweep hands the task out again.
    """
    settings = context.settings
    task_id = UUID(str(task_id))
    with context.sessions() as session:
        claimed = mark_running(
            session,
            task_id,
            stale_after_s=settings.task_stale_after_s,
            max_attempts=settings.task_max_attempts,
            claimant=claimant,
        )
        task = get_task(session, task_id)
        if not claimed:
            state = "gone" if task is None else task.status.value
            log.info("task %s not claimed (%s); skipping", task_id, state)
            return Outcome(task_id, "skipped", state)
        session.expunge(task)

    try:
        with _heartbeat(context, task_id) as still_ours:
            result_keys, summary = RUNS[task.kind](context, task, still_ours)
    except TaskStopped as stop:
        _discard_results_if_gone(context, task_id)
        log.info("task %s stopped: %s", task_id, stop)
        return Outcome(task_id, "stopped", str(stop))
    except (AmsegError, MemoryError, BlobNotFoundError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, BlobNotFoundError):
            message = "the uploaded image is missing from storage; submit it again"
        with context.sessions() as session:
            fail_task(session, task_id, error=message)
        log.warning("task %s failed: %s", task_id, message)
        return Outcome(task_id, "failed", message)

    with context.sessions() as session:
        finished = finish_task(session, task_id, result_keys=result_keys, summary=summary)
    if not finished:
        _discard_results_if_gone(context, task_id)
        return Outcome(task_id, "stopped", "the task was cancelled or deleted meanwhile")
    log.info("task %s finished", task_id)
    return Outcome(task_id, "finished")


def fail_with_error(context: WorkerContext, task_id: UUID | str, error: BaseException) -> None:
    """Record an unexpected error as the task's failure (the last retry gave up)."""
    message = f"internal error: {type(error).__name__}: {error}"
    with context.sessions() as session:
        fail_task(session, task_id, error=" ".join(message.split()))


@contextmanager
def _heartbeat(context: WorkerContext, task_id: UUID) -> Iterator[Callable[[], bool]]:
    """Beat every quarter of the stale period in a thread; yields "is the task still ours?".

    A step that runs longer than the stale period (one huge tile batch) must not let the sweep
    think the worker died.
    """
    stop = threading.Event()
    ours = threading.Event()
    ours.set()
    interval = max(context.settings.task_stale_after_s / 4.0, 0.2)

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with context.sessions() as session:
                    if not record_heartbeat(session, task_id):
                        ours.clear()
                        return
            except DATABASE_UNAVAILABLE as error:  # an outage: one line a burst, try again
                database_outage_log.warn(
                    f"heartbeat of task {task_id} failed: {describe_database_error(error)}"
                )
            except Exception:
                log.exception("heartbeat of task %s failed", task_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{task_id}", daemon=True)
    thread.start()
    try:
        yield ours.is_set
    finally:
        stop.set()
        thread.join(timeout=5.0)


def _discard_results_if_gone(context: WorkerContext, task_id: UUID) -> None:
    """Clean up after a run that lost its task: deleted rows lose every blob, cancelled tasks
    become FAILED and lose their results (the input stays, as for any failed task)."""
    with context.sessions() as session:
        task: Task | None = get_task(session, task_id)
        if task is not None and task.cancel_requested:
            fail_task(session, task_id, error=CANCELLED_ERROR)
    if task is None:
        context.blobs.delete_prefix(task_prefix(task_id))
    elif task.cancel_requested:
        for blob in TaskBlob:
            if blob not in TASK_INPUTS:
                context.blobs.delete_prefix(task_blob_key(task_id, blob))
