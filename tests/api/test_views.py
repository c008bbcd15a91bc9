"""What the web viewer reads, through the real service: the tile pyramid of the image and the
mask, previews, the mark table as JSON, re-runs, their limits and problems; tasks finished
before workers made tiles; and the page and the API docs served from local files."""

import csv
import io
import json
import re
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from model.image.normalize import intensity_window, to_uint8
from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from store.tasks import Task, TaskKind, get_task
from tests.service_stack import ServiceStack, png_bytes, read_png

API_KEY = "v" * 8 + "-viewer-key-0123456789"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(make_stack) -> ServiceStack:
    return make_stack(workers=1, API_KEYS=API_KEY)


@pytest.fixture(scope="module")
def client(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client(headers={"X-API-Key": API_KEY}) as client:
        yield client


def submit(client: httpx.Client, data: bytes, **params) -> str:
    response = client.post(
        "/tasks", content=data, headers={"Content-Type": "image/png"}, params=params
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def slide() -> np.ndarray:
    """A 16-bit synthetic slide with a 6 x 6 grid, wider than two tiles."""
    spec = fit_grid_inside(random_spec(5, height=400, width=600, rows=6, cols=6, mark_size=24))
    image = generate_slide(spec, 5).image
    return (image.astype(np.uint16) * 200 + 100).astype(np.uint16)


@pytest.fixture(scope="module")
def finished(stack: ServiceStack, client: httpx.Client, slide: np.ndarray) -> str:
    task_id = submit(client, png_bytes(slide), rows=6, cols=6)
    assert stack.wait_until_over(client, task_id)["status"] == "FINISHED"
    return task_id


def problem(response: httpx.Response, status: int, kind: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    if kind is not None:
        assert body["type"].endswith(f"/{kind}"), body
    return body


def test_the_pyramid_describes_levels_layers_and_tile_urls(
    client: httpx.Client, finished: str
) -> None:
    pyramid = client.get(f"/tasks/{finished}/pyramid").json()
    assert (pyramid["width"], pyramid["height"], pyramid["tile_size"]) == (600, 400, 256)
    assert [(lv["width"], lv["height"], lv["cols"], lv["rows"]) for lv in pyramid["levels"]] == [
        (600, 400, 3, 2),
        (300, 200, 2, 1),
        (150, 100, 1, 1),
    ]
    assert pyramid["layers"] == ["image", "mask", "outline"]
    assert pyramid["state"] == "ready"
    template = pyramid["links"]["tiles"]
    url = template.format(layer="image", level=2, col=0, row=0)
    assert client.get(url).status_code == 200


def test_image_tiles_are_the_input_as_the_model_sees_it(
    client: httpx.Client, finished: str, slide: np.ndarray
) -> None:
    expected = to_uint8(intensity_window(slide).apply(slide))
    tile = client.get(f"/tasks/{finished}/tiles/image/0/2_1.png")
    assert tile.headers["content-type"] == "image/png"
    assert "max-age" in tile.headers["cache-control"]
    pixels = read_png(tile.content)
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected[256:400, 512:600])
    assert read_png(client.get(f"/tasks/{finished}/tiles/image/2/0_0.png").content).shape == (
        100,
        150,
    )


def test_mask_and_outline_tiles_follow_the_mask(client: httpx.Client, finished: str) -> None:
    mask = read_png(client.get(f"/masks/{finished}").content)
    tile = read_png(client.get(f"/tasks/{finished}/tiles/mask/0/1_0.png").content)
    np.testing.assert_array_equal(tile, mask[0:256, 256:512])
    outline = read_png(client.get(f"/tasks/{finished}/tiles/outline/0/1_0.png").content)
    assert set(np.unique(outline)) <= {0, 255} and outline.any()
    assert not (outline.astype(bool) & ~tile.astype(bool)).any()  # edges lie on the marks
    coarse = read_png(client.get(f"/tasks/{finished}/tiles/mask/1/0_0.png").content)
    assert coarse.shape == (200, 256) and 0 < coarse.mean() < 255


def test_previews_fit_the_longest_side_and_have_limits(client: httpx.Client, finished: str) -> None:
    preview = read_png(
        client.get(f"/tasks/{finished}/preview.png", params={"max_side": 120}).content
    )
    assert preview.shape == (80, 120)
    assert read_png(client.get(f"/tasks/{finished}/preview.png").content).shape == (400, 600)
    problem(client.get(f"/tasks/{finished}/preview.png", params={"max_side": 5000}), 422)
    problem(client.get(f"/tasks/{finished}/preview.png", params={"side": 100}), 422)


def test_marks_json_is_the_csv_with_missing_nodes_and_extra_objects(
    client: httpx.Client, finished: str
) -> None:
    record = client.get(f"/tasks/{finished}/marks").json()
    rows = list(csv.DictReader(io.StringIO(client.get(f"/tasks/{finished}/ams.csv").text)))
    qc = client.get(f"/tasks/{finished}/qc").json()
    assert (record["rows"], record["cols"], record["expected"]) == (6, 6, 36)
    assert record["found"] == len(rows) == qc["found"] > 0
    assert [mark["id"] for mark in record["marks"]] == [int(row["id"]) for row in rows]
    first = record["marks"][0]
    assert first["bbox"] == [int(rows[0][f"bbox_{c}"]) for c in ("x0", "y0", "x1", "y1")]
    assert [node["id"] for node in record["missing"]] == qc["missing_ids"]
    for node in record["missing"]:
        assert 0 <= node["x"] < 600 + 100 and 0 <= node["y"] < 400 + 100
    assert record["extra_total"] == len(record["extra"])


def test_views_refuse_what_is_not_there(
    stack: ServiceStack, client: httpx.Client, finished: str
) -> None:
    base = f"/tasks/{finished}/tiles"
    body = problem(client.get(f"{base}/image/0/3_0.png"), 404, "no-such-tile")
    assert "3 x 2 tiles" in body["detail"]
    problem(client.get(f"{base}/image/3/0_0.png"), 404, "no-such-tile")
    problem(client.get(f"{base}/image/-1/0_0.png"), 422)
    problem(client.get(f"{base}/colour/0/0_0.png"), 422)
    problem(client.get(f"{base}/image/0/0_0.png", params={"x": 1}), 422, "unknown-query-parameter")
    unknown = "00000000-0000-4000-8000-000000000000"
    problem(client.get(f"/tasks/{unknown}/tiles/image/0/0_0.png"), 404, "unknown-task")
    problem(client.get(f"/tasks/{unknown}/marks"), 404, "unknown-task")
    problem(client.get(f"/tasks/{unknown}/pyramid"), 404, "unknown-task")
    with stack.client() as anonymous:
        problem(anonymous.get(f"{base}/image/0/0_0.png"), 401)


def test_results_layers_wait_for_a_finished_task(make_stack) -> None:
    """The API decodes no image: a QUEUED task's tiles are made by the worker that runs it,
    so until one starts they are a 409 to ask again; then they come, and the results' layers
    once it is FINISHED."""
    idle = make_stack(workers=0)
    with idle.client() as client:
        task_id = submit(client, png_bytes(np.full((300, 300), 7, np.uint8)))
        pyramid = client.get(f"/tasks/{task_id}/pyramid").json()
        assert (pyramid["width"], pyramid["layers"], pyramid["state"]) == (300, [], "pending")
        waiting = client.get(f"/tasks/{task_id}/tiles/image/0/1_1.png")
        body = problem(waiting, 409, "tiles-not-ready")
        assert waiting.headers["retry-after"] and "worker" in body["detail"]
        problem(client.get(f"/tasks/{task_id}/preview.png"), 409, "tiles-not-ready")
        waiting = client.get(f"/tasks/{task_id}/tiles/mask/0/0_0.png")
        problem(waiting, 409, "task-not-finished")
        assert waiting.headers["retry-after"]
        problem(client.get(f"/tasks/{task_id}/marks"), 409, "task-not-finished")

        idle.start_worker()
        assert idle.wait_until_over(client, task_id)["status"] == "FINISHED"
        image = client.get(f"/tasks/{task_id}/tiles/image/0/1_1.png")
        assert image.status_code == 200 and read_png(image.content).shape == (44, 44)
        pyramid = client.get(f"/tasks/{task_id}/pyramid").json()
        assert (pyramid["layers"], pyramid["state"]) == (["image", "mask", "outline"], "ready")


def test_failed_and_unregistered_tasks_have_no_marks(
    stack: ServiceStack, client: httpx.Client
) -> None:
    failed = submit(client, png_bytes(np.zeros((256, 256), np.uint8)), rows=4, cols=4)
    assert stack.wait_until_over(client, failed)["status"] == "FAILED"
    problem(client.get(f"/tasks/{failed}/tiles/outline/0/0_0.png"), 409, "task-failed")
    plain = submit(client, png_bytes(np.full((128, 128), 50, np.uint8)))
    assert stack.wait_until_over(client, plain)["status"] == "FINISHED"
    problem(client.get(f"/tasks/{plain}/marks"), 404, "not-registered")
    assert client.get(f"/tasks/{plain}/tiles/mask/0/0_0.png").status_code == 200


def damaged_png() -> bytes:
    """A PNG whose header is fine (the API accepts it) and whose pixel data is cut short."""
    data = png_bytes(np.random.default_rng(36).integers(0, 255, (300, 400), dtype=np.uint8))
    return data[: len(data) // 2]


def api_log(stack: ServiceStack) -> str:
    return (stack.directory / "api.log").read_text(errors="replace")


def test_a_failed_tasks_views_are_small_problems_without_tracebacks(
    stack: ServiceStack, client: httpx.Client
) -> None:
    task_id = submit(client, damaged_png())
    state = stack.wait_until_over(client, task_id)
    assert state["status"] == "FAILED" and "truncated" in state["error"]
    logged_before = len(api_log(stack))
    base = f"/tasks/{task_id}"
    paths = [
        f"{base}/pyramid",
        f"{base}/tiles/image/0/0_0.png",
        f"{base}/tiles/mask/0/0_0.png",
        f"{base}/tiles/outline/1/0_0.png",
        f"{base}/preview.png",
        f"{base}/marks",
        f"/masks/{task_id}",
        f"{base}/labels",
        f"{base}/ams.csv",
        f"{base}/overlay.png",
        f"{base}/qc",
    ]
    for _ in range(5):  # a viewer asks again and again
        for path in paths:
            body = problem(client.get(path), 409, "task-failed")
            assert state["error"] in body["detail"], path
    assert "Traceback" not in api_log(stack)[logged_before:]


def test_a_queued_tasks_damaged_image_is_not_the_apis_to_decode(make_stack) -> None:
    """Before a worker reads it, a damaged image is like any other: its tiles wait for the
    worker (which fails the task in words: the test above), and the API logs nothing."""
    idle = make_stack(workers=0)
    with idle.client() as client:
        task_id = submit(client, damaged_png())
        pyramid = client.get(f"/tasks/{task_id}/pyramid")  # from the header
        assert pyramid.status_code == 200 and pyramid.json()["state"] == "pending"
        for col in range(20):
            tile = client.get(f"/tasks/{task_id}/tiles/image/0/{col % 2}_0.png")
            problem(tile, 409, "tiles-not-ready")
        problem(client.get(f"/tasks/{task_id}/preview.png"), 409, "tiles-not-ready")
    log = api_log(idle)
    assert "Traceback" not in log and "decode" not in log


def finished_before_workers_made_tiles(stack: ServiceStack, task_id: str) -> None:
    """Make a FINISHED task what one finished by an earlier version is: no tile packs, no mark
    table, no exports."""
    with stack.sessions()() as session:
        task = get_task(session, task_id)
        task.result_keys = {
            name: key
            for name, key in task.result_keys.items()
            if not name.startswith(("views/", "exports/"))
        }
        session.commit()
    stack.blobs().delete_prefix(f"tasks/{task_id}/views/")
    assert not stack.s3_keys(f"tasks/{task_id}/views/")


def views_tasks(stack: ServiceStack, task_id: str) -> list[Task]:
    with stack.sessions()() as session:
        found = session.query(Task).filter(Task.kind == TaskKind.VIEWS).all()
        return [task for task in found if str(task.source_task) == task_id]


def eventually(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.2)


def test_a_task_finished_before_workers_made_tiles_gets_them_from_a_worker(
    stack: ServiceStack, client: httpx.Client, slide: np.ndarray
) -> None:
    task_id = submit(client, png_bytes(slide), rows=6, cols=6)
    assert stack.wait_until_over(client, task_id)["status"] == "FINISHED"
    tiles = ["image/0/1_0", "mask/0/1_0", "outline/0/1_0", "image/2/0_0"]
    before = {tile: client.get(f"/tasks/{task_id}/tiles/{tile}.png").content for tile in tiles}
    marks = client.get(f"/tasks/{task_id}/marks").json()
    finished_before_workers_made_tiles(stack, task_id)

    # The first look asks a worker for them (one views task, whoever asks meanwhile).
    pyramid = client.get(f"/tasks/{task_id}/pyramid").json()
    assert (pyramid["layers"], pyramid["state"]) == ([], "building")
    waiting = client.get(f"/tasks/{task_id}/tiles/image/0/0_0.png")
    if waiting.status_code == 409:
        body = problem(waiting, 409, "tiles-not-ready")
        assert waiting.headers["retry-after"] and "worker" in body["detail"]
    eventually(lambda: client.get(f"/tasks/{task_id}/pyramid").json()["state"] == "ready")

    pyramid = client.get(f"/tasks/{task_id}/pyramid").json()
    assert pyramid["layers"] == ["image", "mask", "outline"]
    for tile, data in before.items():
        assert client.get(f"/tasks/{task_id}/tiles/{tile}.png").content == data, tile
    assert client.get(f"/tasks/{task_id}/marks").json() == marks
    made = views_tasks(stack, task_id)
    assert [(task.status.value, task.summary["source_task"]) for task in made] == [
        ("FINISHED", task_id)
    ]
    # Listed nowhere, and gone with their task.
    assert task_id in [task["id"] for task in client.get("/tasks").json()["data"]]
    assert str(made[0].id) not in json.dumps(client.get("/tasks").json())
    assert client.delete(f"/tasks/{task_id}").status_code == 204
    assert views_tasks(stack, task_id) == [] and not stack.s3_keys(f"tasks/{task_id}/")


def test_rerun_segments_the_same_image_again(
    stack: ServiceStack, client: httpx.Client, finished: str
) -> None:
    response = client.post(f"/tasks/{finished}/rerun", params={"model": "default"})
    assert response.status_code == 201, response.text
    rerun = response.json()["id"]
    assert response.headers["location"] == f"/tasks/{rerun}"
    state = stack.wait_until_over(client, rerun)
    original = client.get(f"/tasks/{finished}").json()
    assert state["status"] == "FINISHED"
    assert state["image"] == original["image"]
    assert state["parameters"] == {**original["parameters"], "model": "default"}
    assert client.get(f"/masks/{rerun}").content == client.get(f"/masks/{finished}").content
    problem(client.post(f"/tasks/{finished}/rerun", params={"model": "nope"}), 422, "unknown-model")
    unknown = "00000000-0000-4000-8000-000000000000"
    problem(client.post(f"/tasks/{unknown}/rerun"), 404, "unknown-task")
    problem(client.post(f"/tasks/{finished}/rerun", params={"modle": "x"}), 422)


def test_deleting_a_task_drops_its_views(stack: ServiceStack, client: httpx.Client) -> None:
    task_id = submit(client, png_bytes(np.full((64, 64), 9, np.uint8)))
    assert stack.wait_until_over(client, task_id)["status"] == "FINISHED"
    assert client.get(f"/tasks/{task_id}/preview.png").status_code == 200
    assert sorted(stack.s3_keys(f"tasks/{task_id}/views/")) == [
        f"tasks/{task_id}/views/{layer}.tiles" for layer in ("image", "mask", "outline")
    ]
    assert client.delete(f"/tasks/{task_id}").status_code == 204
    assert not stack.s3_keys(f"tasks/{task_id}/")
    problem(client.get(f"/tasks/{task_id}/tiles/image/0/0_0.png"), 404, "unknown-task")


def test_the_page_and_the_docs_are_served_from_here(stack: ServiceStack) -> None:
    with stack.client() as anonymous:  # no API key: the page asks for one itself
        page = anonymous.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        html = page.text
        for path in ("/docs", "/redoc"):
            docs = anonymous.get(path)
            assert docs.status_code == 200
            assert re.findall(r"https?://", docs.text) == []  # the page and its options
            assert "default-src 'self'" in docs.headers["content-security-policy"]
            html += docs.text
        assets = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))
        expected = {
            "/static/main.js",
            "/static/app.css",
            "/static/vendor/swagger-ui/swagger-ui-bundle.js",
            "/static/vendor/swagger-ui/swagger-ui.css",
            "/static/vendor/redoc/redoc.standalone.js",
        }
        assert expected <= assets
        for asset in assets:
            assert anonymous.get(asset).status_code == 200, asset
        # ReDoc's bundle loads no image or script from the internet (its CDN logo is patched
        # out); what is left are links a person may click and schema identifiers.
        redoc = anonymous.get("/static/vendor/redoc/redoc.standalone.js").text
        assert "cdn." not in redoc
        assert re.findall(r"src\s*[:=]\s*[\"'`]https?://", redoc) == []
        paths = json.dumps(anonymous.get("/openapi.json").json()["paths"])
        assert "/tasks/{task_id}/tiles/{layer}/{level}/{col}_{row}.png" in paths
