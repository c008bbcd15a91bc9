"""The periodic sweep that makes "no task is lost" true when a broker message or worker is;
the API runs it in the background (`api.app`).

Each pass fails the tasks that ran out of attempts, hands back to the queue the tasks whose
heartbeat went stale (their worker died), and re-sends a queued task only when the broker holds
no message for it: a task waiting its turn behind a long one keeps its single message, so the
queue never fills with copies. Both kinds of re-send go to the head of the queue, where the
task was. Running it in several processes at once is safe: every change is a conditional
update, and a duplicate message is dropped by the worker's conditional claim.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from uuid import UUID

from sqlalchemy.orm import Session, sessionmaker

from store.settings import Settings
from store.tasks import (
    fail_abandoned_tasks,
    find_tasks_to_redispatch,
    mark_dispatched,
    release_stale_tasks,
)

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    redispatched: list[UUID] = field(default_factory=list)
    handed_back: list[UUID] = field(default_factory=list)
    failed: list[UUID] = field(default_factory=list)


def sweep_once(
    sessions: sessionmaker[Session],
    publish: Callable[[str], None],
    settings: Settings,
    waiting: Callable[[], Collection[str]],
) -> SweepReport:
    """One pass. `publish(task_id)` sends a task's message at the head of the queue;
    `waiting()` names the tasks that have a message in the broker. Publishing errors are
    logged and the task is tried again at the next pass."""
    report = SweepReport()
    try:  # read before the tasks: a message taken after this still counts as there
        in_broker: Collection[str] | None = waiting()
    except Exception as error:  # broker down: sending would fail too
        log.warning("could not look into the queue, no queued task re-sent: %s", error)
        in_broker = None
    with sessions() as session:
        limits = {
            "stale_after_s": settings.task_stale_after_s,
            "max_attempts": settings.task_max_attempts,
        }
        report.failed = fail_abandoned_tasks(session, **limits)
        report.handed_back = release_stale_tasks(session, **limits)
        lost = []
        if in_broker is not None:
            candidates = find_tasks_to_redispatch(session, **limits)
            lost = [task_id for task_id in candidates if str(task_id) not in in_broker]
        for task_id in _unique(report.handed_back + lost):
            try:
                publish(str(task_id))
            except Exception as error:  # broker down: a later pass finds it without message
                log.warning("could not re-send task %s: %s", task_id, error)
                break
            mark_dispatched(session, task_id)
            report.redispatched.append(task_id)
    _log(report)
    return report


def _unique(task_ids: list[UUID]) -> list[UUID]:
    return list(dict.fromkeys(task_ids))


def _log(report: SweepReport) -> None:
    for task_id in report.failed:
        log.warning("task %s ran out of attempts and was marked FAILED", task_id)
    for task_id in report.handed_back:
        log.warning("task %s: its worker stopped beating; handed back to the queue", task_id)
    if report.redispatched:
        log.info("re-sent %d task(s): %s", len(report.redispatched), report.redispatched)
