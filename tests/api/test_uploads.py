"""Bad uploads get the right 4xx problem and leave nothing behind; good ones of every kind pass."""

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.service_stack import ServiceStack, png_bytes

MAX_UPLOAD_BYTES = 2_000_000
MAX_PIXELS = 50_000_000


@pytest.fixture(scope="module")
def upload_stack(make_stack) -> ServiceStack:
    # No worker: these tests are about what the API accepts and stores.
    return make_stack(workers=0, MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES), MAX_PIXELS=str(MAX_PIXELS))


@pytest.fixture
def client(upload_stack: ServiceStack) -> Iterator[httpx.Client]:
    with upload_stack.client() as client:
        yield client


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    return buffer.getvalue()


def small_png(mode: str = "L") -> bytes:
    rng = np.random.default_rng(0)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    return png_bytes(rng.integers(0, 255, (64, 80, *channels), dtype=np.uint8))


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a size; the pixel data is a few bytes of nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def bomb_png() -> bytes:
    """A real, valid 8000x8000 PNG of zeros (64 MP): about 60 kB on the wire."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


def post_raw(client: httpx.Client, data: bytes, content_type: str, **params) -> httpx.Response:
    return client.post(
        "/tasks", content=data, headers={"Content-Type": content_type}, params=params
    )


def test_empty_body(client: httpx.Client) -> None:
    assert "empty" in assert_problem(post_raw(client, b"", "image/png"), 422)["detail"]


def test_garbage_body(client: httpx.Client) -> None:
    assert_problem(post_raw(client, b"this is not an image at all" * 10, "image/png"), 415)


def test_a_cut_header_is_refused(client: httpx.Client) -> None:
    problem = assert_problem(post_raw(client, small_png()[:20], "image/png"), 422)
    assert "header" in problem["detail"]
    jpeg = jpeg_bytes(np.zeros((64, 80), np.uint8))
    assert_problem(post_raw(client, jpeg[:30], "image/jpeg"), 422)  # before its frame header


def test_truncated_pixel_data_is_left_to_the_worker(client: httpx.Client) -> None:
    # The API reads the header only (the worker decodes, and fails the task; see
    # test_broken_clients), so a file cut in its pixel data is accepted with the header's size.
    data = small_png()
    response = post_raw(client, data[: len(data) // 2], "image/png")
    assert response.status_code == 201, response.text
    task = client.get(response.headers["location"]).json()
    assert (task["image"]["width"], task["image"]["height"]) == (80, 64)


@pytest.mark.parametrize("kind", ["jpeg", "tiff"])
def test_huge_dimensions_in_a_jpeg_or_tiff_header(
    client: httpx.Client, kind: str, tmp_path: Path
) -> None:
    if kind == "jpeg":
        data = jpeg_bytes(np.zeros((64, 80), np.uint8))
        frame = data.index(b"\xff\xc0") + 5  # SOF0: length, precision, then height, width
        data = data[:frame] + struct.pack(">HH", 60_000, 60_000) + data[frame + 4 :]
    else:  # a small TIFF whose tags then claim 100 000 x 100 000 pixels
        path = tmp_path / "huge.tif"
        tifffile.imwrite(path, np.zeros((64, 80), np.uint8))
        with tifffile.TiffFile(path, mode="r+b") as tif:
            tif.pages.first.tags["ImageWidth"].overwrite(100_000)
            tif.pages.first.tags["ImageLength"].overwrite(100_000)
        data = path.read_bytes()
    body = assert_problem(post_raw(client, data, f"image/{kind}"), 413)
    assert "MP" in body["detail"] and "MAX_PIXELS" in body["detail"]


def test_huge_dimensions_in_the_header(client: httpx.Client) -> None:
    body = assert_problem(post_raw(client, png_with_header(100_000, 100_000), "image/png"), 413)
    assert "MP" in body["detail"]


def test_decompression_bomb(client: httpx.Client) -> None:
    data = bomb_png()
    assert len(data) < 200_000
    assert_problem(post_raw(client, data, "image/png"), 413)


def test_wrong_content_type(client: httpx.Client) -> None:
    assert_problem(post_raw(client, small_png(), "text/plain"), 415)
    assert_problem(client.post("/tasks", json={"file": "x"}), 415)


def test_content_type_that_does_not_match_the_bytes(client: httpx.Client) -> None:
    body = assert_problem(post_raw(client, small_png(), "image/jpeg"), 415)
    assert "PNG" in body["detail"]


def test_oversize_body_with_content_length(client: httpx.Client) -> None:
    response = post_raw(client, b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_UPLOAD_BYTES, "image/png")
    assert_problem(response, 413)


def test_oversize_body_streamed_without_length(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(MAX_UPLOAD_BYTES // 65536 + 2):
            yield b"\0" * 65536

    response = client.post("/tasks", content=chunks(), headers={"Content-Type": "image/png"})
    assert_problem(response, 413)


def test_multipart_without_a_file_field(client: httpx.Client) -> None:
    response = client.post("/tasks", files={"image": ("a.png", small_png(), "image/png")})
    assert "'file'" in assert_problem(response, 422)["detail"]


@pytest.mark.parametrize(
    "params",
    [
        {"rows": 0, "cols": 5},
        {"rows": "abc", "cols": 5},
        {"rows": 5},
        {"rows": 300, "cols": 300},  # more nodes than the 80 x 64 px image can hold
        {"threshold": 2},
        {"tile_size": 10},
        {"accurate": "maybe"},
        {"model": "../../etc/passwd"},
        {"model": "no-such-model"},
    ],
)
def test_bad_query_values(client: httpx.Client, params: dict) -> None:
    assert_problem(post_raw(client, small_png(), "image/png", **params), 422)


@pytest.mark.parametrize(
    "path",
    [
        "/tasks/not-a-uuid",
        "/tasks/00000000-0000-4000-8000-000000000000",
        "/masks/123",
        "/masks/00000000-0000-4000-8000-000000000000",
        "/tasks/%27%20OR%201=1--/labels",
        "/tasks/00000000-0000-4000-8000-000000000000/ams.csv",
        "/no/such/route",
    ],
)
def test_bad_ids_are_404(client: httpx.Client, path: str) -> None:
    assert_problem(client.get(path), 404)


def test_delete_unknown_task_is_404(client: httpx.Client) -> None:
    assert_problem(client.delete("/tasks/00000000-0000-4000-8000-000000000000"), 404)
    assert_problem(client.delete("/tasks/nope"), 404)


def test_bad_list_parameters(client: httpx.Client) -> None:
    assert_problem(client.get("/tasks", params={"limit": 0}), 422)
    assert_problem(client.get("/tasks", params={"cursor": "garbage!"}), 422)
    assert_problem(client.get("/tasks", params={"status": "DONE"}), 422)


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (small_png("RGBA"), "image/png"),
        (small_png("RGB"), "image/png"),
        (None, "image/tiff"),  # 16-bit TIFF, made below
        (None, "image/jpeg"),
    ],
)
def test_good_images_of_every_kind_are_accepted(
    client: httpx.Client, data: bytes | None, content_type: str
) -> None:
    if content_type == "image/tiff":
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 11)
        data = buffer.getvalue()
    elif content_type == "image/jpeg":
        data = jpeg_bytes(np.full((64, 80), 128, np.uint8))
    response = post_raw(client, data, content_type)
    assert response.status_code == 201, response.text
    task = client.get(response.headers["location"]).json()
    assert task["status"] == "QUEUED"
    assert task["image"]["content_type"] == content_type
    assert (task["image"]["width"], task["image"]["height"]) == (80, 64)


def test_idempotency_key_returns_the_same_task(client: httpx.Client) -> None:
    data = small_png()
    headers = {"Content-Type": "image/png", "Idempotency-Key": "upload-7f3a"}
    first = client.post("/tasks", content=data, headers=headers)
    again = client.post("/tasks", content=data, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = client.post("/tasks", content=small_png("RGB"), headers=headers)
    assert "Idempotency-Key" in assert_problem(other, 422)["detail"]


def test_rejected_uploads_leave_nothing_queued_or_stored(
    upload_stack: ServiceStack, client: httpx.Client
) -> None:
    before = _stored_task_ids(upload_stack)
    listed_before = {t["id"] for t in client.get("/tasks", params={"limit": 1000}).json()["data"]}
    assert before == listed_before  # every stored input belongs to a listed task
    for data, content_type in [
        (b"", "image/png"),
        (b"garbage" * 50, "image/png"),
        (small_png()[:20], "image/png"),
        (png_with_header(100_000, 100_000), "image/png"),
        (bomb_png(), "image/png"),
        (small_png(), "text/plain"),
    ]:
        assert post_raw(client, data, content_type).status_code in (413, 415, 422)
    assert post_raw(client, small_png(), "image/png", rows=0, cols=1).status_code == 422
    assert _stored_task_ids(upload_stack) == before
    listed = {t["id"] for t in client.get("/tasks", params={"limit": 1000}).json()["data"]}
    assert listed == listed_before


def _stored_task_ids(stack: ServiceStack) -> set[str]:
    return {key.split("/")[1] for key in stack.s3_keys("tasks/")}


def test_accurate_is_stored_with_the_task(client: httpx.Client) -> None:
    # Unsaid, the API fills in its default (off: this stack sends tasks to the cpu queue),
    # so the task records how it is run whichever worker takes it.
    for value, stored in (("true", True), ("false", False), (None, False)):
        params = {} if value is None else {"accurate": value}
        created = post_raw(client, small_png(), "image/png", **params)
        assert created.status_code == 201, created.text
        task = client.get(f"/tasks/{created.json()['id']}").json()
        assert task["parameters"]["accurate"] is stored


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("POST", "/tasks", {"row": "8", "cols": "8"}),
        ("GET", "/tasks", {"limit": "5", "staus": "QUEUED"}),
        ("GET", "/health", {"verbose": "1"}),
    ],
)
def test_unknown_query_parameters_are_refused(
    client: httpx.Client, method: str, path: str, params: dict
) -> None:
    before = {t["id"] for t in client.get("/tasks", params={"limit": 1000}).json()["data"]}
    if method == "POST":
        response = post_raw(client, small_png(), "image/png", **params)
    else:
        response = client.request(method, path, params=params)
    problem = assert_problem(response, 422)
    assert problem["type"].endswith("/unknown-query-parameter")
    unknown = sorted(set(params) - {"cols", "limit"})
    assert ", ".join(unknown) in problem["detail"]
    after = {t["id"] for t in client.get("/tasks", params={"limit": 1000}).json()["data"]}
    assert after == before


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"tile_size": "32"}, "tile_size"),
        ({"tile_size": "5000"}, "tile_size"),
        ({"rows": "4"}, "give both rows and columns (number of grid rows and columns, e.g."),
        ({"rows": "300", "cols": "300"}, "300 x 300 = 90 000 positions, more than a 80 x 64 px"),
        ({"rows": "3.5", "cols": "4"}, "rows must be a whole number of grid rows, e.g. 30"),
        ({"rows": "4", "cols": "many"}, "cols must be a whole number of grid columns, e.g. 30"),
    ],
)
def test_task_parameters_out_of_range_are_a_422_problem(
    client: httpx.Client, params: dict, fragment: str
) -> None:
    problem = assert_problem(post_raw(client, small_png(), "image/png", **params), 422)
    assert fragment in problem["detail"]
