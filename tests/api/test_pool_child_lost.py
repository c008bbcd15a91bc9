"""A pool child killed mid-task: its worker hands the task back at once, so Celery's immediate
re-send runs it again within seconds instead of being dropped until the heartbeat goes stale
(the real API, worker, Redis, Postgres and S3)."""

import subprocess
import time

import pytest

from tests.api.test_reliability import (
    finished_lines,
    noise_png,
    pool_children,
    submit,
    wait_for_stage,
)
from tests.service_stack import ServiceStack

# The bound for "running again" after the process running a task died.
RERUN_BOUND_S = 15.0
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slow_sweep_stack(make_stack) -> ServiceStack:
    # A stale period far beyond the bound: the sweep cannot be what runs the task again in time.
    return make_stack(workers=1, TASK_STALE_AFTER_S="60")


def test_a_killed_pool_childs_task_runs_again_within_seconds_and_finishes_once(
    slow_sweep_stack: ServiceStack,
) -> None:
    stack = slow_sweep_stack
    worker = stack.workers[0]
    with stack.client() as client:
        task_id = submit(client, noise_png(4096, seed=7))
        wait_for_stage(client, task_id, 0.1)
        children = pool_children(worker)
        assert children, "the prefork worker has no pool child"

        subprocess.run(["kill", "-9", *map(str, children)], check=True)
        deadline = time.monotonic() + RERUN_BOUND_S
        while (state := client.get(f"/tasks/{task_id}").json())["attempts"] < 2:
            assert state["status"] in ("RUNNING", "QUEUED"), state
            assert time.monotonic() < deadline, f"not running again after {RERUN_BOUND_S} s"
            time.sleep(0.1)
        assert state["status"] == "RUNNING"

        state = stack.wait_until_over(client, task_id, timeout=240)
        assert state["status"] == "FINISHED", state
        assert state["attempts"] == 2
    assert worker.process.poll() is None  # the worker itself lived on
    assert finished_lines(stack, task_id) == 1
