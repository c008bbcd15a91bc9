"""Registering a finished task again (POST /tasks/{id}/register) and the names of tasks and
downloads, through the real service: uvicorn, a Celery worker, Postgres, Redis, S3 on moto."""

import csv
import io

import httpx
import numpy as np
import pytest

from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from tests.service_stack import ServiceStack, png_bytes, read_png

pytestmark = pytest.mark.slow
ROWS, COLS = 6, 8
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def slide() -> np.ndarray:
    spec = random_spec(36, height=360, width=440, rows=ROWS, cols=COLS, mark_size=22)
    return generate_slide(fit_grid_inside(spec), 36).image


@pytest.fixture(scope="module")
def finished(stack: ServiceStack, slide: np.ndarray) -> str:
    """A FINISHED 6 x 8 task uploaded as the multipart file `slide7.png` (given with a path)."""
    with stack.client() as client:
        created = client.post(
            "/tasks",
            params={"rows": ROWS, "cols": COLS},
            files={"file": ("C:\\slides\\slide7.png", png_bytes(slide), "image/png")},
        )
        assert created.status_code == 201, created.text
        state = stack.wait_until_over(client, created.json()["id"])
        assert state["status"] == "FINISHED", state
        return state["id"]


def problem(response: httpx.Response, status: int, kind: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    if kind is not None:
        assert body["type"].endswith(f"/{kind}"), body
    return body


def marks_of(client: httpx.Client, task_id: str) -> dict[tuple[int, int], int]:
    """(row, col) -> id of every mark in the task's ams.csv."""
    text = client.get(f"/tasks/{task_id}/ams.csv").text
    return {(int(m["row"]), int(m["col"])): int(m["id"]) for m in csv.DictReader(io.StringIO(text))}


def register(client: httpx.Client, task_id: str, **params) -> httpx.Response:
    return client.post(f"/tasks/{task_id}/register", params=params)


def test_a_finished_task_is_registered_again_on_another_grid(
    stack: ServiceStack, finished: str
) -> None:
    with stack.client() as client:
        before = client.get(f"/tasks/{finished}").json()
        source_labels = client.get(f"/tasks/{finished}/labels").content
        source_marks = marks_of(client, finished)

        created = register(client, finished, rows=ROWS, cols=COLS + 2)
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        assert created.headers["location"] == f"/tasks/{task_id}"
        state = stack.wait_until_over(client, task_id, timeout=60)

        assert state["status"] == "FINISHED", state
        assert state["kind"] == "register" and before["kind"] == "segment"
        assert state["source_task"] == finished
        assert state["links"]["source_task"] == f"/tasks/{finished}"
        assert state["name"] == before["name"] == "slide7.png"
        assert state["image"] == before["image"]
        assert state["parameters"]["rows"] == ROWS and state["parameters"]["cols"] == COLS + 2
        assert state["summary"]["expected"] == ROWS * (COLS + 2)
        # Every mark keeps its grid place; ids count COLS + 2 columns a row now.
        marks = marks_of(client, task_id)
        assert marks.keys() == source_marks.keys() and len(marks) > ROWS * COLS // 2
        assert all(mark_id == row * (COLS + 2) + col + 1 for (row, col), mark_id in marks.items())
        labels = read_png(client.get(f"/tasks/{task_id}/labels").content)
        assert set(np.unique(labels[labels > 0]).tolist()) == set(marks.values())
        # The mask is the source's, read where it is: nothing segmented, nothing copied.
        assert client.get(f"/masks/{task_id}").content == client.get(f"/masks/{finished}").content
        assert not [
            k for k in stack.s3_keys(f"tasks/{task_id}/") if k.endswith(("input", "mask.png"))
        ]
        log = stack.workers[0].log_text()
        assert f"task {task_id}: registering the stored mask of task {finished}" in log
        assert f"task {task_id}: segmenting" not in log
        # The source is as it was.
        assert client.get(f"/tasks/{finished}").json() == before
        assert client.get(f"/tasks/{finished}/labels").content == source_labels
        listed = {t["id"]: t["kind"] for t in client.get("/tasks").json()["data"]}
        assert listed[task_id] == "register" and listed[finished] == "segment"


def test_register_without_a_grid_keeps_the_tasks_grid_and_a_register_task_can_be_registered(
    stack: ServiceStack, finished: str
) -> None:
    with stack.client() as client:
        first = register(client, finished).json()["id"]
        assert stack.wait_until_over(client, first, timeout=60)["status"] == "FINISHED"
        assert marks_of(client, first) == marks_of(client, finished)
        second = register(client, first, rows=ROWS + 1, cols=COLS)
        assert second.status_code == 201, second.text
        state = stack.wait_until_over(client, second.json()["id"], timeout=60)
        assert state["status"] == "FINISHED" and state["source_task"] == first
        rerun = client.post(f"/tasks/{first}/rerun").json()["id"]  # segments again
        rerun_state = stack.wait_until_over(client, rerun)
        assert rerun_state["kind"] == "segment" and rerun_state["name"] == "slide7.png"
        assert rerun_state["source_task"] == first


def test_known_mark_pins_the_grid(stack: ServiceStack, finished: str) -> None:
    from model.register import records

    if not hasattr(records, "KnownNode"):
        pytest.skip("model.register.records.KnownNode is not there yet")
    with stack.client() as client:
        source_marks = marks_of(client, finished)
        first = client.get(f"/tasks/{finished}/marks").json()["marks"][0]
        # Say the first mark sits one row lower and one column further right than found.
        created = register(
            client,
            finished,
            rows=ROWS + 1,
            cols=COLS + 1,
            mark_x=first["x"],
            mark_y=first["y"],
            mark_row=first["row"] + 1,
            mark_col=first["col"] + 1,
        )
        assert created.status_code == 201, created.text
        state = stack.wait_until_over(client, created.json()["id"], timeout=60)
        assert state["status"] == "FINISHED", state
        assert state["parameters"]["mark_row"] == first["row"] + 1
        moved = {(row + 1, col + 1) for row, col in source_marks}
        assert set(marks_of(client, state["id"])) == moved


def test_what_cannot_be_registered_is_a_problem_in_words(
    stack: ServiceStack, finished: str
) -> None:
    with stack.client() as client:
        problem(register(client, UNKNOWN, rows=3, cols=3), 404, "unknown-task")
        blank = client.post(
            "/tasks",
            params={"rows": 4, "cols": 4},
            content=png_bytes(np.zeros((128, 128), np.uint8)),
            headers={"Content-Type": "image/png"},
        ).json()["id"]
        failed = stack.wait_until_over(client, blank)
        assert failed["status"] == "FAILED"
        body = problem(register(client, blank, rows=3, cols=3), 409, "task-failed")
        assert failed["error"] in body["detail"]

        one = problem(register(client, finished, rows=5), 422)
        assert "give both rows and columns (number of grid rows and columns" in one["detail"]
        big = problem(register(client, finished, rows=300, cols=300), 422)
        assert "300 x 300 = 90 000 positions, more than a 440 x 360 px image" in big["detail"]
        typed = problem(register(client, finished, rows="thirty", cols=8), 422)
        assert typed["detail"] == "rows must be a whole number of grid rows, e.g. 30"
        half = problem(register(client, finished, mark_x=10, mark_y=10), 422)
        assert "give all four of mark_x, mark_y" in half["detail"]
        outside = register(client, finished, mark_x=1e6, mark_y=1, mark_row=0, mark_col=0)
        assert "outside the image (440 x 360 px)" in problem(outside, 422)["detail"]
        off = register(client, finished, mark_x=1, mark_y=1, mark_row=ROWS, mark_col=0)
        assert "must be below rows (6)" in problem(off, 422)["detail"]
        problem(register(client, finished, row=3), 422, "unknown-query-parameter")


def test_deleting_keeps_what_another_task_still_reads(stack: ServiceStack, slide) -> None:
    with stack.client() as client:
        source = client.post(
            "/tasks",
            params={"rows": ROWS, "cols": COLS, "name": "shared.tif"},
            content=png_bytes(slide),
            headers={"Content-Type": "image/png"},
        ).json()["id"]
        assert stack.wait_until_over(client, source)["status"] == "FINISHED"
        mask = client.get(f"/masks/{source}").content
        copy = register(client, source, rows=ROWS, cols=COLS).json()["id"]
        assert stack.wait_until_over(client, copy, timeout=60)["status"] == "FINISHED"

        assert client.delete(f"/tasks/{source}").status_code == 204
        # The image, the mask and their tile packs, which the register task reads in place.
        assert sorted(stack.s3_keys(f"tasks/{source}/")) == [
            f"tasks/{source}/input",
            f"tasks/{source}/mask.png",
            f"tasks/{source}/views/image.tiles",
            f"tasks/{source}/views/mask.tiles",
            f"tasks/{source}/views/outline.tiles",
        ]
        assert client.get(f"/masks/{copy}").content == mask
        assert client.get(f"/tasks/{copy}/tiles/image/0/0_0.png").status_code == 200
        assert client.get(f"/tasks/{copy}/tiles/outline/0/0_0.png").status_code == 200
        assert client.delete(f"/tasks/{copy}").status_code == 204
        assert stack.s3_keys(f"tasks/{source}/") == stack.s3_keys(f"tasks/{copy}/") == []


def test_downloads_are_named_after_the_slide(stack: ServiceStack, finished: str) -> None:
    with stack.client() as client:
        for path, filename in [
            (f"/masks/{finished}", "slide7_mask.png"),
            (f"/tasks/{finished}/labels", "slide7_labels.png"),
            (f"/tasks/{finished}/ams.csv", "slide7_ams.csv"),
            (f"/tasks/{finished}/overlay.png", "slide7_overlay.png"),
            (f"/tasks/{finished}/qc", "slide7_qc.json"),
            (f"/tasks/{finished}/marks", "slide7_marks.json"),
            (f"/tasks/{finished}/preview.png", "slide7_preview.png"),
        ]:
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-disposition"] == f'inline; filename="{filename}"'


def test_a_raw_upload_is_named_by_the_query_or_else_by_its_id(
    stack: ServiceStack, slide: np.ndarray
) -> None:
    with stack.client() as client:
        named = client.post(
            "/tasks",
            params={"name": "Präparat 3.tif"},
            content=png_bytes(slide),
            headers={"Content-Type": "image/png"},
        ).json()["id"]
        plain = client.post(
            "/tasks", content=png_bytes(slide), headers={"Content-Type": "image/png"}
        ).json()["id"]
        assert client.get(f"/tasks/{named}").json()["name"] == "Präparat 3.tif"
        assert client.get(f"/tasks/{plain}").json()["name"] is None
        for task_id in (named, plain):
            assert stack.wait_until_over(client, task_id)["status"] == "FINISHED"
        header = client.get(f"/masks/{named}").headers["content-disposition"]
        assert header.endswith("filename*=UTF-8''Pr%C3%A4parat%203_mask.png")
        header = client.get(f"/masks/{plain}").headers["content-disposition"]
        assert header == f'inline; filename="{plain}_mask.png"'
        rerun = client.post(f"/tasks/{named}/rerun").json()["id"]
        assert client.get(f"/tasks/{rerun}").json()["name"] == "Präparat 3.tif"
