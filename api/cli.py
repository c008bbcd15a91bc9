"""`amseg serve` (the API alone) and `amseg up` (API + worker, embedded, nothing to install)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import typer

# A worker that dies is restarted, but not faster than this (a crash loop must not spin).
RESTART_DELAY_S = 2.0
STOP_GRACE_S = 20.0


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

    uvicorn.run(
        "api.app:app",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
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
    """
    import uvicorn

    from api.app import create_app
    from model.cli.console import console
    from store.settings import Settings

    data_dir = data_dir.resolve()
    env = dict(os.environ, EMBEDDED="1", DATA_DIR=str(data_dir))
    settings = Settings(embedded=True, data_dir=data_dir)
    app = create_app(settings)  # migrates the SQLite database on start

    supervisor = _WorkerSupervisor(env)
    config = uvicorn.Config(app, host=host, port=port, log_level="info")
    server = uvicorn.Server(config)
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


class _WorkerSupervisor:
    """Keeps one `python -m worker` child alive until stopped."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _spawn(self) -> subprocess.Popen:
        command = [sys.executable, "-m", "worker", "--concurrency", "1", "--loglevel", "info"]
        return subprocess.Popen(command, env=self.env)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.process = self._spawn()
            code = self.process.wait()
            if self.stopping.is_set():
                return
            print(
                f"amseg: the worker exited with code {code}; restarting it",
                file=sys.stderr,
                flush=True,
            )
            self.stopping.wait(RESTART_DELAY_S)

    def stop(self) -> None:
        self.stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return
        # SIGTERM = Celery's warm shutdown: the running task finishes or goes back.
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
            process.wait()
