"""`amseg up`: the embedded service (SQLite, local files, file queue) from one command, and
how it stops: every process it started gone, the running task finished or handed back."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import httpx
import numpy as np
import pytest

from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from tests.conftest import free_port
from tests.service_stack import png_bytes, read_png

AMSEG = Path(sys.executable).with_name("amseg")
# The bound for "a stop signal ends everything `amseg up` started".
STOP_BOUND_S = 10.0
pytestmark = pytest.mark.slow


def test_amseg_up_turns_an_upload_into_a_mask_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # ignored: `up` is always embedded
    server = subprocess.Popen(
        [AMSEG, "up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                if httpx.get(f"{base}/health").json()["status"] == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)

        spec = fit_grid_inside(random_spec(3, height=512, width=512, rows=6, cols=6, mark_size=24))
        slide = generate_slide(spec, 3)
        created = httpx.post(
            f"{base}/tasks",
            params={"rows": 6, "cols": 6},
            files={"file": ("slide.png", png_bytes(slide.image), "image/png")},
        )
        assert created.status_code == 201, created.text
        task_url = f"{base}{created.headers['location']}"
        deadline = time.monotonic() + 120
        while (state := httpx.get(task_url).json())["status"] not in ("FINISHED", "FAILED"):
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state["status"] == "FINISHED", state
        mask = read_png(httpx.get(f"{base}{state['links']['mask']}").content)
        assert mask.shape == slide.mask.shape and mask.any()
        labels = read_png(httpx.get(f"{base}{state['links']['labels']}").content)
        assert labels.dtype == np.uint16 and labels.max() <= 36
        worker_pids = children(server.pid)
        assert worker_pids, "amseg up runs no worker process"
        status, content_type, body = raw_post(port, b"Content-Length: -5")
        assert (status, content_type) == (400, "application/problem+json"), body
        assert "Content-Length" in json.loads(body)["detail"]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
    assert server.returncode in (0, 130)  # 130: the shell's code for "stopped by Ctrl-C"
    assert (tmp_path / "data" / "amseg.sqlite3").is_file()
    for pid in worker_pids:  # the worker went down with it
        assert not Path(f"/proc/{pid}").exists()


def raw_post(port: int, header: bytes) -> tuple[int, str, bytes]:
    """Status, content type and body of a POST /tasks with a header that uvicorn cannot parse
    (httpx would refuse to send it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"POST /tasks HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers.get("content-type", ""), body


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(child) for child in found.stdout.split()]


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda sig: sig.name
)
def test_a_stop_signal_ends_every_process_and_keeps_the_running_task(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    data_dir = tmp_path / "data"
    with running_up(data_dir) as (server, client):
        task_id = submit_slow_task(client)
        wait_for(client, task_id, lambda state: state["status"] == "RUNNING")
        tree = process_tree(server.pid)
        assert len(tree) >= 3, "expected amseg up, its worker and the worker's pool child"

        server.send_signal(stop_signal)
        deadline = time.monotonic() + STOP_BOUND_S
        while alive := [pid for pid in tree if is_running(pid)]:
            assert time.monotonic() < deadline, f"still running after {STOP_BOUND_S} s: {alive}"
            time.sleep(0.05)
        assert server.wait(timeout=5) == 128 + stop_signal

    # Finished in time, or back in the queue without its interrupted attempt counted.
    status, attempts = stored_state(data_dir, task_id)
    assert (status, attempts) in {("FINISHED", 1), ("QUEUED", 0)}
    with running_up(data_dir) as (_, client):
        state = wait_for(client, task_id, lambda state: state["status"] in ("FINISHED", "FAILED"))
    assert state["status"] == "FINISHED", state
    assert state["attempts"] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_amseg_up_leaves_no_worker_behind(tmp_path: Path) -> None:
    with running_up(tmp_path / "data") as (server, _):
        deadline = time.monotonic() + 90
        while len(tree := process_tree(server.pid)) < 3:  # the worker's pool child is up
            assert time.monotonic() < deadline, "the worker never started its pool child"
            time.sleep(0.2)

        server.kill()
        deadline = time.monotonic() + STOP_BOUND_S
        while alive := [pid for pid in tree if is_running(pid)]:
            assert time.monotonic() < deadline, f"left behind: {alive}"
            time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_amseg_up_stops_its_running_task_and_hands_it_back(tmp_path: Path) -> None:
    """kill -9 leaves nobody to stop the worker in order: the kernel's parent-death signal
    makes it kill its pool child and hand the task back, its attempt not counted."""
    data_dir = tmp_path / "data"
    with running_up(data_dir) as (server, client):
        task_id = submit_slow_task(client)
        wait_for(client, task_id, lambda state: state["status"] == "RUNNING")
        tree = process_tree(server.pid)
        assert len(tree) >= 3, "expected amseg up, its worker and the worker's pool child"

        server.kill()
        deadline = time.monotonic() + STOP_BOUND_S
        while alive := [pid for pid in tree if is_running(pid)]:
            assert time.monotonic() < deadline, f"left behind: {alive}"
            time.sleep(0.05)
    assert stored_state(data_dir, task_id) == ("QUEUED", 0)

    with running_up(data_dir) as (_, client):
        state = wait_for(client, task_id, lambda state: state["status"] in ("FINISHED", "FAILED"))
    assert (state["status"], state["attempts"]) == ("FINISHED", 1), state


def test_a_second_amseg_up_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    """Two workers on one file queue and one database would run side by side."""
    data_dir = tmp_path / "data"
    with running_up(data_dir):
        second = subprocess.run(
            [AMSEG, "up", "--port", str(free_port()), "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert second.returncode == 1
    assert "in use by another `amseg up`" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda sig: sig.name
)
def test_no_task_starts_after_a_stop_signal(tmp_path: Path, stop_signal: signal.Signals) -> None:
    """Short tasks one after another: the one running when the signal comes may finish in
    the grace period, but the worker must not take the next one."""
    data_dir = tmp_path / "data"
    with running_up(data_dir) as (server, client):
        task_ids = [submit_small_task(client, seed) for seed in range(6)]
        wait_for(client, task_ids[1], lambda state: state["status"] != "QUEUED")
        signalled_at = datetime.now(UTC)
        server.send_signal(stop_signal)
        assert server.wait(timeout=STOP_BOUND_S + 5) == 128 + stop_signal

    starts = {task_id: stored_start(data_dir, task_id) for task_id in task_ids}
    late = {task_id: at for task_id, at in starts.items() if at is not None and at > signalled_at}
    assert not late, f"started after the signal at {signalled_at}: {late}"
    never_started = [task_id for task_id, at in starts.items() if at is None]
    assert len(never_started) >= 3  # the test means something only with tasks left
    for task_id in never_started:
        assert stored_state(data_dir, task_id) == ("QUEUED", 0)


def submit_small_task(client: httpx.Client, seed: int) -> str:
    """A 512² slide: about a second of work."""
    noise = np.random.default_rng(seed).integers(0, 256, (512, 512), dtype=np.uint8)
    created = client.post("/tasks", content=png_bytes(noise), headers={"Content-Type": "image/png"})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def stored_start(data_dir: Path, task_id: str) -> datetime | None:
    """When the task was last claimed, read from the database file while nothing runs."""
    with sqlite3.connect(data_dir / "amseg.sqlite3") as database:
        (started,) = database.execute(
            "SELECT started_at FROM tasks WHERE id = ?", (UUID(task_id).hex,)
        ).fetchone()
    return None if started is None else datetime.fromisoformat(started).replace(tzinfo=UTC)


@contextmanager
def running_up(
    data_dir: Path, host: str = "127.0.0.1", capture: bool = False, **settings: str
) -> Iterator[tuple[subprocess.Popen, httpx.Client]]:
    """`amseg up` on a free port of `host` (with `settings` in its environment), healthy;
    stopped (or killed) on the way out if still up. With `capture` its output is in
    `server.stdout` (read it once it stopped)."""
    port = free_port()
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    server = subprocess.Popen(
        [AMSEG, "up", "--host", host, "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, **settings},
        stdout=output,
        stderr=subprocess.STDOUT if capture else subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, "amseg up exited"
                try:
                    if client.get("/health").json()["status"] == "ok":
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "amseg up did not become healthy"
                time.sleep(0.2)
            yield server, client
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=40)
            except subprocess.TimeoutExpired:
                server.kill()
        for worker in workers_of(server.pid):  # whatever happened, leave no worker running
            os.killpg(worker, signal.SIGKILL)  # with its pool child: it leads its own group


def submit_slow_task(client: httpx.Client) -> str:
    """A full-resolution slide with no grid: long enough to be running when the signal comes."""
    noise = np.random.default_rng(5).integers(0, 256, (4096, 4096), dtype=np.uint8)
    created = client.post("/tasks", content=png_bytes(noise), headers={"Content-Type": "image/png"})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def wait_for(client: httpx.Client, task_id: str, condition, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while not condition(state := client.get(f"/tasks/{task_id}").json()):
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    return state


def stored_state(data_dir: Path, task_id: str) -> tuple[str, int]:
    """The task's status and attempts, read from the database file while nothing runs."""
    with sqlite3.connect(data_dir / "amseg.sqlite3") as database:
        row = database.execute(
            "SELECT status, attempts FROM tasks WHERE id = ?", (UUID(task_id).hex,)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    tree = [pid]
    for process in tree:
        tree += children(process)
    return tree


def workers_of(server_pid: int) -> list[int]:
    """The running workers that `amseg up` (pid `server_pid`) started, found by their command
    line even after it died."""
    marker = f"\0--stop-with-parent\0{server_pid}\0".encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes() and is_running(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
        except OSError:  # it exited meanwhile
            continue
    return found


def is_running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (dead, waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
