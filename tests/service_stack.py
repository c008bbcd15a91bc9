"""The real service for tests: uvicorn serving the API and Celery worker processes, on a fresh
Postgres database, a fresh S3 bucket (moto over HTTP) and a Redis of the tests' own."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import numpy as np
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from store.blobs import BlobStore, LocalBlobStore, S3BlobStore
from store.database import create_db_engine, create_session_factory
from tests.conftest import free_port

TERMINAL = {"FINISHED", "FAILED"}
# After a fault (a killed worker, a restarted database or API) the affected tasks must run
# again, or be over, within this many seconds: several times what recovery takes here (the
# stale period, the sweep, a fresh worker), so it bounds recovery without being a timing test.
RECOVERY_BOUND_S = 60


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """SIGKILL the worker and its pool children (the whole process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class ServiceStack:
    env: dict[str, str]
    directory: Path
    base_url: str = ""
    api: subprocess.Popen | None = None
    workers: list[Worker] = field(default_factory=list)

    def start_api(self, port: int | None = None) -> None:
        """Start uvicorn on `port` (a restart passes the old one) or a free port."""
        port = port or free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        log = (self.directory / "api.log").open("ab")
        command = [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1"]
        self.api = subprocess.Popen(
            [*command, "--port", str(port), "--log-level", "warning"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited: {(self.directory / 'api.log').read_text()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the API did not become healthy in 60 s")

    def start_worker(self, *, wait_ready: bool = True) -> Worker:
        log = self.directory / f"worker-{len(self.workers)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "--concurrency", "1", "--loglevel", "info"],
            env=self.env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so kill() reaches the pool children too
        )
        worker = Worker(process, log)
        self.workers.append(worker)
        if wait_ready:
            deadline = time.monotonic() + 90
            while "ready." not in worker.log_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker did not start:\n{worker.log_text()}")
                time.sleep(0.2)
        return worker

    @property
    def api_port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def stop_api(self) -> None:
        """SIGTERM uvicorn (it finishes the requests in flight) and wait for it to exit."""
        if self.api is not None and self.api.poll() is None:
            os.killpg(self.api.pid, signal.SIGTERM)
            self.api.wait(timeout=20)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.stop_api()

    def s3_keys(self, prefix: str = "tasks/") -> list[str]:
        """The keys in this stack's bucket under `prefix`, read straight from S3."""
        s3 = boto3.client(
            "s3",
            endpoint_url=self.env["S3_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.env["S3_BUCKET"], Prefix=prefix
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60, **kwargs)

    def blobs(self) -> BlobStore:
        """This stack's blob store, as the API and the workers see it: its S3 bucket, or with
        S3_BUCKET="" the local folder in DATA_DIR."""
        if not self.env.get("S3_BUCKET"):
            return LocalBlobStore(Path(self.env["DATA_DIR"]) / "blobs")
        return S3BlobStore(
            self.env["S3_BUCKET"],
            endpoint_url=self.env["S3_ENDPOINT_URL"],
            access_key_id="testing",
            secret_access_key="testing",
        )

    def sessions(self) -> sessionmaker[Session]:
        """Sessions on this stack's task table (for tests that set up a state by hand)."""
        return create_session_factory(create_db_engine(self.env["DATABASE_URL"]))

    def wait_until_over(
        self, client: httpx.Client, task_id: str, timeout: float = 120, resource: str = "tasks"
    ) -> dict:
        """Poll until the task (or model) is FINISHED or FAILED; returns its last state."""
        deadline = time.monotonic() + timeout
        while True:
            state = client.get(f"/{resource}/{task_id}").json()
            if state["status"] in TERMINAL:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still {state['status']}: {state}")
            time.sleep(0.2)

    def wait_until_attempt(
        self, client: httpx.Client, task_id: str, attempt: int, timeout: float = 120
    ) -> dict:
        """Poll until the task runs (or ran) its `attempt`-th time; returns that state."""
        deadline = time.monotonic() + timeout
        while True:
            state = client.get(f"/tasks/{task_id}").json()
            if state["attempts"] >= attempt and state["status"] != "QUEUED":
                return state
            if state["status"] in TERMINAL or time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} never got to attempt {attempt}: {state}")
            time.sleep(0.2)


def stack_environment(
    directory: Path,
    *,
    database_url: str,
    redis_url: str,
    s3_endpoint_url: str,
    **overrides: str,
) -> dict[str, str]:
    """Environment for API and workers: a unique bucket and queue, short stale periods."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "S3_")) and key not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        DATA_DIR=str(directory / "data"),
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        S3_BUCKET=f"amseg-test-{uuid.uuid4().hex[:10]}",
        S3_ENDPOINT_URL=s3_endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        # Each stack consumes its own queue, so stacks never take each other's messages.
        TASK_QUEUE=f"test-{uuid.uuid4().hex[:8]}",
        TASK_STALE_AFTER_S="4",
        SWEEP_INTERVAL_S="0.5",
        TASK_MAX_ATTEMPTS="3",
        OMP_WAIT_POLICY="PASSIVE",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def read_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))
