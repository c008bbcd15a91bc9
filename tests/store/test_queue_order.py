"""Both brokers: new tasks queue behind the others, a task handed back after a fault goes first
(it keeps its place), a message a worker gives back goes first too, and `waiting_task_ids` says
which tasks have a message waiting, one count a message."""

import uuid
from pathlib import Path

import pytest

from store.queue import (
    create_celery,
    ensure_broker_dirs,
    resend_first,
    send_process_task,
    waiting_task_ids,
)
from store.settings import Settings
from tests.conftest import RedisServer

BROKERS = ["files", "redis"]


@pytest.fixture(params=BROKERS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    queue = f"test-{uuid.uuid4().hex[:8]}"
    if request.param == "files":
        settings = Settings(data_dir=tmp_path, embedded=True, task_queue=queue)
        ensure_broker_dirs(settings)
        return settings
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    return Settings(data_dir=tmp_path, redis_url=redis_server.url, task_queue=queue)


def task_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def take(settings: Settings, count: int) -> list[str]:
    """The task ids of the next `count` messages, in the order a worker gets them."""
    app = create_celery(settings)
    taken = []
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(settings.task_queue)
        for _ in range(count):
            message = queue.get(timeout=5)
            taken.append(message.payload[0][0])
            message.ack()
        queue.close()
    app.close()
    return taken


def test_a_task_handed_back_goes_before_the_queued_ones(settings: Settings) -> None:
    queued, handed_back = task_ids(3), task_ids(2)
    app = create_celery(settings)
    for task_id in queued:
        send_process_task(app, task_id, settings.task_queue)
    app.close()
    resend_first(settings, handed_back)

    assert waiting_task_ids(settings) == {task_id: 1 for task_id in queued + handed_back}
    assert take(settings, 5) == handed_back + queued
    assert not waiting_task_ids(settings)


def test_a_message_a_worker_gives_back_goes_first(settings: Settings) -> None:
    """A stopping worker leaves the message it will not start unacknowledged: the broker
    gets it back when the worker's connection closes."""
    queued = task_ids(3)
    app = create_celery(settings)
    for task_id in queued:
        send_process_task(app, task_id, settings.task_queue)
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(settings.task_queue)
        assert queue.get(timeout=5).payload[0][0] == queued[0]  # taken, never acknowledged
        queue.close()
    app.close()

    assert take(settings, 3) == queued


def test_waiting_counts_every_copy(settings: Settings) -> None:
    (task_id,) = task_ids(1)
    resend_first(settings, [task_id, task_id])
    assert waiting_task_ids(settings) == {task_id: 2}
