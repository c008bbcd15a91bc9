"""What a hostile page, a rebound DNS name or a crafted file can make the API do (issue 37 §3,
§4), against the real API: another site's writes get 403, a foreign Host 400, while curl and
the service's own page keep working; a TIFF whose header decodes to gigabytes gets 413, a
query parameter given twice 422, a cut-off multipart body says so. None leaves anything."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile

from tests.service_stack import ServiceStack, png_bytes

ALLOWED_NAME = "lab.example.org"
MAX_DECODED_BYTES = 1_000_000_000
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def stack(make_stack) -> ServiceStack:
    # No worker: these tests are about what the API accepts.
    return make_stack(
        workers=0, ALLOWED_HOSTS=ALLOWED_NAME, MAX_DECODED_BYTES=str(MAX_DECODED_BYTES)
    )


@pytest.fixture
def client(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def slide() -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))


def upload(client: httpx.Client, headers: dict[str, str] | None = None, **params) -> httpx.Response:
    files = {"file": ("slide.png", slide(), "image/png")}
    return client.post("/tasks", files=files, params=params, headers=headers or {})


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith(kind), body
    return body


def stored_task_ids(stack: ServiceStack) -> set[str]:
    return {key.split("/")[1] for key in stack.s3_keys("tasks/")}


def test_curl_and_the_services_own_page_can_write(stack: ServiceStack, client) -> None:
    assert upload(client).status_code == 201  # curl: neither Origin nor Sec-Fetch-Site
    own_page = {"Origin": stack.base_url, "Sec-Fetch-Site": "same-origin"}
    created = upload(client, own_page)
    assert created.status_code == 201, created.text
    assert client.delete(f"/tasks/{created.json()['id']}", headers=own_page).status_code == 204


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site"},  # a browser that leaves Origin out
        {"Sec-Fetch-Site": "same-site"},  # another port or subdomain of this host
        {"Origin": "null"},  # a sandboxed frame, a file:// page
    ],
    ids=["origin", "both", "fetch-site", "same-site", "null"],
)
def test_another_sites_writes_are_refused(stack: ServiceStack, client, headers) -> None:
    task_id = upload(client).json()["id"]
    before = stored_task_ids(stack)

    assert_problem(upload(client, headers), 403, "cross-origin-request")
    assert_problem(client.delete(f"/tasks/{task_id}", headers=headers), 403, "cross-origin-request")

    assert stored_task_ids(stack) == before
    assert client.get(f"/tasks/{task_id}").status_code == 200  # still there
    # Reads are not writes: a page may load what the browser shows anyway.
    assert client.get(f"/tasks/{task_id}", headers=headers).status_code == 200


def test_a_page_on_another_port_of_this_host_is_another_site(stack: ServiceStack, client) -> None:
    other_port = stack.base_url.rsplit(":", 1)[0] + ":1"
    assert_problem(upload(client, {"Origin": other_port}), 403, "cross-origin-request")


@pytest.mark.parametrize("host", ["evil.example", "rebound.attacker.test:8000"])
def test_a_foreign_host_is_refused(client, host: str) -> None:
    assert_problem(client.get("/tasks", headers={"Host": host}), 400, "unknown-host")
    assert_problem(upload(client, {"Host": host}), 400, "unknown-host")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", ALLOWED_NAME, "[::1]"])
def test_addresses_localhost_and_allowed_names_are_answered(
    stack: ServiceStack, client, host: str
) -> None:
    with_port = f"{host}:{stack.api_port}"
    assert client.get("/tasks", headers={"Host": with_port}).status_code == 200
    own_page = {"Host": with_port, "Origin": f"http://{with_port}"}
    assert upload(client, own_page).status_code == 201


def test_a_query_parameter_given_twice_is_refused(stack: ServiceStack, client) -> None:
    before = stored_task_ids(stack)
    response = client.post(
        "/tasks?rows=5&rows=6&cols=5",
        content=slide(),
        headers={"Content-Type": "image/png"},
    )
    assert "rows" in assert_problem(response, 422, "repeated-query-parameter")["detail"]
    assert client.get("/tasks?limit=5&limit=6").status_code == 422
    assert stored_task_ids(stack) == before


def test_a_truncated_multipart_body_says_so(stack: ServiceStack, client) -> None:
    boundary = "amsegTestBoundary"
    whole = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + slide()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    before = stored_task_ids(stack)

    for cut in (len(whole) // 2, len(whole) - len(f"--{boundary}--\r\n")):
        response = client.post("/tasks", content=whole[:cut], headers=headers)
        assert "truncated" in assert_problem(response, 422, "truncated-multipart")["detail"]

    assert stored_task_ids(stack) == before
    assert client.post("/tasks", content=whole, headers=headers).status_code == 201


def bytes_bomb_tiff(path: Path, side: int) -> bytes:
    """A 335-byte TIFF whose header says side x side RGBA float64 (32 bytes a pixel)."""
    tifffile.imwrite(
        path, np.zeros((16, 16, 4)), photometric="rgb", extrasamples=[2], compression="zlib"
    )
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for tag in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tif.pages.first.tags[tag].overwrite(side)
    return path.read_bytes()


def test_a_tiff_that_decodes_to_gigabytes_is_refused(
    stack: ServiceStack, client, tmp_path: Path
) -> None:
    # 6000² = 36 MP, far under the pixel limit, but 1.15 GB once decoded.
    data = bytes_bomb_tiff(tmp_path / "bomb.tif", 6000)
    assert len(data) < 1000
    before = stored_task_ids(stack)

    response = client.post("/tasks", content=data, headers={"Content-Type": "image/tiff"})

    detail = assert_problem(response, 413, "too-many-bytes")["detail"]
    assert "MAX_DECODED_BYTES" in detail and "1.2 GB" in detail
    assert stored_task_ids(stack) == before
    fits = bytes_bomb_tiff(tmp_path / "fits.tif", 5000)  # 0.8 GB: under the limit
    accepted = client.post("/tasks", content=fits, headers={"Content-Type": "image/tiff"})
    assert accepted.status_code == 201, accepted.text
