"""Recovery times after faults, on the stack the tests use: uvicorn with the API, a Celery
worker, a private Postgres cluster, a redis-server of its own and moto's S3 over HTTP.

    .venv/bin/python benchmarks/recovery_times.py [--reps 5] [--side 2048] [--queue 10]
        [--faults none,postgres,api,worker,pool-child] [--stale-after 4] [--sweep-interval 0.5]

Each repetition uploads a noise slide of `side`² pixels and `queue` small slides (256²) behind
it; once the first is RUNNING at 10 % or more it applies the fault (t = 0), then polls
GET /tasks/{id} every 0.1 s and records when
  - the API answers 200 again,
  - the task is seen making progress again (RUNNING with more attempts or more progress than at
    the fault: re-run or carrying on) or FINISHED,
  - the task is FINISHED,
  - the queue behind it is drained (its last task FINISHED),
how many queued tasks started before the interrupted one ran again (0: it kept its place), the
most messages Redis held for the queue meanwhile, and checks that every task finished exactly
once (one "finished" line in the worker logs).
Faults:
  none        nothing (the reference: the rest of an undisturbed run)
  postgres    pg_ctl stop -m fast, down for --outage s, pg_ctl start
  api         SIGTERM to uvicorn, started again at once on the same port
  worker      SIGKILL to the worker's process group, a new worker started at once
  pool-child  SIGKILL to the worker's pool child; the worker itself lives on
The stale period and sweep interval are the tests' (4 s, 0.5 s) unless given; with the service's
defaults (TASK_STALE_AFTER_S=10, SWEEP_INTERVAL_S=3) a dead worker's task waits up to ~13 s.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store.database import upgrade_database  # noqa: E402
from store.queue import waiting_task_ids  # noqa: E402
from store.settings import Settings  # noqa: E402
from tests.conftest import PostgresCluster, RedisServer, postgres_bin_dir  # noqa: E402
from tests.service_stack import ServiceStack, png_bytes, stack_environment  # noqa: E402

FAULTS = ("none", "postgres", "api", "worker", "pool-child")
POLL_S = 0.1
GIVE_UP_S = 300


@dataclass
class Recovery:
    back_s: float | None  # the faulted component is back (None: nothing to bring back)
    api_s: float | None
    progressing_s: float | None
    finished_s: float | None
    finished_once: bool
    drained_s: float | None = None  # the last queued task FINISHED
    overtaken: int = 0  # queued tasks that started before the interrupted one ran again
    most_messages: int = 0  # messages waiting in Redis for this stack's queue, at most


def live_worker(stack: ServiceStack):
    return next(w for w in stack.workers if w.process.poll() is None)


@dataclass
class Fault:
    """`apply` breaks something (t = 0 just before it); `restore`, run while the task is
    watched, brings it back and returns when that was done (s after t = 0), or None."""

    apply: Callable[[], None]
    restore: Callable[[float], float | None] = lambda t0: None


def make_fault(name: str, stack: ServiceStack, cluster: PostgresCluster, outage_s: float):
    def pool_child() -> None:
        parent = live_worker(stack).process.pid
        found = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
        subprocess.run(["kill", "-9", *found.stdout.split()], check=True)

    def back_after(restart: Callable[[], None], wait_s: float = 0.0):
        def restore(t0: float) -> float:
            time.sleep(max(t0 + wait_s - time.monotonic(), 0.0))
            restart()
            return time.monotonic() - t0

        return restore

    port = stack.api_port
    faults = {
        "none": Fault(lambda: None),
        "postgres": Fault(lambda: cluster.stop("fast"), back_after(cluster.start, outage_s)),
        "api": Fault(stack.stop_api, back_after(lambda: stack.start_api(port=port))),
        "worker": Fault(lambda: live_worker(stack).kill(), back_after(stack.start_worker)),
        "pool-child": Fault(pool_child),
    }
    return faults[name]


def wait_running(client: httpx.Client, task_id: str, progress: float) -> dict:
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        state = client.get(f"/tasks/{task_id}").json()
        if state["status"] == "RUNNING" and state["progress"] >= progress:
            return state
        if state["status"] not in ("QUEUED", "RUNNING"):
            raise RuntimeError(f"task {task_id} ended before the fault: {state}")
        time.sleep(POLL_S / 2)
    raise RuntimeError(f"task {task_id} did not get to {progress:.0%}")


def poll_recovery(
    stack: ServiceStack, task_id: str, at_fault: dict, t0: float, messages: Callable[[], int]
) -> tuple[dict, int]:
    """Times (s after t0) of the first 200, the first sign of progress, and FINISHED; and the
    most messages waiting in the queue meanwhile."""
    seen: dict[str, float] = {}
    most = 0
    deadline = t0 + GIVE_UP_S
    with httpx.Client(base_url=stack.base_url, timeout=5) as client:
        while "finished" not in seen and time.monotonic() < deadline:
            most = max(most, messages())
            try:
                response = client.get(f"/tasks/{task_id}")
            except httpx.TransportError:
                response = None
            now = time.monotonic() - t0
            if response is None or response.status_code != 200:
                seen.pop("api", None)  # "answers again" is the first 200 after the last failure
            else:
                state = response.json()
                seen.setdefault("api", now)
                if state["status"] == "FINISHED" or (
                    state["status"] == "RUNNING"
                    and (
                        state["attempts"] > at_fault["attempts"]
                        or state["progress"] > at_fault["progress"]
                    )
                ):
                    seen.setdefault("progressing", now)
                if state["status"] in ("FINISHED", "FAILED"):
                    seen["finished" if state["status"] == "FINISHED" else "failed"] = now
                    break
            time.sleep(POLL_S)
    return seen, most


def wait_over(client: httpx.Client, task_ids: list[str]) -> list[dict]:
    deadline = time.monotonic() + GIVE_UP_S
    states = []
    for task_id in task_ids:
        while (state := client.get(f"/tasks/{task_id}").json())["status"] not in (
            "FINISHED",
            "FAILED",
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"queued task {task_id} never ended: {state}")
            time.sleep(POLL_S)
        states.append(state)
    return states


def one_run(
    stack: ServiceStack, fault: Fault, image: bytes, queued_image: bytes, queue: int
) -> Recovery:
    png = {"Content-Type": "image/png"}
    with stack.client() as client:
        task_id = client.post("/tasks", content=image, headers=png).json()["id"]
        behind = [
            client.post("/tasks", content=queued_image, headers=png).json()["id"]
            for _ in range(queue)
        ]
        at_fault = wait_running(client, task_id, 0.1)
    settings = Settings(redis_url=stack.env["REDIS_URL"], task_queue=stack.env["TASK_QUEUE"])
    t0, fault_at = time.monotonic(), datetime.now(UTC)
    fault.apply()
    with ThreadPoolExecutor(max_workers=1) as pool:
        restoring = pool.submit(fault.restore, t0)
        seen, most = poll_recovery(
            stack, task_id, at_fault, t0, lambda: sum(waiting_task_ids(settings).values())
        )
        back_s = restoring.result()
    with stack.client() as client:
        queued = wait_over(client, behind)
        task = client.get(f"/tasks/{task_id}").json()
    time.sleep(1)  # let a duplicate run, if there were one, reach the log
    lines = [
        sum(w.log_text().count(f"task {one} finished") for w in stack.workers)
        for one in [task_id, *behind]
    ]
    return Recovery(
        back_s,
        seen.get("api"),
        seen.get("progressing"),
        seen.get("finished"),
        all(count == 1 for count in lines),
        drained_s=max((seconds_after(fault_at, q["finished_at"]) for q in queued), default=None),
        overtaken=sum(stamp(q["started_at"]) < stamp(task["started_at"]) for q in queued),
        most_messages=most,
    )


def stamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def seconds_after(moment: datetime, text: str) -> float:
    return (stamp(text) - moment).total_seconds()


def median(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    spread = f" ({min(known):.1f}-{max(known):.1f})" if len(known) > 1 else ""
    missing = f" [{len(values) - len(known)} never]" if len(known) < len(values) else ""
    return f"{statistics.median(known):.1f}{spread}{missing}"


def print_table(results: dict[str, list[Recovery]]) -> None:
    print(f"\n`{shlex.join([Path(sys.executable).name, *sys.argv])}`\n")
    print("seconds after the fault, median (min-max) of the repetitions")
    print(
        "| fault | reps | back | API answers | task progressing | task FINISHED "
        "| queue drained | queued tasks run first | messages at most | all once |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        once = sum(run.finished_once for run in runs)
        print(
            f"| {name} | {len(runs)} | {median([r.back_s for r in runs])} "
            f"| {median([r.api_s for r in runs])} | {median([r.progressing_s for r in runs])} "
            f"| {median([r.finished_s for r in runs])} | {median([r.drained_s for r in runs])} "
            f"| {max(r.overtaken for r in runs)} | {max(r.most_messages for r in runs)} "
            f"| {once}/{len(runs)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--side", type=int, default=2048, help="noise slide edge, px")
    parser.add_argument("--queue", type=int, default=10, help="small slides queued behind it")
    parser.add_argument("--faults", default=",".join(FAULTS), help=",".join(FAULTS))
    parser.add_argument("--outage", type=float, default=5.0, help="Postgres down, s")
    parser.add_argument("--stale-after", default="4", help="TASK_STALE_AFTER_S")
    parser.add_argument("--sweep-interval", default="0.5", help="SWEEP_INTERVAL_S")
    args = parser.parse_args()
    faults = args.faults.split(",")
    if unknown := set(faults) - set(FAULTS):
        sys.exit(f"unknown fault(s) {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    if (bin_dir := postgres_bin_dir()) is None:
        sys.exit("no PostgreSQL server binaries (initdb, pg_ctl) for a private cluster")

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log lines
    work = Path(tempfile.mkdtemp(prefix="amseg-recovery-"))
    cluster = PostgresCluster(bin_dir)
    redis = RedisServer(work / "redis")
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    stack: ServiceStack | None = None
    try:
        cluster.start()
        upgrade_database(cluster.url())
        redis.start()
        s3.start()
        host, port = s3.get_host_and_port()
        env = stack_environment(
            work,
            database_url=cluster.url(),
            redis_url=redis.url,
            s3_endpoint_url=f"http://{host}:{port}",
            TASK_STALE_AFTER_S=args.stale_after,
            SWEEP_INTERVAL_S=args.sweep_interval,
        )
        stack = ServiceStack(env=env, directory=work)
        stack.start_api()
        stack.start_worker()
        rng = np.random.default_rng(0)
        image = png_bytes(rng.integers(0, 256, (args.side, args.side), dtype=np.uint8))
        queued_image = png_bytes(rng.integers(0, 256, (256, 256), dtype=np.uint8))
        results: dict[str, list[Recovery]] = {name: [] for name in faults}
        for rep in range(args.reps):
            for name in faults:
                fault = make_fault(name, stack, cluster, args.outage)
                run = one_run(stack, fault, image, queued_image, args.queue)
                results[name].append(run)
                print(f"rep {rep + 1} {name}: {run}", flush=True)
        print_table(results)
    finally:
        if stack is not None:
            stack.stop()
        s3.stop()
        redis.stop()
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
