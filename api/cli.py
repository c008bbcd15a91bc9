"""`amseg serve` (the API alone) and `amseg up` (API + worker, embedded, nothing to install)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    import uvicorn

    from store.settings import Settings

# A worker that dies is restarted, but not faster than this (a crash loop must not spin).
RESTART_DELAY_S = 2.0
# `amseg up` stops on Ctrl-C, `kill` and its terminal closing. Open requests and the worker's
# running task get these (at the same time) to finish; then the worker is killed with its pool
# child and its task handed back to the queue, so that everything is gone well within 10 s.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
API_STOP_GRACE_S = 5.0
WORKER_STOP_GRACE_S = 5.0


def register(app: typer.Typer) -> None:
    """Attach the service commands to the amseg command line (entry point amseg.commands)."""
    app.command("serve")(serve)
    app.command("up")(up)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: all)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", min=1, help="API processes."),
    log_level: str = typer.Option(
        "info", "--log-level", help="critical, error, warning, info, debug or trace."
    ),
) -> None:
    """Serve the HTTP API (settings from the environment; see docs/service.md).

    Workers run separately (`amseg worker`). The API migrates the database when it starts
    unless MIGRATE_ON_START=false (then run `alembic upgrade head` once yourself).
    """
    import uvicorn

    from api.exposure import is_ip_address, load_settings_or_exit, require_key_when_exposed
    from api.http_protocol import PROBLEM_HTTP_PROTOCOL

    settings = load_settings_or_exit("serve")
    require_key_when_exposed("serve", settings, host)
    if not is_ip_address(host):  # the name it listens on is one it answers to
        os.environ["ALLOWED_HOSTS"] = ",".join([*settings.allowed_hosts, host])
    uvicorn.run(
        "api.app:app",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
        http=PROBLEM_HTTP_PROTOCOL,  # unparsable requests get problem+json too
    )


def up(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    data_dir: Path = typer.Option(
        Path("amseg-data"), "--data-dir", help="Database, uploads, results and queue live here."
    ),
) -> None:
    """Run the service here: API + one worker, nothing to install.

    SQLite, files and a file-based queue live under --data-dir; no Docker, Redis or Postgres.
    Then upload an image: curl -F file=@slide.png 'http://127.0.0.1:8000/tasks?rows=30&cols=30'
    Ctrl-C, SIGTERM or SIGHUP stop both within 10 s; a task still running is handed back to the
    queue and runs at the next start.
    """
    import uvicorn

    from api.app import create_app
    from api.data_dir import DataDirBusy, lock_data_dir
    from api.exposure import load_settings_or_exit
    from api.http_protocol import PROBLEM_HTTP_PROTOCOL
    from model.cli.console import console

    data_dir = data_dir.resolve()
    env = dict(os.environ, EMBEDDED="1", DATA_DIR=str(data_dir))
    settings = load_settings_or_exit("up", embedded=True, data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)  # 0700 under the default DATA_UMASK
    try:
        lock = lock_data_dir(data_dir)
    except DataDirBusy as error:
        typer.echo(f"amseg up: {error}", err=True)
        raise typer.Exit(1) from None
    settings = _exposed_safely(settings, host, data_dir)
    _recover_previous_run(settings)
    app = create_app(settings, migrate=False)  # migrated just now

    supervisor = _WorkerSupervisor(env, settings, lock)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=API_STOP_GRACE_S,
        http=PROBLEM_HTTP_PROTOCOL,  # unparsable requests get problem+json too
    )
    server = uvicorn.Server(config)
    received = _stop_together_on_signals(server, supervisor)
    url = f"http://{host}:{port}"
    console.print(f"amseg: data in {data_dir}; API on {url} (docs: {url}/docs); Ctrl-C stops")
    console.print(f"  open {url}/ in a browser: upload slides, look at results, correct them")
    console.print(
        f"  try: curl -F file=@image.png '{url}/tasks?rows=30&cols=30'   then GET the task's links"
    )
    supervisor.start()
    try:
        server.run()
    finally:
        supervisor.stop()
    if received:
        raise typer.Exit(128 + received[0])  # the shell's code for "stopped by that signal"


def _exposed_safely(settings: Settings, host: str, data_dir: Path) -> Settings:
    """The settings with a key when other machines can reach the API (made and printed the
    first time, kept in DATA_DIR/api-key), and the name it listens on among its hosts."""
    from api.exposure import is_ip_address, key_for_up, reachable_from

    update: dict[str, list[str]] = {}
    address = reachable_from(settings, host)
    if address is not None and not settings.api_keys:
        key, created = key_for_up(data_dir)
        update["api_keys"] = [key]
        where = data_dir / "api-key"
        if created:
            print(
                f"amseg: reachable from other machines ({address}): every request needs the"
                f" header X-API-Key: {key}\n  (shown this once; kept in {where})",
                flush=True,
            )
        else:
            print(
                f"amseg: reachable from other machines ({address}): the API key is in {where}",
                flush=True,
            )
    if not is_ip_address(host):
        update["allowed_hosts"] = [*settings.allowed_hosts, host]
    return settings.model_copy(update=update)


def _recover_previous_run(settings: Settings) -> None:
    """Migrate, then hand back what a run that did not stop in order left behind."""
    from api.data_dir import recover_previous_run
    from store.database import upgrade_database
    from store.queue import ensure_broker_dirs

    upgrade_database(settings.database_url)
    ensure_broker_dirs(settings)
    handed_back, sent = recover_previous_run(settings)
    for task_id in handed_back:
        print(f"amseg: task {task_id} was left running; handed back to the queue", file=sys.stderr)
    if sent:
        print(f"amseg: {len(sent)} queued task(s) sent to the worker again", file=sys.stderr)


def _stop_together_on_signals(server: uvicorn.Server, supervisor: _WorkerSupervisor) -> list[int]:
    """Make each stop signal shut down the API and the worker at once; returns the signals
    received (filled in later).

    uvicorn catches SIGINT and SIGTERM while it serves and raises them again once it has shut
    down, when the default action would kill this process before the worker is stopped; our
    handlers catch that too, and SIGHUP, which uvicorn leaves alone.
    """
    received: list[int] = []
    stop_api = server.handle_exit

    def stop(sig: int, frame: FrameType | None) -> None:
        received.append(sig)
        supervisor.begin_stop()
        stop_api(sig, frame)

    server.handle_exit = stop  # what uvicorn installs for SIGINT and SIGTERM while it serves
    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    return received


class _WorkerSupervisor:
    """Keeps one `python -m worker` child alive until stopped, and stops it in time."""

    def __init__(self, env: dict[str, str], settings: Settings, lock: int) -> None:
        self.env = env
        self.settings = settings
        self.lock_fd = lock  # the data dir's lock, held by the worker too (api.data_dir)
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.stop_deadline = 0.0
        # Re-entrant: begin_stop also runs in signal handlers, on the thread that may hold it.
        self.lock = threading.RLock()
        self.thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _spawn(self) -> subprocess.Popen:
        command = [sys.executable, "-m", "worker", "--concurrency", "1", "--loglevel", "info"]
        command += ["--stop-with-parent", str(os.getpid())]  # even if this process is killed
        # Its own process group: a kill reaches its pool child too, and Ctrl-C in a terminal
        # reaches only this process, which then stops the worker in order.
        return subprocess.Popen(command, env=self.env, process_group=0, pass_fds=(self.lock_fd,))

    def _run(self) -> None:
        while True:
            with self.lock:
                if self.stopping.is_set():
                    return
                process = self.process = self._spawn()
            code = process.wait()  # only this thread reaps it, so its group stays its own
            if self.stopping.is_set():
                return
            # A pool child outlives a killed worker and would finish its task a second time.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            self._hand_back(process.pid, count_attempt=True)
            print(
                f"amseg: the worker exited with code {code}; restarting it",
                file=sys.stderr,
                flush=True,
            )
            self.stopping.wait(RESTART_DELAY_S)

    def begin_stop(self) -> None:
        """Ask the worker to finish its task and exit (Celery's warm shutdown); returns at once."""
        with self.lock:
            if self.stopping.is_set():
                return
            self.stopping.set()
            self.stop_deadline = time.monotonic() + WORKER_STOP_GRACE_S
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Stop the worker: it finishes its task within WORKER_STOP_GRACE_S, or it is killed
        with its pool child and the task goes back to the queue."""
        self.begin_stop()
        if self.thread.ident is None:  # never started
            return
        self.thread.join(timeout=max(self.stop_deadline - time.monotonic(), 0.0))
        process = self.process
        if process is None:
            return
        if self.thread.is_alive():  # the worker is not reaped yet: its group is still its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            self.thread.join()
        self._hand_back(process.pid, count_attempt=False)

    def _hand_back(self, worker_pid: int, *, count_attempt: bool) -> None:
        """Put the tasks the ended worker was running back in the queue, and send their
        messages again, first: the file queue lost the ones its worker had taken."""
        from store.database import create_db_engine, create_session_factory
        from store.queue import resend_first
        from store.tasks import release_worker_claims

        settings = self.settings
        try:
            engine = create_db_engine(settings.database_url)
            try:
                with create_session_factory(engine)() as session:
                    task_ids = release_worker_claims(
                        session,
                        worker_pid=worker_pid,
                        max_attempts=settings.task_max_attempts,
                        count_attempt=count_attempt,
                    )
            finally:
                engine.dispose()
            resend_first(settings, task_ids)
        except Exception as error:  # the sweep hands them back once their heartbeat is stale
            print(f"amseg: could not hand the worker's task back: {error}", file=sys.stderr)
            return
        for task_id in task_ids:
            print(f"amseg: task {task_id} handed back to the queue", file=sys.stderr, flush=True)
