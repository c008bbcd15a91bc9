"""`amseg worker`: run a Celery worker that processes uploaded images."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

import typer

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# What the kernel sends the worker when `amseg up` dies: a signal Celery leaves alone.
PARENT_DEATH_SIGNAL = signal.SIGUSR2


def register(app: typer.Typer) -> None:
    """Attach `amseg worker` to the amseg command line (entry point group amseg.commands)."""
    app.command("worker")(worker)


def worker(
    queues: str | None = typer.Option(
        None,
        "--queues",
        "-Q",
        help="Comma-separated queues to consume (default: TASK_QUEUE, i.e. cpu; a GPU worker: "
        "gpu,cpu).",
    ),
    concurrency: int = typer.Option(
        1,
        "--concurrency",
        "-c",
        min=1,
        help="Tasks run at once.",
    ),
    pool: str = typer.Option(
        "prefork",
        "--pool",
        "-P",
        help="prefork (hard time limits) or solo (one process, for GPUs that must not fork).",
    ),
    loglevel: str = typer.Option("info", "--loglevel", "-l", help="debug, info, warning, error."),
    stop_with_parent: int | None = typer.Option(
        None,
        "--stop-with-parent",
        hidden=True,
        help="Stop at once, handing the running task back, when process PID ends, even if it"
        " was killed (Linux; `amseg up`).",
    ),
) -> None:
    """Process queued tasks (settings from the environment; see docs/service.md).

    DATABASE_URL, REDIS_URL, S3_BUCKET and the others must match the API's. Stop with Ctrl-C:
    the running task is finished, or handed back to the queue.
    """
    from store.queue import ensure_broker_dirs
    from store.settings import SettingsError, load_settings

    try:  # before anything reads them with a traceback
        settings = load_settings()
    except SettingsError as error:
        typer.echo(f"amseg worker: {error}", err=True)
        raise typer.Exit(2) from None
    if stop_with_parent is not None:
        _stop_with_parent(stop_with_parent)
    from worker.tasks import app as celery_app

    ensure_broker_dirs(settings)
    argv = [
        "worker",
        f"--queues={queues or settings.task_queue}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--loglevel={loglevel.upper()}",
        "--without-gossip",
        "--without-mingle",
    ]
    if not settings.redis_url:  # the filesystem broker has no broadcast for heartbeats
        argv.append("--without-heartbeat")
    celery_app.worker_main(argv)


def _stop_with_parent(parent_pid: int) -> None:
    """Have the kernel signal this process when the parent dies, so that a supervisor killed
    outright (SIGKILL, OOM) leaves no worker behind: the running task stops at once and goes
    back to the queue, its attempt not counted (`worker.main_process.leave_now`)."""
    if not sys.platform.startswith("linux"):
        return
    from store.settings import get_settings
    from worker.main_process import leave_now

    def on_parent_death(signum: int, frame: object) -> None:
        # From a thread: the main thread may hold locks (logging's, the database's) that work
        # done inside a signal handler would wait on forever.
        leave = threading.Thread(target=leave_now, args=(get_settings(),), daemon=True)
        leave.start()

    signal.signal(PARENT_DEATH_SIGNAL, on_parent_death)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL, 0, 0, 0) != 0:  # a sandbox may refuse
        reason = os.strerror(ctypes.get_errno())
        typer.echo(f"amseg worker: cannot follow its parent's exit ({reason})", err=True)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        raise typer.Exit(0)
