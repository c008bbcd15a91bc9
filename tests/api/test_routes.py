"""The routes' contract: API keys, listing, results while pending, delete, redirect, health,
metrics, and tasks that fail with a message."""

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.service_stack import ServiceStack, png_bytes

API_KEY = "k" * 8 + "-test-key-0123456789"
pytestmark = pytest.mark.slow


def image(seed: int, side: int = 96) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8))


def submit(client: httpx.Client, data: bytes, **params) -> str:
    response = client.post(
        "/tasks", content=data, headers={"Content-Type": "image/png"}, params=params
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def idle_stack(make_stack) -> ServiceStack:
    """No worker, so tasks stay QUEUED; API keys required."""
    return make_stack(workers=0, API_KEYS=API_KEY)


@pytest.fixture
def client(idle_stack: ServiceStack) -> Iterator[httpx.Client]:
    with idle_stack.client(headers={"X-API-Key": API_KEY}) as client:
        yield client


@pytest.fixture(scope="module")
def working_stack(make_stack) -> ServiceStack:
    return make_stack(workers=1)


def test_api_key_is_required_except_for_health_and_docs(idle_stack: ServiceStack) -> None:
    with idle_stack.client() as anonymous:
        for method, path in [("GET", "/tasks"), ("POST", "/tasks"), ("GET", "/metrics")]:
            response = anonymous.request(method, path)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.headers["www-authenticate"] == "APIKey"
        wrong = anonymous.get("/tasks", headers={"X-API-Key": "x" * 30})
        assert wrong.status_code == 401
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/docs").status_code == 200
        assert anonymous.get("/openapi.json").status_code == 200


def test_list_pages_newest_first(client: httpx.Client) -> None:
    created = [submit(client, image(seed)) for seed in range(5)]
    seen: list[str] = []
    url: str | None = "/tasks?limit=2&status=QUEUED"
    while url is not None:
        page = client.get(url).json()
        assert len(page["data"]) <= 2
        seen += [task["id"] for task in page["data"]]
        url = page["links"]["next"]
    mine = [task_id for task_id in seen if task_id in created]
    assert mine == created[::-1]
    assert len(seen) == len(set(seen))


def test_results_of_a_queued_task_are_409(client: httpx.Client) -> None:
    task_id = submit(client, image(10), rows=3, cols=3)
    state = client.get(f"/tasks/{task_id}")
    assert state.json()["status"] == "QUEUED"
    assert state.headers["retry-after"]
    for path in [f"/masks/{task_id}", f"/tasks/{task_id}/labels", f"/tasks/{task_id}/qc"]:
        response = client.get(path)
        assert response.status_code == 409
        assert "QUEUED" in response.json()["detail"]


def test_delete_queued_task_removes_row_and_blobs(
    idle_stack: ServiceStack, client: httpx.Client
) -> None:
    task_id = submit(client, image(11))
    assert idle_stack.s3_keys(f"tasks/{task_id}/") == [f"tasks/{task_id}/input"]
    assert client.delete(f"/tasks/{task_id}").status_code == 204
    assert client.get(f"/tasks/{task_id}").status_code == 404
    assert idle_stack.s3_keys(f"tasks/{task_id}/") == []
    assert client.delete(f"/tasks/{task_id}").status_code == 404


def test_health_and_metrics(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert all(health[part]["ok"] for part in ("database", "broker", "storage"))
    client.get("/tasks")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'amseg_http_requests_total{method="GET",route="/tasks",status="200"}' in metrics.text
    assert 'amseg_tasks{status="QUEUED"}' in metrics.text


def test_mask_redirect_to_presigned_url(working_stack: ServiceStack) -> None:
    with working_stack.client() as client:
        task_id = submit(client, image(12, side=256))
        assert working_stack.wait_until_over(client, task_id)["status"] == "FINISHED"
        direct = client.get(f"/masks/{task_id}")
        redirected = client.get(f"/masks/{task_id}", params={"redirect": 1})
    assert redirected.status_code == 303
    location = redirected.headers["location"]
    assert location.startswith(working_stack.env["S3_ENDPOINT_URL"])
    assert httpx.get(location).content == direct.content


def test_delete_running_task_stops_its_worker(working_stack: ServiceStack) -> None:
    big = png_bytes(np.random.default_rng(13).integers(0, 256, (4096, 4096), dtype=np.uint8))
    with working_stack.client() as client:
        task_id = submit(client, big)
        deadline = time.monotonic() + 120
        while client.get(f"/tasks/{task_id}").json()["status"] != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.delete(f"/tasks/{task_id}").status_code == 204
        assert client.get(f"/tasks/{task_id}").status_code == 404
        worker = working_stack.workers[0]
        deadline = time.monotonic() + 60
        while f"task {task_id} stopped" not in worker.log_text():
            assert time.monotonic() < deadline, worker.log_text()[-2000:]
            time.sleep(0.2)
        # The worker is free again and nothing of the task is left in storage.
        follow_up = submit(client, image(14))
        assert working_stack.wait_until_over(client, follow_up)["status"] == "FINISHED"
    assert working_stack.s3_keys(f"tasks/{task_id}/") == []


def test_grid_that_cannot_be_registered_fails_with_a_message(
    working_stack: ServiceStack,
) -> None:
    blank = png_bytes(np.zeros((256, 256), np.uint8))
    with working_stack.client() as client:
        task_id = submit(client, blank, rows=4, cols=4)
        state = working_stack.wait_until_over(client, task_id)
        assert state["status"] == "FAILED"
        assert state["error"] and "Traceback" not in state["error"]
        response = client.get(f"/masks/{task_id}")
        assert response.status_code == 409
        assert state["error"] in response.json()["detail"]


def test_openapi_documents_every_route(idle_stack: ServiceStack) -> None:
    spec = httpx.get(f"{idle_stack.base_url}/openapi.json").json()
    expected = {
        "/tasks",
        "/tasks/{task_id}",
        "/masks/{task_id}",
        "/tasks/{task_id}/labels",
        "/tasks/{task_id}/ams.csv",
        "/tasks/{task_id}/overlay.png",
        "/tasks/{task_id}/qc",
        "/tasks/{task_id}/marks.geojson",
        "/tasks/{task_id}/labels.tiff",
        "/health",
        "/metrics",
    }
    assert expected <= set(spec["paths"])
    upload = spec["paths"]["/tasks"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/tiff", "image/jpeg", "multipart/form-data"} <= set(upload)


def test_schemathesis_finds_no_server_errors(make_stack) -> None:
    stack = make_stack(workers=0)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{stack.base_url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
