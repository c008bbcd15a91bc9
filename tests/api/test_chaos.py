"""Chaos on the real stack: Postgres restarted, and the API restarted, while tasks are uploaded
and processed. Each time no accepted task is lost, each finishes exactly once, and all are over
within RECOVERY_BOUND_S of the fault. The database is a private cluster of this module's own,
so the machine's Postgres is never restarted. (A killed worker and a killed pool child are in
test_reliability.py.)"""

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest

from api.problems import PROBLEM_JSON
from tests.api.test_reliability import finished_lines, noise_png, submit, wait_for_stage
from tests.conftest import PostgresCluster
from tests.service_stack import RECOVERY_BOUND_S, ServiceStack

pytestmark = pytest.mark.slow

SLIDE_SIDE = 1024  # a few seconds of work each, so faults land on running tasks
OUTAGE_S = 6.0  # longer than the stale period (4 s): heartbeats do go stale meanwhile
UPLOAD_SPACING_S = 0.4


@pytest.fixture(scope="module")
def chaos_stack(
    make_stack: Callable[..., ServiceStack], postgres_cluster: PostgresCluster
) -> ServiceStack:
    """An API and two workers on the private Postgres cluster."""
    return make_stack(workers=2, database_url=postgres_cluster.url())


@dataclass
class Uploader:
    """Uploads like a careful client: one Idempotency-Key per image, retried while the API
    answers 503 or cannot be reached, until it is accepted."""

    stack: ServiceStack
    answers: list[int] = field(default_factory=list)  # every HTTP status it was given

    def upload(self, client: httpx.Client, data: bytes) -> str:
        headers = {"Content-Type": "image/png", "Idempotency-Key": uuid.uuid4().hex}
        deadline = time.monotonic() + 2 * RECOVERY_BOUND_S
        while time.monotonic() < deadline:
            try:
                response = client.post("/tasks", content=data, headers=headers)
            except httpx.TransportError:  # the API is down for a restart
                time.sleep(0.2)
                continue
            self.answers.append(response.status_code)
            if response.status_code in (200, 201):
                return response.json()["id"]
            assert response.status_code == 503, response.text
            time.sleep(0.2)
        raise AssertionError(f"an upload was not accepted in {2 * RECOVERY_BOUND_S} s")

    def upload_series(self, images: list[bytes]) -> list[str]:
        accepted = []
        with self.stack.client() as client:
            for data in images:
                accepted.append(self.upload(client, data))
                time.sleep(UPLOAD_SPACING_S)
        return accepted


def upload_during(stack: ServiceStack, images: list[bytes], fault: Callable[[], None]):
    """Upload `images` one after another while `fault()` runs; returns the accepted ids and
    the uploader (its answers)."""
    uploader = Uploader(stack)
    with ThreadPoolExecutor(max_workers=1) as pool:
        uploading = pool.submit(uploader.upload_series, images)
        fault()
        return uploading.result(), uploader


def wait_all_over(stack: ServiceStack, client: httpx.Client, task_ids: list[str], since: float):
    """The tasks' final states; each must be over within RECOVERY_BOUND_S of `since`."""
    states = {}
    for task_id in task_ids:
        left = since + RECOVERY_BOUND_S - time.monotonic()
        states[task_id] = stack.wait_until_over(client, task_id, timeout=max(left, 0.0))
    over_after = time.monotonic() - since
    assert over_after < RECOVERY_BOUND_S, f"the tasks took {over_after:.0f} s after the fault"
    return states


def listed_ids(client: httpx.Client) -> set[str]:
    return {task["id"] for task in client.get("/tasks", params={"limit": 1000}).json()["data"]}


def assert_each_finished_once(
    stack: ServiceStack, client: httpx.Client, task_ids: list[str], known_before: set[str]
) -> None:
    # Retried uploads (503, API down) made one task each, none more.
    assert listed_ids(client) - known_before == set(task_ids)
    for task_id in task_ids:
        assert client.get(f"/masks/{task_id}").status_code == 200
        assert finished_lines(stack, task_id) == 1, task_id


def assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["type"].endswith("/database-unavailable")


def answers_while_down(stack: ServiceStack, task_id: str, seconds: float) -> list[httpx.Response]:
    """What a client gets from reading and uploading routes while the database is down."""
    answers = []
    deadline = time.monotonic() + seconds
    with stack.client() as client:
        while time.monotonic() < deadline:
            answers.append(client.get(f"/tasks/{task_id}"))
            answers.append(client.get("/tasks"))
            answers.append(
                client.post("/tasks", content=noise_png(64), headers={"Content-Type": "image/png"})
            )
            time.sleep(0.5)
    return answers


def api_log(stack: ServiceStack) -> str:
    return (stack.directory / "api.log").read_text(errors="replace")


def test_postgres_restart_under_load(
    chaos_stack: ServiceStack, postgres_cluster: PostgresCluster
) -> None:
    stack = chaos_stack
    images = [noise_png(SLIDE_SIDE, seed=200 + index) for index in range(8)]
    log_before = len(api_log(stack))
    down: list[httpx.Response] = []
    with stack.client() as client:
        known_before = listed_ids(client)
        running = [submit(client, data) for data in images[:2]]
        wait_for_stage(client, running[0], 0.05)

        def restart_postgres() -> None:
            postgres_cluster.stop("fast")
            try:
                down.extend(answers_while_down(stack, running[0], OUTAGE_S))
            finally:
                postgres_cluster.start()

        fault_at = time.monotonic()
        accepted, uploader = upload_during(stack, images[2:], restart_postgres)
        task_ids = running + accepted
        states = wait_all_over(stack, client, task_ids, since=fault_at)
        assert [state["status"] for state in states.values()] == ["FINISHED"] * len(task_ids)
        assert_each_finished_once(stack, client, task_ids, known_before)
    assert down, "nothing was asked while the database was down"
    for response in down:
        assert_database_unavailable(response)
    assert 503 in uploader.answers and set(uploader.answers) <= {200, 201, 503}
    log = api_log(stack)[log_before:]
    assert "Traceback" not in log, log
    assert log.count("database unreachable") <= 2, log  # one line per burst, not per request


def test_api_restart_with_tasks_in_flight(chaos_stack: ServiceStack) -> None:
    stack = chaos_stack
    images = [noise_png(SLIDE_SIDE, seed=300 + index) for index in range(6)]
    with stack.client() as client:
        known_before = listed_ids(client)
        in_flight = [submit(client, data) for data in images[:3]]
        before = wait_for_stage(client, in_flight[0], 0.05)

        def restart_api() -> None:
            port = stack.api_port
            stack.stop_api()
            with pytest.raises(httpx.TransportError):
                client.get(f"/tasks/{in_flight[0]}")
            time.sleep(2)  # the workers go on alone meanwhile
            stack.start_api(port=port)

        fault_at = time.monotonic()
        accepted, _ = upload_during(stack, images[3:], restart_api)
        task_ids = in_flight + accepted
        states = wait_all_over(stack, client, task_ids, since=fault_at)
        assert [state["status"] for state in states.values()] == ["FINISHED"] * len(task_ids)
        # Nothing was run again: the workers never noticed the API was gone.
        assert [state["attempts"] for state in states.values()] == [1] * len(task_ids)
        assert states[in_flight[0]]["started_at"] == before["started_at"]
        assert_each_finished_once(stack, client, task_ids, known_before)
