"""The API's memory stays bounded whatever the upload decodes to: it reads headers, not pixels."""

import threading
from pathlib import Path

import httpx
import pytest

from tests.service_stack import ServiceStack
from tests.viewer_load import zeros_png

SIDE = 19_000  # 361 MP of zeros: under the 400 MP limit, about 350 kB as a PNG
CONCURRENT_UPLOADS = 8
MAX_PEAK_RSS_BYTES = 400 * 1024**2


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory since it started (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.fixture(scope="module")
def memory_stack(make_stack) -> ServiceStack:
    # A stack of its own (default settings), so that only these uploads count towards its peak.
    return make_stack(workers=0)


def test_concurrent_uploads_of_a_huge_image_keep_the_api_small(memory_stack: ServiceStack) -> None:
    data = zeros_png(SIDE, SIDE)
    assert len(data) < 1_000_000
    barrier = threading.Barrier(CONCURRENT_UPLOADS)
    answers: list[httpx.Response] = []

    def upload() -> None:
        with memory_stack.client() as client:
            barrier.wait()
            answers.append(
                client.post("/tasks", content=data, headers={"Content-Type": "image/png"})
            )

    threads = [threading.Thread(target=upload) for _ in range(CONCURRENT_UPLOADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [answer.status_code for answer in answers] == [201] * CONCURRENT_UPLOADS
    with memory_stack.client() as client:
        task = client.get(answers[0].headers["location"]).json()
    assert (task["image"]["width"], task["image"]["height"]) == (SIDE, SIDE)
    peak = peak_rss_bytes(memory_stack.api.pid)
    print(f"API peak RSS after {CONCURRENT_UPLOADS} uploads of {SIDE}²: {peak / 2**20:.0f} MB")
    assert peak < MAX_PEAK_RSS_BYTES
