"""No task is lost and none is finished twice: killed workers, a restarted Redis, duplicate
messages and many uploads at once, against the real API, workers, Redis, Postgres and S3."""

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from store.queue import create_celery, send_process_task
from store.settings import Settings
from tests.conftest import RedisServer
from tests.service_stack import RECOVERY_BOUND_S, ServiceStack, Worker, png_bytes

pytestmark = pytest.mark.slow


def noise_png(side: int, seed: int = 0) -> bytes:
    """A slide-sized image with no grid: full resolution, so it takes a few seconds."""
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, (side, side), dtype=np.uint8))


def submit(client: httpx.Client, data: bytes) -> str:
    response = client.post("/tasks", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_for_stage(client: httpx.Client, task_id: str, minimum_progress: float) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = client.get(f"/tasks/{task_id}").json()
        if state["status"] == "RUNNING" and state["progress"] >= minimum_progress:
            return state
        assert state["status"] in ("QUEUED", "RUNNING"), state
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} never got to {minimum_progress:.0%}")


def finished_lines(stack: ServiceStack, task_id: str) -> int:
    return sum(w.log_text().count(f"task {task_id} finished") for w in stack.workers)


def pool_children(worker: Worker) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


@pytest.fixture(scope="module")
def reliable_stack(make_stack) -> ServiceStack:
    return make_stack(workers=1)


def test_killed_worker_task_still_finishes_once(reliable_stack: ServiceStack) -> None:
    stack = reliable_stack
    with stack.client() as client:
        task_id = submit(client, noise_png(4096))
        wait_for_stage(client, task_id, 0.1)
        victim = next(w for w in stack.workers if w.process.poll() is None)
        victim.kill()  # SIGKILL to the worker and its pool child, mid-segmentation
        killed_at = time.monotonic()
        stack.start_worker()
        stack.wait_until_attempt(client, task_id, 2, timeout=RECOVERY_BOUND_S)
        rerun_after = time.monotonic() - killed_at
        assert rerun_after < RECOVERY_BOUND_S, f"run again only {rerun_after:.0f} s after the kill"
        state = stack.wait_until_over(client, task_id, timeout=240)
        assert state["status"] == "FINISHED", state
        assert state["attempts"] == 2
        assert client.get(f"/masks/{task_id}").status_code == 200
    assert finished_lines(stack, task_id) == 1


def test_killed_pool_child_task_still_finishes(reliable_stack: ServiceStack) -> None:
    stack = reliable_stack
    worker = next(w for w in stack.workers if w.process.poll() is None)
    with stack.client() as client:
        task_id = submit(client, noise_png(4096, seed=1))
        wait_for_stage(client, task_id, 0.1)
        children = pool_children(worker)
        assert children, "the prefork worker has no pool child"
        subprocess.run(["kill", "-9", *map(str, children)], check=True)
        state = stack.wait_until_over(client, task_id, timeout=240)
        assert state["status"] == "FINISHED", state
        assert state["attempts"] == 2
    assert worker.process.poll() is None  # the worker itself lived on
    assert finished_lines(stack, task_id) == 1


def test_redis_restart_mid_run_loses_nothing(
    reliable_stack: ServiceStack, redis_server: RedisServer
) -> None:
    stack = reliable_stack
    image = noise_png(1024, seed=2)
    with stack.client() as client:
        before = [submit(client, image) for _ in range(4)]
        wait_for_stage(client, before[0], 0.0)
        redis_server.stop(kill=True)
        # Uploads while the broker is down are accepted; the sweep sends them later.
        during = [submit(client, image) for _ in range(2)]
        time.sleep(2)
        redis_server.start()
        after = [submit(client, image) for _ in range(2)]
        states = [stack.wait_until_over(client, t, timeout=240) for t in before + during + after]
    assert [s["status"] for s in states] == ["FINISHED"] * 8, states
    for task_id in before + during + after:
        assert finished_lines(stack, task_id) == 1


def test_same_task_delivered_twice_gives_one_result(reliable_stack: ServiceStack) -> None:
    stack = reliable_stack
    settings = Settings(
        redis_url=stack.env["REDIS_URL"],
        database_url=stack.env["DATABASE_URL"],
        task_queue=stack.env["TASK_QUEUE"],
    )
    publisher = create_celery(settings)
    with stack.client() as client:
        task_id = submit(client, noise_png(512, seed=3))
        for _ in range(2):
            send_process_task(publisher, task_id, settings.task_queue)
        state = stack.wait_until_over(client, task_id)
        assert state["status"] == "FINISHED"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            skipped = sum(skipped_lines(w.log_text(), task_id) for w in stack.workers)
            if skipped == 2:
                break
            time.sleep(0.2)
        assert skipped == 2
        assert client.get(f"/tasks/{task_id}").json()["attempts"] == 1
    assert finished_lines(stack, task_id) == 1
    publisher.close()


def skipped_lines(log: str, task_id: str) -> int:
    """Copies skipped: dropped by the worker's main process, or not claimed in its pool."""
    dropped = log.count(f"task {task_id}: a duplicate message, dropped")
    return dropped + log.count(f"task {task_id} not claimed")


def test_fifty_concurrent_uploads_all_finish(make_stack) -> None:
    stack = make_stack(workers=2)
    images = [noise_png(128, seed=100 + index) for index in range(50)]
    with stack.client(limits=httpx.Limits(max_connections=50)) as client:
        with ThreadPoolExecutor(max_workers=50) as pool:
            task_ids = list(pool.map(lambda data: submit(client, data), images))
        assert len(set(task_ids)) == 50
        states = [stack.wait_until_over(client, task_id, timeout=300) for task_id in task_ids]
        assert all(state["status"] == "FINISHED" for state in states), states
        listed = client.get("/tasks", params={"limit": 100}).json()["data"]
        assert {task["id"] for task in listed} == set(task_ids)
