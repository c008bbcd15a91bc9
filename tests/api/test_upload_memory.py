"""The API's memory stays bounded whatever the upload decodes to: it reads headers, not pixels."""

import struct
import threading
import zlib
from pathlib import Path

import httpx
import pytest

from tests.service_stack import ServiceStack

SIDE = 19_000  # 361 MP of zeros: under the 400 MP limit, about 350 kB as a PNG
CONCURRENT_UPLOADS = 8
MAX_PEAK_RSS_BYTES = 400 * 1024**2


def zeros_png(width: int, height: int) -> bytes:
    """A valid 8-bit gray PNG of zeros, compressed row block by row block (never whole)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    block_rows = 500
    rows = b"\x00" * (width + 1) * block_rows  # filter byte + pixels, per row
    parts = [compressor.compress(rows) for _ in range(height // block_rows)]
    parts += [compressor.compress(rows[: (width + 1) * (height % block_rows)]), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


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
