"""The periodic sweep that makes "no task is lost" true when a broker message or worker is;
the API runs it in the background (`api.app`).

It fails tasks that ran out of attempts, and re-sends the message of tasks that sat QUEUED or
whose heartbeat went stale. Running it in several processes at once is safe: every change is
a conditional update, and a duplicate message is dropped by the worker's conditional claim.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from sqlalchemy.orm import Session, sessionmaker

from store.settings import Settings
from store.tasks import fail_abandoned_tasks, find_tasks_to_redispatch, mark_dispatched

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    redispatched: list[UUID] = field(default_factory=list)
    failed: list[UUID] = field(default_factory=list)


def sweep_once(
    sessions: sessionmaker[Session], publish: Callable[[str], None], settings: Settings
) -> SweepReport:
    """One pass: fail exhausted tasks, re-send the lost ones. Publishing errors are logged and
    the task is tried again at the next pass."""
    report = SweepReport()
    with sessions() as session:
        report.failed = fail_abandoned_tasks(
            session,
            stale_after_s=settings.task_stale_after_s,
            max_attempts=settings.task_max_attempts,
        )
        candidates = find_tasks_to_redispatch(
            session,
            stale_after_s=settings.task_stale_after_s,
            max_attempts=settings.task_max_attempts,
        )
        for task_id in candidates:
            try:
                publish(str(task_id))
            except Exception as error:  # broker down: leave it for the next pass
                log.warning("could not re-send task %s: %s", task_id, error)
                break
            mark_dispatched(session, task_id)
            report.redispatched.append(task_id)
    for task_id in report.failed:
        log.warning("task %s ran out of attempts and was marked FAILED", task_id)
    if report.redispatched:
        log.info("re-sent %d task(s): %s", len(report.redispatched), report.redispatched)
    return report
