"""What a worker's main process adds to Celery's: it checks a message before the pool starts
anything (a duplicate is dropped there, and nothing starts once the worker is stopping), and it
stops at once, handing its task back, when `amseg up` is gone.

The main process forks the pool's children, so it keeps no database connection open: each
check opens one and closes it (NullPool).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from store.database import create_db_engine, create_session_factory
from store.queue import resend_first
from store.settings import Settings
from store.tasks import is_claimable, release_worker_claims

log = logging.getLogger(__name__)

# How long the pool's children get to be gone after SIGKILL before the task is handed back.
CHILDREN_GONE_WAIT_S = 3.0

_stopping = threading.Event()
_engines: dict[tuple[int, str], Engine] = {}


def worker_stopping() -> bool:
    """Whether this worker was told to stop (a stop signal, or its parent gone): from then on
    it starts no task, even one whose message it already took."""
    from celery.worker import state

    # Celery's own test: an exit code, 0 included, means "stop" (and 0 == False in Python).
    asked = (state.should_stop, state.should_terminate)
    return _stopping.is_set() or any(flag is not None and flag is not False for flag in asked)


@contextlib.contextmanager
def main_process_session(settings: Settings) -> Iterator[Session]:
    """A session whose connection is closed when it ends (none survives into a fork)."""
    key = (os.getpid(), settings.database_url)
    if key not in _engines:
        _engines[key] = create_db_engine(settings.database_url, poolclass=NullPool)
    with create_session_factory(_engines[key])() as session:
        yield session


def may_start(task_id: str, settings: Settings) -> bool:
    """False for a message whose task nobody could claim now (a duplicate: the task runs,
    ran, or was cancelled), so that the pool never sees it; True when the database cannot
    say (the pool's claim decides then)."""
    try:
        with main_process_session(settings) as session:
            return is_claimable(
                session,
                task_id,
                stale_after_s=settings.task_stale_after_s,
                max_attempts=settings.task_max_attempts,
            )
    except Exception as error:
        log.warning("could not check task %s before starting it: %s", task_id, error)
        return True


def leave_now(settings: Settings) -> None:
    """The parent (`amseg up`) is gone and nothing will stop this worker in order: kill the
    pool's children (their task stops at once), hand this worker's tasks back to the queue
    with their attempt not counted, send their messages first, and exit."""
    _stopping.set()
    worker_pid = os.getpid()
    _kill_children(worker_pid)
    try:
        with main_process_session(settings) as session:
            task_ids = release_worker_claims(
                session,
                worker_pid=worker_pid,
                max_attempts=settings.task_max_attempts,
                count_attempt=False,
            )
        resend_first(settings, task_ids)
        for task_id in task_ids:
            print(f"amseg worker: task {task_id} handed back to the queue", file=sys.stderr)
    except Exception as error:  # the next `amseg up` hands it back when it starts
        print(f"amseg worker: could not hand its task back: {error}", file=sys.stderr)
    finally:
        sys.stderr.flush()
        os._exit(0)


def _kill_children(pid: int) -> None:
    """SIGKILL every child of `pid` and wait (a while) until none runs; zombies are done."""
    children = _children(pid)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + CHILDREN_GONE_WAIT_S
    while any(_is_running(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
