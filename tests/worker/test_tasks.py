"""The Celery task around `process_task`: unexpected errors fail the task at once with a
message; passing infrastructure errors are retried, then fail (run eagerly here); a task whose
pool process died is handed back and sent again first; the main process drops a duplicate
message, and starts nothing once the worker is stopping."""

from pathlib import Path

import numpy as np
import pytest
from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

from store.blobs import LocalBlobStore, TaskBlob, task_blob_key
from store.database import create_db_engine, create_session_factory, upgrade_database
from store.settings import Settings
from store.tasks import (
    TaskParameters,
    TaskStatus,
    claimant_id,
    create_task,
    finish_task,
    get_task,
    mark_running,
)
from tests.service_stack import png_bytes
from worker import tasks
from worker.jobs import WorkerContext


def context_whose_model_raises(tmp_path: Path, error: Exception) -> WorkerContext:
    settings = Settings(data_dir=tmp_path, task_max_attempts=2)
    upgrade_database(settings.database_url)

    def load_segmenter(name: str | None):
        raise error

    return WorkerContext(
        settings=settings,
        sessions=create_session_factory(create_db_engine(settings.database_url)),
        blobs=LocalBlobStore(settings.blob_dir),
        load_segmenter=load_segmenter,
    )


def queued_task(context: WorkerContext) -> str:
    data = png_bytes(np.zeros((16, 16), np.uint8))
    with context.sessions() as session:
        task, _ = create_task(
            session,
            parameters=TaskParameters(),
            input_content_type="image/png",
            input_size=len(data),
            image_width=16,
            image_height=16,
        )
    context.blobs.put_bytes(task_blob_key(task.id, TaskBlob.INPUT), data)
    return str(task.id)


def worker_whose_model_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> tuple[WorkerContext, str]:
    """The Celery task's context, with a model that raises `error`, and one queued task."""
    context = context_whose_model_raises(tmp_path, error)
    monkeypatch.setattr(tasks, "worker_context", lambda: context)
    return context, queued_task(context)


def test_a_bug_fails_the_task_at_once_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, task_id = worker_whose_model_raises(tmp_path, monkeypatch, RuntimeError("boom"))

    result = tasks.process.apply(args=[task_id]).get()

    assert result == "failed: RuntimeError"
    with context.sessions() as session:
        task = get_task(session, task_id)
    assert task.status == TaskStatus.FAILED
    assert task.error == "internal error: RuntimeError: boom"
    assert task.attempts == 1


def test_storage_trouble_is_retried_then_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, task_id = worker_whose_model_raises(tmp_path, monkeypatch, OSError("disk unplugged"))

    result = tasks.process.apply(args=[task_id])

    assert isinstance(result.result, OSError)  # the last try gave up and re-raised

    with context.sessions() as session:
        task = get_task(session, task_id)
    assert task.status == TaskStatus.FAILED
    assert "disk unplugged" in task.error
    assert task.attempts == 2  # released and claimed again until the attempts ran out


POOL_CHILD_PID = 4242


def lost_request(task_id: str) -> tasks.HandBackRequest:
    """The main process's request for `task_id`, accepted by pool child POOL_CHILD_PID (built
    without a broker message: only what on_failure and revoked read)."""
    request = object.__new__(tasks.HandBackRequest)
    request._args = (task_id,)
    request._delivery_info = {"routing_key": "gpu"}
    request.worker_pid = POOL_CHILD_PID
    request.acknowledged = False
    request._already_revoked = False
    request._connection_errors = ()
    return request


def failure(error: BaseException) -> ExceptionInfo:
    try:
        raise error
    except BaseException:
        return ExceptionInfo()


@pytest.mark.parametrize(
    ("error", "handed_back"),
    [(WorkerLostError("SIGKILL"), True), (SystemExit(1), True), (RuntimeError("bug"), False)],
)
def test_a_lost_pool_childs_task_is_handed_back_before_celery_resends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, handed_back: bool
) -> None:
    context = context_whose_model_raises(tmp_path, RuntimeError("unused"))
    monkeypatch.setattr(tasks, "get_settings", lambda: context.settings)
    task_id = queued_task(context)
    with context.sessions() as session:
        assert mark_running(
            session,
            task_id,
            stale_after_s=60,
            max_attempts=2,
            claimant=claimant_id(tasks.WORKER_PID, POOL_CHILD_PID),
        )
    seen_by_celery = []

    def celery_on_failure(request: Request, exc_info: ExceptionInfo, **_: object) -> None:
        with context.sessions() as session:  # what Celery's re-send will find
            seen_by_celery.append(get_task(session, task_id).status)

    monkeypatch.setattr(Request, "on_failure", celery_on_failure)
    sent = []
    monkeypatch.setattr(tasks, "send_process_task", lambda *args, **kw: sent.append((args, kw)))

    lost_request(task_id).on_failure(failure(error))

    expected = TaskStatus.QUEUED if handed_back else TaskStatus.RUNNING
    assert seen_by_celery == [expected]
    with context.sessions() as session:
        assert get_task(session, task_id).attempts == 1  # the lost attempt still counts
    # Sent again at the head of the queue it came from, so it keeps its place.
    assert sent == ([((tasks.app, task_id, "gpu"), {"first": True})] if handed_back else [])


@pytest.mark.parametrize(
    ("state", "stopping", "outcome"),
    [
        ("queued", False, "run"),
        ("running", False, "dropped"),  # a duplicate: another process holds the claim
        ("finished", False, "dropped"),
        ("queued", True, "held"),  # the worker is stopping: the broker gets it back
    ],
)
def test_the_main_process_starts_only_a_claimable_task_and_nothing_while_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str, stopping: bool, outcome: str
) -> None:
    context = context_whose_model_raises(tmp_path, RuntimeError("unused"))
    monkeypatch.setattr(tasks, "get_settings", lambda: context.settings)
    monkeypatch.setattr(tasks, "worker_stopping", lambda: stopping)
    monkeypatch.setattr(tasks, "task_ready", lambda request: None)
    monkeypatch.setattr(Request, "revoked", lambda request: request._already_revoked)
    task_id = queued_task(context)
    with context.sessions() as session:
        if state != "queued":
            assert mark_running(session, task_id, stale_after_s=60, max_attempts=2)
        if state == "finished":
            assert finish_task(session, task_id, result_keys={})
    request = lost_request(task_id)
    acknowledged = []
    request._on_ack = lambda *args: acknowledged.append(True)

    skipped = request.revoked()

    assert (skipped, bool(acknowledged)) == {
        "run": (False, False),
        "dropped": (True, True),
        "held": (True, False),
    }[outcome]
    assert request.revoked() == skipped  # asked again (Celery does), the answer stays
