"""How `amseg up` (embedded: SQLite, files, file queue) stops and recovers, timed.

    .venv/bin/python benchmarks/up_lifecycle.py [--reps 5] [--side 4096]
        [--cases stop-TERM,stop-INT,stop-HUP,stop-KILL,pool-child,worker]

stop-SIG    a fresh `amseg up` with a task RUNNING (a noise slide of `side`² pixels, at 5 % or
            more) gets SIG; the time until `amseg up`, its worker and the pool child are all
            gone (no process, or a zombie), and the task's state then (FINISHED, or QUEUED:
            handed back). stop-KILL: `amseg up` killed outright; its worker hears of it from
            the kernel (parent-death signal), kills its pool child and hands the task back.
pool-child  SIGKILL to the worker's pool child mid-task; the time until the task RUNS again
            (a new attempt). All repetitions on one `amseg up` and one task.
worker      the same with SIGKILL to the worker's main process (the supervisor restarts it).
The default stale period and sweep interval (10 s, 3 s) apply. TASK_MAX_ATTEMPTS is raised so
that one task survives all the kills.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.service_stack import png_bytes  # noqa: E402

AMSEG = Path(sys.executable).with_name("amseg")
POLL_S = 0.05
GIVE_UP_S = 300


class Up:
    """One `amseg up` on a free port, healthy."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        port = free_port()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        command = [AMSEG, "up", "--port", str(port), "--data-dir", str(data_dir)]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.client.get("/health").json()["status"] == "ok":
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("amseg up did not become healthy")
            time.sleep(0.2)

    def submit(self, side: int) -> str:
        noise = np.random.default_rng(side).integers(0, 256, (side, side), dtype=np.uint8)
        response = self.client.post(
            "/tasks", content=png_bytes(noise), headers={"Content-Type": "image/png"}
        )
        response.raise_for_status()
        return response.json()["id"]

    def wait(self, task_id: str, condition) -> dict:
        deadline = time.monotonic() + GIVE_UP_S
        while not condition(state := self.client.get(f"/tasks/{task_id}").json()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"gave up waiting: {state}")
            time.sleep(POLL_S)
        return state

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.client.close()


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in found.stdout.split()]


def process_tree(pid: int) -> list[int]:
    tree = [pid]
    for process in tree:
        tree += children(process)
    return tree


def is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def running_again(attempts: int):
    return lambda state: state["status"] == "RUNNING" and state["attempts"] > attempts


def time_stop(sig: signal.Signals, side: int, env: dict[str, str]) -> tuple[float, str]:
    """Seconds from `sig` to every process gone, and the task's status afterwards."""
    with tempfile.TemporaryDirectory() as directory:
        up = Up(Path(directory), env)
        task_id = up.submit(side)
        up.wait(task_id, lambda state: state["status"] == "RUNNING" and state["progress"] >= 0.05)
        tree = process_tree(up.process.pid)
        signalled = time.monotonic()
        up.process.send_signal(sig)
        while any(is_running(pid) for pid in tree):
            if time.monotonic() - signalled > GIVE_UP_S:
                raise RuntimeError(f"still running: {[p for p in tree if is_running(p)]}")
            time.sleep(POLL_S / 5)
        gone_s = time.monotonic() - signalled
        up.process.wait()
        with sqlite3.connect(Path(directory) / "amseg.sqlite3") as database:
            (status,) = database.execute(
                "SELECT status FROM tasks WHERE id = ?", (UUID(task_id).hex,)
            ).fetchone()
        up.client.close()
        return gone_s, status


def time_reruns(victim: str, reps: int, side: int, env: dict[str, str]) -> list[float]:
    """Seconds from each SIGKILL of the `victim` ("pool-child" or "worker") to the next run."""
    times = []
    with tempfile.TemporaryDirectory() as directory:
        up = Up(Path(directory), env)
        try:
            task_id = up.submit(side)
            for _ in range(reps):
                state = up.wait(
                    task_id, lambda s: s["status"] == "RUNNING" and s["progress"] >= 0.05
                )
                (worker,) = children(up.process.pid)
                target = children(worker) if victim == "pool-child" else [worker]
                killed = time.monotonic()
                for pid in target:
                    os.kill(pid, signal.SIGKILL)
                up.wait(task_id, running_again(state["attempts"]))
                times.append(time.monotonic() - killed)
        finally:
            up.close()
    return times


def summary(name: str, times: list[float], extra: str = "") -> str:
    listed = ", ".join(f"{t:.1f}" for t in times)
    return (
        f"{name:11s} median {statistics.median(times):5.1f} s  max {max(times):5.1f} s"
        f"  ({listed}){extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--side", type=int, default=4096, help="noise slide side, px")
    parser.add_argument(
        "--cases", default="stop-TERM,stop-INT,stop-HUP,stop-KILL,pool-child,worker"
    )
    args = parser.parse_args()
    env = dict(os.environ, TASK_MAX_ATTEMPTS=str(args.reps + 2))
    for case in args.cases.split(","):
        if case.startswith("stop-"):
            sig = signal.Signals[f"SIG{case.removeprefix('stop-')}"]
            runs = [time_stop(sig, args.side, env) for _ in range(args.reps)]
            states = ", ".join(sorted({status for _, status in runs}))
            print(summary(case, [t for t, _ in runs], f"; task then {states}"), flush=True)
        else:
            print(summary(case, time_reruns(case, args.reps, args.side, env)), flush=True)


if __name__ == "__main__":
    main()
