"""Fine-tuning as a job of the service: POST /models from a task's image and a user's labels
(or the grid), the job runs on a worker, and tasks use the model with ?model=<id>."""

import json

import httpx
import numpy as np
import pytest

from model.segment.runtime import nncf_available
from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from store.blobs import MODEL_IR, MODEL_IR_INT8, task_blob_key, task_prefix
from tests.service_stack import ServiceStack, png_bytes, read_png

pytestmark = pytest.mark.slow
ROWS, COLS = 6, 6


@pytest.fixture(scope="module")
def slide():
    spec = random_spec(9001, height=384, width=384, rows=ROWS, cols=COLS, mark_size=22)
    return generate_slide(fit_grid_inside(spec), 9001)


@pytest.fixture(scope="module")
def finished_task(stack: ServiceStack, slide) -> str:
    with stack.client() as client:
        created = client.post(
            "/tasks",
            content=png_bytes(slide.image),
            headers={"Content-Type": "image/png"},
            params={"rows": ROWS, "cols": COLS},
        )
        assert created.status_code == 201, created.text
        state = stack.wait_until_over(client, created.json()["id"])
        assert state["status"] == "FINISHED", state
        return state["id"]


def labels_in_the_top_half(truth: np.ndarray) -> np.ndarray:
    """What a user draws: the top half labelled (marks 255, background 0), the rest 128."""
    labels = np.full(truth.shape, 128, np.uint8)
    half = truth.shape[0] // 2
    labels[:half] = np.where(truth[:half] > 0, 255, 0)
    return labels


def post_model(client: httpx.Client, body: bytes | None, **params) -> httpx.Response:
    headers = {"Content-Type": "image/png"} if body is not None else {}
    return client.post("/models", content=body or b"", headers=headers, params=params)


def test_a_model_tuned_on_labels_is_used_by_a_later_task(
    stack: ServiceStack, slide, finished_task: str
) -> None:
    labels = png_bytes(labels_in_the_top_half(slide.mask))
    with stack.client() as client:
        created = post_model(client, labels, task=finished_task, minutes=0.1)
        assert created.status_code == 201, created.text
        model = created.json()
        assert model["status"] == "QUEUED" and model["parameters"]["labelled"] is True
        state = stack.wait_until_over(client, model["id"], timeout=300, resource="models")
        assert state["status"] == "FINISHED", state
        assert state["summary"]["seconds"] > 0
        card = client.get(state["links"]["card"])
        assert card.status_code == 200
        assert json.loads(card.content)["format"] == "amseg-model/1"
        assert model["id"] in {m["id"] for m in client.get("/models").json()["data"]}
        # Its OpenVINO IR is stored with it: a worker without PyTorch can run it.
        stored = set(stack.blobs().list_keys(task_prefix(model["id"])))
        assert {task_blob_key(model["id"], blob) for blob in MODEL_IR} <= stored
        # ... and, where NNCF is installed, its int8 IR, checked on the labels it was given.
        int8_stored = {task_blob_key(model["id"], blob) for blob in MODEL_IR_INT8} <= stored
        assert int8_stored == nncf_available()
        assert (state["summary"]["int8_check"] is not None) == nncf_available()
        # The model is not a task, and a task is not a model.
        assert client.get(f"/tasks/{model['id']}").status_code == 404
        assert client.get(f"/models/{finished_task}").status_code == 404

        used = client.post(
            "/tasks",
            content=png_bytes(slide.image),
            headers={"Content-Type": "image/png"},
            params={"model": model["id"]},
        )
        assert used.status_code == 201, used.text
        result = stack.wait_until_over(client, used.json()["id"])
        assert result["status"] == "FINISHED", result
        assert result["parameters"]["model"] == model["id"]
        mask = read_png(client.get(result["links"]["mask"]).content)
        assert mask.shape == slide.mask.shape and mask.any()

        assert client.delete(f"/models/{model['id']}").status_code == 204
        assert client.get(f"/models/{model['id']}").status_code == 404
        gone = client.post(
            "/tasks",
            content=png_bytes(slide.image),
            headers={"Content-Type": "image/png"},
            params={"model": model["id"]},
        )
        assert gone.status_code == 422


def test_label_free_mode_takes_the_grid_of_the_task(
    stack: ServiceStack, finished_task: str
) -> None:
    with stack.client() as client:
        created = post_model(client, None, task=finished_task, minutes=0.5)
        assert created.status_code == 201, created.text
        parameters = created.json()["parameters"]
        assert parameters["labelled"] is False
        assert (parameters["rows"], parameters["cols"]) == (ROWS, COLS)
        state = stack.wait_until_over(client, created.json()["id"], timeout=300, resource="models")
        assert state["status"] == "FINISHED", state


def test_bad_model_requests_are_problems(stack: ServiceStack, slide, finished_task: str) -> None:
    with stack.client() as client:
        unknown = post_model(client, None, task="00000000-0000-4000-8000-000000000000")
        assert unknown.status_code == 404
        small = png_bytes(np.zeros((10, 10), np.uint8))
        mismatch = post_model(client, small, task=finished_task)
        assert mismatch.status_code == 422 and "384x384" in mismatch.json()["detail"]
        no_grid = client.post(
            "/tasks", content=png_bytes(slide.image), headers={"Content-Type": "image/png"}
        )
        label_free = post_model(client, None, task=no_grid.json()["id"])
        assert label_free.status_code == 422
        assert label_free.json()["detail"] == (
            "without labels the fine-tune learns from the grid: give its rows and columns"
        )
        too_long = post_model(client, None, task=finished_task, minutes=600)
        assert too_long.status_code == 422
        bogus = client.post(
            "/tasks",
            content=png_bytes(slide.image),
            headers={"Content-Type": "image/png"},
            params={"model": "00000000-0000-4000-8000-000000000000"},
        )
        assert bogus.status_code == 422 and "no model" in bogus.json()["detail"]
