"""The sweep hands back tasks whose worker died, re-sends a queued task only when the broker
holds no message for it (once per stale period at most), and fails the exhausted ones."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.sweep import sweep_once
from store.database import create_db_engine, create_session_factory, upgrade_database
from store.settings import Settings
from store.tasks import Task, TaskParameters, TaskStatus, create_task, get_task


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, task_stale_after_s=30.0, task_max_attempts=2)


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    upgrade_database(settings.database_url)
    return create_session_factory(create_db_engine(settings.database_url))


def make_task(sessions: sessionmaker[Session], **columns) -> Task:
    with sessions() as session:
        task, _ = create_task(
            session,
            parameters=TaskParameters(),
            input_content_type="image/png",
            input_size=1,
            image_width=1,
            image_height=1,
        )
        if columns:
            session.execute(update(Task).where(Task.id == task.id).values(**columns))
            session.commit()
        return task


def minutes_ago(minutes: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


def nothing_waiting() -> set[str]:
    return set()


def test_lost_tasks_are_resent_once_per_stale_period(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    lost_in_queue = make_task(sessions, created_at=minutes_ago(5))
    worker_died = make_task(
        sessions, status=TaskStatus.RUNNING, attempts=1, heartbeat_at=minutes_ago(5)
    )
    fresh = make_task(sessions)
    sent: list[str] = []

    report = sweep_once(sessions, sent.append, settings, nothing_waiting)

    assert set(sent) == {str(lost_in_queue.id), str(worker_died.id)}
    assert str(fresh.id) not in sent
    assert set(report.redispatched) == {lost_in_queue.id, worker_died.id}
    assert report.handed_back == [worker_died.id]
    with sessions() as session:
        handed_back = get_task(session, worker_died.id)
    assert (handed_back.status, handed_back.attempts) == (TaskStatus.QUEUED, 1)
    sweep_once(sessions, sent.append, settings, nothing_waiting)
    assert len(sent) == 2  # not again until another stale period has passed


def test_a_task_waiting_its_turn_is_never_resent(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Behind a long task, queued tasks wait longer than any stale period: as long as their
    message is in the queue the sweep leaves them alone, however many passes it makes."""
    waiting = [make_task(sessions, created_at=minutes_ago(5)) for _ in range(3)]
    in_queue = {str(task.id) for task in waiting}
    sent: list[str] = []
    for _ in range(3):
        assert sweep_once(sessions, sent.append, settings, lambda: in_queue).redispatched == []
        with sessions() as session:  # as if another stale period had passed
            session.execute(update(Task).values(dispatched_at=minutes_ago(5)))
            session.commit()
    assert sent == []

    in_queue.discard(str(waiting[1].id))  # the broker lost this one's message
    sweep_once(sessions, sent.append, settings, lambda: in_queue)
    assert sent == [str(waiting[1].id)]


def test_a_queue_that_cannot_be_read_resends_no_queued_task(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    make_task(sessions, created_at=minutes_ago(5))
    worker_died = make_task(
        sessions, status=TaskStatus.RUNNING, attempts=1, heartbeat_at=minutes_ago(5)
    )

    def broker_down() -> set[str]:
        raise ConnectionError("broker down")

    sent: list[str] = []
    sweep_once(sessions, sent.append, settings, broker_down)
    assert sent == [str(worker_died.id)]  # handed back; its message is tried at once


def test_a_broker_that_refuses_leaves_the_task_for_the_next_pass(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    task = make_task(sessions, created_at=minutes_ago(5))

    def broker_down(task_id: str) -> None:
        raise ConnectionError("broker down")

    assert sweep_once(sessions, broker_down, settings, nothing_waiting).redispatched == []
    sent: list[str] = []
    sweep_once(sessions, sent.append, settings, nothing_waiting)
    assert sent == [str(task.id)]


def test_exhausted_tasks_are_failed_not_resent(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    exhausted = make_task(
        sessions, status=TaskStatus.RUNNING, attempts=2, heartbeat_at=minutes_ago(5)
    )
    sent: list[str] = []
    report = sweep_once(sessions, sent.append, settings, nothing_waiting)
    assert sent == [] and report.failed == [exhausted.id]
    with sessions() as session:
        assert get_task(session, exhausted.id).status == TaskStatus.FAILED
