"""Broken, slow and too many clients, on raw sockets against the real uvicorn: each is a 4xx
problem (or 503 with Retry-After) in answers, logs and /metrics, never a 500 or a traceback, and
leaves nothing behind. And damage the API cannot see in a header fails the task in the worker."""

import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from prometheus_client.parser import text_string_to_metric_families

from api.body_guard import UPLOADS_RETRY_AFTER_S
from api.http_protocol import PROBLEM_HTTP_PROTOCOL
from tests.service_stack import ServiceStack, png_bytes

IDLE_TIMEOUT_S = 1.0
MAX_UPLOADS = 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def upload_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The API's TMPDIR, where uploads are received."""
    return tmp_path_factory.mktemp("api-tmp")


@pytest.fixture(scope="module")
def stack(make_stack, upload_tmp: Path) -> ServiceStack:
    return make_stack(
        workers=1,
        UPLOAD_IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S),
        MAX_CONCURRENT_UPLOADS=str(MAX_UPLOADS),
        TMPDIR=str(upload_tmp),
        UVICORN_HTTP=PROBLEM_HTTP_PROTOCOL,  # read by the uvicorn command line
    )


@pytest.fixture
def client(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def open_upload(
    stack: ServiceStack, length: bytes, body: bytes = b"", **headers: str
) -> socket.socket:
    """A raw POST /tasks that declares `length` bytes and sends `body` (maybe fewer)."""
    port = int(stack.base_url.rsplit(":", 1)[1])
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [
        "POST /tasks HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Type: {headers.get('content_type', 'image/png')}",
        f"Content-Length: {length.decode()}",
    ]
    connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return connection


def read_answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one answer on `connection`, read until it closes."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict:
    assert status == expected, body
    assert headers["content-type"].startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["status"] == expected and problem["title"] and problem["detail"]
    return problem


def request_counts(client: httpx.Client) -> dict[tuple[str, str, str], float]:
    """amseg_http_requests_total by (method, route, status)."""
    counts = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "amseg_http_requests_total":
                labels = sample.labels
                counts[labels["method"], labels["route"], labels["status"]] = sample.value
    return counts


def gauge(client: httpx.Client, name: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"no metric {name}")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {timeout} s")
        time.sleep(0.1)


def post_counts(client: httpx.Client, status: str) -> float:
    """POST requests answered `status`, whatever their route."""
    counts = request_counts(client)
    return sum(
        value for (method, _, code), value in counts.items() if (method, code) == ("POST", status)
    )


@pytest.fixture
def nothing_left_behind(
    stack: ServiceStack, client: httpx.Client, upload_tmp: Path
) -> Iterator[None]:
    """After the test: no upload files, no new blobs or tasks, no 500, no traceback in the log."""
    stored, listed = set(stack.s3_keys()), client.get("/tasks", params={"limit": 1000}).json()
    yield
    wait_for(lambda: gauge(client, "amseg_uploads_in_progress") == 0, "done with the uploads")
    assert list(upload_tmp.glob("amseg-upload-*")) == []
    assert set(stack.s3_keys()) == stored
    assert client.get("/tasks", params={"limit": 1000}).json()["data"] == listed["data"]
    assert post_counts(client, "500") == 0
    assert "Traceback" not in (stack.directory / "api.log").read_text(errors="replace")


@pytest.mark.usefixtures("nothing_left_behind")
def test_a_body_that_stalls_is_dropped_with_408(stack: ServiceStack, client: httpx.Client) -> None:
    before = request_counts(client).get(("POST", "/tasks", "408"), 0)
    connection = open_upload(stack, b"100", PNG_MAGIC + b"\0\0")  # 10 of 100 bytes, then nothing
    with connection:
        problem = assert_problem(*read_answer(connection), 408)  # read_answer waits for the close
    assert "10 of 100 bytes" in problem["detail"]
    assert request_counts(client)[("POST", "/tasks", "408")] == before + 1


@pytest.mark.parametrize("multipart", [False, True], ids=["raw", "multipart"])
@pytest.mark.usefixtures("nothing_left_behind")
def test_a_client_that_aborts_is_a_499_without_a_traceback(
    stack: ServiceStack, client: httpx.Client, multipart: bool
) -> None:
    before = request_counts(client).get(("POST", "/tasks", "499"), 0)
    if multipart:
        part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        part += b"Content-Type: image/png\r\n\r\n" + PNG_MAGIC + b"\0" * 70_000
        content_type = "multipart/form-data; boundary=xyz"
        connection = open_upload(stack, b"1000000", part, content_type=content_type)
    else:
        connection = open_upload(stack, b"1000000", PNG_MAGIC + b"\0" * 70_000)
    time.sleep(0.3)  # let the API start on the body (the answer is the same if it has not)
    connection.close()

    counted = lambda: request_counts(client).get(("POST", "/tasks", "499"), 0) == before + 1  # noqa: E731
    wait_for(counted, "counted as 499")
    assert "499, the client closed the connection" in (stack.directory / "api.log").read_text()


@pytest.mark.usefixtures("nothing_left_behind")
def test_uploads_beyond_the_limit_get_503_with_retry_after(
    stack: ServiceStack, client: httpx.Client
) -> None:
    holders = [open_upload(stack, b"100000", PNG_MAGIC) for _ in range(MAX_UPLOADS)]
    stop = threading.Event()

    def trickle() -> None:  # a byte now and then: slow uploads, but never idle long enough
        while not stop.wait(IDLE_TIMEOUT_S / 5):
            for holder in holders:
                holder.sendall(b"\0")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        in_progress = lambda: gauge(client, "amseg_uploads_in_progress") == MAX_UPLOADS  # noqa: E731
        wait_for(in_progress, f"{MAX_UPLOADS} uploads in progress")
        with open_upload(stack, b"1000", PNG_MAGIC) as extra:
            status, headers, body = read_answer(extra)
        problem = assert_problem(status, headers, body, 503)
        assert headers["retry-after"] == str(UPLOADS_RETRY_AFTER_S)
        assert "MAX_CONCURRENT_UPLOADS" in problem["detail"]
        # Other requests still pass: the limit is on uploads only.
        assert client.get("/tasks").status_code == 200
    finally:
        stop.set()
        trickler.join()
        for holder in holders:
            holder.close()
    assert request_counts(client)[("POST", "unmatched", "503")] >= 1


@pytest.mark.parametrize("length", [b"-5", b"abc", b"1e3", b"5, 6", b"99999999999999999999999"])
def test_a_malformed_content_length_gets_a_problem(stack: ServiceStack, length: bytes) -> None:
    with open_upload(stack, length, PNG_MAGIC) as connection:
        problem = assert_problem(*read_answer(connection), 400)
    assert "Content-Length" in problem["detail"]


def test_damage_past_the_header_fails_the_task_in_the_worker(
    stack: ServiceStack, client: httpx.Client
) -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (300, 400), dtype=np.uint8)
    png = png_bytes(image)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, compression="zlib")
    tiff = bytearray(buffer.getvalue())
    tiff[len(tiff) // 2 : len(tiff) // 2 + 64] = b"\x5a" * 64  # inside the compressed strip
    for data, content_type, fragment in [
        (png[: len(png) // 2], "image/png", "truncated"),
        (bytes(tiff), "image/tiff", "damaged"),
    ]:
        created = client.post("/tasks", content=data, headers={"Content-Type": content_type})
        assert created.status_code == 201, created.text  # the header is fine
        task = stack.wait_until_over(client, created.json()["id"], timeout=180)
        assert task["status"] == "FAILED"
        assert task["error"].startswith("the uploaded image") and fragment in task["error"]
        assert "internal error" not in task["error"] and "amseg-task-" not in task["error"]
