"""A long task with 30 queued behind it, on both brokers (amseg up's file queue; Redis in the
stack docker-compose runs): the sweep leaves waiting tasks alone, so the queue holds about one
message a task however long the wait, and the 30 run right after the long one, their time
spent on their own work rather than on skipping copies (issue 37)."""

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from store.queue import waiting_task_ids
from store.settings import Settings
from tests.api.test_cli_up import running_up
from tests.api.test_reliability import noise_png, submit
from tests.service_stack import ServiceStack, png_bytes

pytestmark = pytest.mark.slow

QUEUED_BEHIND = 30
# Short enough that, with the old sweep, each waiting task was sent again many times while
# the long task ran.
FAST_SWEEP = {"TASK_STALE_AFTER_S": "2", "SWEEP_INTERVAL_S": "0.5"}


def test_the_file_queue_is_not_flooded_behind_a_long_task(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(embedded=True, data_dir=data_dir)
    with running_up(data_dir, **FAST_SWEEP) as (_, client):
        check_queue_behind_a_long_task(client, lambda: waiting_messages(settings))


def test_redis_is_not_flooded_behind_a_long_task(make_stack) -> None:
    stack: ServiceStack = make_stack(**FAST_SWEEP)
    settings = Settings(redis_url=stack.env["REDIS_URL"], task_queue=stack.env["TASK_QUEUE"])
    with stack.client() as client:
        check_queue_behind_a_long_task(client, lambda: waiting_messages(settings))


def check_queue_behind_a_long_task(client: httpx.Client, messages: Callable[[], int]) -> None:
    # 1.9x the pixels of 4096², which a fast CI machine segmented in 8.6-9.9 s.
    long_task = submit(client, noise_png(5632, seed=3))
    wait_for(client, long_task, lambda state: state["status"] == "RUNNING")
    queued = [submit(client, small_png(seed)) for seed in range(QUEUED_BEHIND)]

    most = 0
    while (state := client.get(f"/tasks/{long_task}").json())["status"] == "RUNNING":
        most = max(most, messages())
        time.sleep(0.2)
    assert state["status"] == "FINISHED", state
    long_ran_s = seconds(state["started_at"], state["finished_at"])
    # Long enough for each waiting task to go stale several times over.
    assert long_ran_s > 3 * float(FAST_SWEEP["TASK_STALE_AFTER_S"]), "too short to mean much"
    # One message a waiting task; a couple more for races with the worker at most.
    assert most <= QUEUED_BEHIND + 3, f"{most} messages for {QUEUED_BEHIND} queued tasks"

    states = [wait_for(client, task_id, over) for task_id in queued]
    assert {state["status"] for state in states} == {"FINISHED"}
    assert {state["attempts"] for state in states} == {1}
    work_s = sum(seconds(state["started_at"], state["finished_at"]) for state in states)
    drained_s = seconds(state["finished_at"], max(state["finished_at"] for state in states))
    # Promptly: the wait adds little to their own work (copies once cost minutes here).
    assert drained_s < 2 * work_s + 15, f"{drained_s:.0f} s for {work_s:.0f} s of work"


def waiting_messages(settings: Settings) -> int:
    return sum(waiting_task_ids(settings).values())


def small_png(seed: int) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (256, 256), dtype=np.uint8)
    return png_bytes(noise)


def over(state: dict) -> bool:
    return state["status"] in ("FINISHED", "FAILED")


def wait_for(client: httpx.Client, task_id: str, condition, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while not condition(state := client.get(f"/tasks/{task_id}").json()):
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    return state


def seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
