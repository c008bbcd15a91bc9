"""What `amseg up` does with its data directory before it serves: one `amseg up` a directory
(a lock its worker holds too, so a worker left by a killed run counts), and the tasks a run
that ended without stopping in order left RUNNING, handed back to the queue.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from uuid import UUID

from store.settings import Settings

LOCK_NAME = "amseg-up.lock"
# A killed run's worker leaves within a second or two (worker.main_process.leave_now).
LOCK_WAIT_S = 15.0


class DataDirBusy(Exception):
    """Another `amseg up` (or a worker it left) still uses the directory."""


def lock_data_dir(data_dir: Path, wait_s: float = LOCK_WAIT_S) -> int:
    """An open file descriptor holding the directory's lock; pass it on to the worker so that
    the lock lasts as long as any process of this run. Waits `wait_s` for processes of an
    earlier run to end, then raises DataDirBusy naming the holder."""
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise DataDirBusy(
                    f"{data_dir} is in use by another `amseg up` (pid {holder}); stop it, or"
                    " give this one another --data-dir"
                ) from None
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def recover_previous_run(settings: Settings) -> tuple[list[UUID], list[UUID]]:
    """Hand back every task a previous run left RUNNING (its attempt not counted) and send a
    message, first in the queue, for those and for every queued task that has none (the file
    queue loses the message a killed worker had taken). Call while holding the lock, before
    the worker starts: no worker of this directory runs, none holds a message. Returns the
    tasks handed back and the tasks sent."""
    from store.database import create_db_engine, create_session_factory
    from store.queue import resend_first, waiting_task_ids
    from store.tasks import queued_task_ids, release_all_claims

    engine = create_db_engine(settings.database_url)
    try:
        with create_session_factory(engine)() as session:
            handed_back = release_all_claims(session, max_attempts=settings.task_max_attempts)
            waiting = waiting_task_ids(settings)
            lost = [task_id for task_id in queued_task_ids(session) if str(task_id) not in waiting]
    finally:
        engine.dispose()
    resend_first(settings, lost)
    return handed_back, lost
