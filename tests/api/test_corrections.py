"""Draft corrections kept per task (`PUT/GET/DELETE /tasks/{id}/corrections`), through the real
service: stored as sent, replaced, refused when not an 8-bit gray PNG of the image's size, and
gone with the task."""

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.service_stack import ServiceStack, png_bytes

pytestmark = pytest.mark.slow
WIDTH, HEIGHT = 60, 40


@pytest.fixture(scope="module")
def stack(make_stack) -> ServiceStack:
    return make_stack(workers=0)  # a QUEUED task is enough: drafts do not wait for results


@pytest.fixture(scope="module")
def client(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def new_task(client: httpx.Client) -> str:
    image = np.full((HEIGHT, WIDTH), 1000, dtype=np.uint16)
    response = client.post(
        "/tasks", content=png_bytes(image), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def draft_png(
    width: int = WIDTH, height: int = HEIGHT, *, mode: str = "L", text: str = ""
) -> bytes:
    labels = np.full((height, width), 128, dtype=np.uint8)
    labels[5:20, 10:30] = 0
    labels[8:12, 12:16] = 255
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("amseg", text)
    buffer = io.BytesIO()
    Image.fromarray(labels).convert(mode).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def put(
    client: httpx.Client, task_id: str, body: bytes, content_type: str = "image/png", **headers
):
    return client.put(
        f"/tasks/{task_id}/corrections",
        content=body,
        headers={"Content-Type": content_type, **headers},
    )


def test_a_draft_is_kept_as_sent_and_replaced(client: httpx.Client) -> None:
    task_id = new_task(client)
    assert client.get(f"/tasks/{task_id}/corrections").status_code == 404
    first = draft_png(text='{"boxes": [[10, 5, 30, 20]]}')
    assert put(client, task_id, first).status_code == 204
    response = client.get(f"/tasks/{task_id}/corrections")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store"
    assert response.content == first  # the page's text chunks come back untouched
    kept = Image.open(io.BytesIO(response.content))
    assert kept.text["amseg"] == '{"boxes": [[10, 5, 30, 20]]}'
    second = draft_png(text='{"boxes": [], "sent_model": "m"}')
    assert put(client, task_id, second).status_code == 204
    assert client.get(f"/tasks/{task_id}/corrections").content == second


def test_two_tabs_do_not_overwrite_each_other_unseen(client: httpx.Client) -> None:
    """Each tab saves with the ETag of the draft it last saw: the one that saw an older draft
    (or none) is told so (412) instead of replacing the other's work, and may then keep its
    own on purpose (no precondition)."""
    task_id = new_task(client)
    mine, theirs = draft_png(text="mine"), draft_png(text="theirs")
    created = put(client, task_id, mine, **{"If-None-Match": "*"})  # tab A: no draft yet
    assert created.status_code == 204
    tag_a = created.headers["etag"]
    assert client.get(f"/tasks/{task_id}/corrections").headers["etag"] == tag_a
    late = put(client, task_id, theirs, **{"If-None-Match": "*"})  # tab B opened before A saved
    assert late.status_code == 412 and late.json()["type"].endswith("draft-changed")
    assert "another tab" in late.json()["detail"]
    replaced = put(client, task_id, theirs, **{"If-Match": tag_a})  # B loaded A's draft
    assert replaced.status_code == 204
    tag_b = replaced.headers["etag"]
    assert tag_b != tag_a
    stale = put(client, task_id, mine, **{"If-Match": tag_a})  # A goes on drawing
    assert stale.status_code == 412
    stale_delete = client.delete(f"/tasks/{task_id}/corrections", headers={"If-Match": tag_a})
    assert stale_delete.status_code == 412
    # A page that saw no draft and clears its boxes does not delete theirs either.
    unseen = client.delete(f"/tasks/{task_id}/corrections", headers={"If-None-Match": "*"})
    assert unseen.status_code == 412
    assert client.get(f"/tasks/{task_id}/corrections").content == theirs  # nothing lost
    assert put(client, task_id, mine).status_code == 204  # A keeps its own, on purpose
    assert client.get(f"/tasks/{task_id}/corrections").content == mine
    tag = client.get(f"/tasks/{task_id}/corrections").headers["etag"]
    deleted = client.delete(f"/tasks/{task_id}/corrections", headers={"If-Match": tag})
    assert deleted.status_code == 204
    assert put(client, task_id, mine, **{"If-None-Match": "a"}).status_code == 400


def test_drafts_that_are_not_labels_of_the_image_are_refused(client: httpx.Client) -> None:
    task_id = new_task(client)
    cases = [
        (draft_png(WIDTH + 1, HEIGHT), "image/png", 422, "mask-size-mismatch"),
        (draft_png(mode="RGB"), "image/png", 422, "invalid-corrections"),
        (b"not an image at all", "image/png", 415, "not-an-image"),
        (draft_png(), "text/plain", 415, "unsupported-media-type"),
    ]
    for body, content_type, status, kind in cases:
        response = put(client, task_id, body, content_type)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith(kind)
    jpeg = io.BytesIO()
    Image.new("L", (WIDTH, HEIGHT), 128).save(jpeg, format="JPEG")
    response = put(client, task_id, jpeg.getvalue(), "image/jpeg")
    assert response.status_code == 415 and response.json()["type"].endswith("not-a-png")
    assert client.get(f"/tasks/{task_id}/corrections").status_code == 404  # nothing kept


def test_drafts_of_unknown_tasks_and_deleting(client: httpx.Client, stack: ServiceStack) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    assert put(client, unknown, draft_png()).status_code == 404
    assert client.get(f"/tasks/{unknown}/corrections").status_code == 404
    task_id = new_task(client)
    assert put(client, task_id, draft_png()).status_code == 204
    assert client.delete(f"/tasks/{task_id}/corrections").status_code == 204
    response = client.get(f"/tasks/{task_id}/corrections")
    assert response.status_code == 404 and response.json()["type"].endswith("no-corrections")
    assert client.delete(f"/tasks/{task_id}/corrections").status_code == 404
    # A task's deletion takes its draft along.
    assert put(client, task_id, draft_png()).status_code == 204
    assert any(key.endswith("corrections/draft.png") for key in stack.s3_keys(f"tasks/{task_id}/"))
    assert client.delete(f"/tasks/{task_id}").status_code == 204
    assert stack.s3_keys(f"tasks/{task_id}/") == []


def test_unknown_query_parameters_are_refused(client: httpx.Client) -> None:
    task_id = new_task(client)
    response = client.put(
        f"/tasks/{task_id}/corrections?sent=1",
        content=draft_png(),
        headers={"Content-Type": "image/png"},
    )
    assert response.status_code == 422
