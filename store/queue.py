"""The queue both sides use: the Celery app, its broker settings chosen for "no task lost, none
run twice at once", and the message that asks for a task.

The API publishes with it, the worker consumes with it; it pulls in no model code. The task
body lives in `worker.tasks`, registered by name.

Delivery (see ../shared/reference/service-anchors.md §2 for the measurements behind it):
- messages carry only the task id; the database row is the truth;
- late acks + prefetch 1: a message is acknowledged only after its task returned, so a worker
  that dies mid-task leaves it in Redis's unacked set, restored after the visibility timeout;
- a pool child killed mid-task (OOM, SIGKILL): its worker hands the task back and sends its
  message again, first in the queue (`worker.tasks.HandBackRequest`);
- soft < hard time limit < visibility timeout, so a slow task is never handed out twice;
- the API's sweep hands back tasks whose heartbeat went stale and re-sends a queued task only
  when the broker holds no message for it (`waiting_task_ids`): a task waiting its turn keeps
  its one message, however long the queue.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

import redis
from celery import Celery
from kombu import Queue

from store.file_queue import waiting_task_ids as waiting_in_folder
from store.messages import PRIORITY_FIRST, PRIORITY_NORMAL, PROCESS_TASK, message_task_id
from store.settings import Settings

__all__ = [
    "PROCESS_TASK",
    "celery_config",
    "create_celery",
    "ensure_broker_dirs",
    "resend_first",
    "send_process_task",
    "waiting_task_ids",
]
# Kombu's Redis transport keeps a list per priority step: `queue`, `queue\x06\x163`, ...
_REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
_REDIS_PRIORITY_SEPARATOR = "\x06\x16"


def celery_config(settings: Settings) -> dict:
    """Celery settings for the API (publisher) and the workers alike."""
    config: dict = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.task_queue,
        "task_queues": [Queue(settings.task_queue)],
        "task_create_missing_queues": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Status lives in the task table; Celery results would be a second, weaker copy.
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        # A lost pool child's message is acknowledged: its worker hands the task back and
        # sends it again at the head of the queue (worker.tasks.HandBackRequest); Celery's own
        # requeue or retry would put it behind every queued task.
        "task_reject_on_worker_lost": False,
        "task_retry_on_worker_lost": False,
        # How long the thread-based pool (embedded mode) waits for a result from a dead pool
        # child before it reports the child lost and the task is handed back (default 10 s).
        # A result it missed is harmless: the task is FINISHED, and the re-send is a no-op.
        "worker_lost_wait": 1.0,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        # A torch worker's memory grows with fragmentation; recycle the child now and then.
        "worker_max_tasks_per_child": 200,
        # Tasks are redelivered after a lost connection anyway; stop them instead of finishing
        # them twice.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        # On SIGTERM (mapped to SIGQUIT in docker-compose) give the running task this long to
        # finish before the cold shutdown hands its unacknowledged message back to Redis.
        "worker_soft_shutdown_timeout": 30.0,
        "broker_publish_retry": True,
        "broker_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
    }
    if settings.redis_url:
        transport = {
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
            "health_check_interval": 25,
        }
        config["broker_transport_options"] = transport
        config["result_backend_transport_options"] = transport
        # Celery reads the visibility timeout in three places (celery/celery#7651).
        config["visibility_timeout"] = settings.broker_visibility_timeout_s
    else:
        # Embedded mode: messages are files under data_dir (store.file_queue: kombu's
        # filesystem transport that names each file after its task). No broadcast is needed
        # (remote control and events use fanout exchanges), so turn it off.
        folder = str(settings.broker_dir / "messages")
        config["broker_transport"] = "store.file_queue:Transport"
        config["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "control_folder": str(settings.broker_dir / "control"),
            "store_processed": False,
            "polling_interval": 0.25,
        }
        config["worker_enable_remote_control"] = False
        config["worker_send_task_events"] = False
    return config


def ensure_broker_dirs(settings: Settings) -> None:
    """Create the embedded broker's folders (no-op with Redis); call before connecting."""
    if not settings.redis_url:
        for folder in ("messages", "control"):
            (settings.broker_dir / folder).mkdir(parents=True, exist_ok=True)


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured from `settings` (embedded filesystem broker without REDIS_URL).

    Creating it connects to nothing and writes nothing."""
    app = Celery("amseg", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def send_process_task(app: Celery, task_id: str, queue: str, *, first: bool = False) -> None:
    """Publish the message that asks a worker to process task `task_id`: behind the queued
    ones, or `first` (a task handed back after a fault, which keeps its place)."""
    priority = PRIORITY_FIRST if first else PRIORITY_NORMAL
    app.send_task(PROCESS_TASK, args=[task_id], queue=queue, priority=priority)


def resend_first(settings: Settings, task_ids: Iterable[object]) -> None:
    """Send the tasks' messages before every message sent normally, in the given order, with
    a publisher of its own (for callers without a Celery app)."""
    task_ids = list(task_ids)
    if not task_ids:
        return
    app = create_celery(settings)
    try:
        for task_id in task_ids:
            send_process_task(app, str(task_id), settings.task_queue, first=True)
    finally:
        app.close()


def waiting_task_ids(settings: Settings) -> Counter[str]:
    """How many messages wait in TASK_QUEUE for each task (not yet taken by a worker).

    The sweep re-sends a queued task only when it has none. Reads the whole queue: a Redis
    list a priority step, or the names of the message files."""
    if not settings.redis_url:
        return Counter(waiting_in_folder(settings.broker_dir / "messages", settings.task_queue))
    keys = [settings.task_queue] + [
        f"{settings.task_queue}{_REDIS_PRIORITY_SEPARATOR}{step}"
        for step in _REDIS_PRIORITY_STEPS[1:]
    ]
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    try:
        with client.pipeline(transaction=False) as pipeline:
            for key in keys:
                pipeline.lrange(key, 0, -1)
            lists = pipeline.execute()
    finally:
        client.close()
    ids = (message_task_id(json.loads(raw)) for messages in lists for raw in messages)
    return Counter(task_id for task_id in ids if task_id is not None)
