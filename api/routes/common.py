"""What the task and result routes share: loading a task, its 404, and the error docs."""

from __future__ import annotations

from api.deps import Services
from api.problems import Problem
from store.tasks import Task, get_task

# While a task runs, clients are told to poll again after this many seconds.
POLL_AFTER_S = 2
PROBLEM_RESPONSE = {"content": {"application/problem+json": {}}}


def unknown_task(task_id: str) -> Problem:
    return Problem(404, f"no task with id {task_id!r}", kind="unknown-task")


def load_task(svc: Services, task_id: str) -> Task:
    with svc.sessions() as session:
        task = get_task(session, task_id)
        if task is None:
            raise unknown_task(task_id)
        session.expunge(task)
    return task
