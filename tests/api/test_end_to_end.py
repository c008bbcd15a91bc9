"""Upload, poll, download: the service gives the same results as the CLI for the same image."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from model.image.io import read_image
from model.metrics import dice, mark_id_accuracy
from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from tests.conftest import REAL_DATA
from tests.service_stack import ServiceStack, read_png

pytestmark = pytest.mark.slow


AMSEG = Path(sys.executable).with_name("amseg")


def amseg(*args: str) -> None:
    subprocess.run([AMSEG, *args], check=True, capture_output=True)


def test_real_crop_mask_matches_amseg_predict(stack: ServiceStack, tmp_path: Path) -> None:
    source = REAL_DATA / "source_small.png"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    with stack.client() as client:
        created = client.post("/tasks", files={"file": ("source_small.png", source.read_bytes())})
        assert created.status_code == 201, created.text
        body = created.json()
        assert created.headers["location"] == f"/tasks/{body['id']}"
        assert body["status"] == "QUEUED"
        state = stack.wait_until_over(client, body["id"])
        assert state["status"] == "FINISHED", state
        assert state["progress"] == 1.0
        assert state["started_at"] and state["finished_at"]
        response = client.get(body["links"]["mask"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        mask = read_png(response.content)
        overlay = client.get(body["links"]["overlay"])
        assert overlay.status_code == 200 and read_png(overlay.content).ndim == 3
        # Without a grid there is nothing registered.
        assert client.get(f"/tasks/{body['id']}/labels").status_code == 404

    amseg("predict", str(source), "-o", str(tmp_path))
    expected = read_image(tmp_path / "source_small_mask.png")
    assert mask.shape == expected.shape == read_image(source).shape[:2]
    assert set(np.unique(mask)) <= {0, 255}
    assert mask.any()
    assert dice(mask > 0, expected > 0) >= 0.999


def test_generated_grid_slide_is_registered_like_the_cli(
    stack: ServiceStack, tmp_path: Path
) -> None:
    rows, cols = 12, 14
    spec = fit_grid_inside(
        random_spec(4242, height=1024, width=1024, rows=rows, cols=cols, bit_depth=16, mark_size=30)
    )
    slide = generate_slide(spec, 4242)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, slide.image)
    with stack.client() as client:
        created = client.post(
            "/tasks",
            params={"rows": rows, "cols": cols},
            content=path.read_bytes(),
            headers={"Content-Type": "image/tiff"},
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        state = stack.wait_until_over(client, task_id)
        assert state["status"] == "FINISHED", state
        assert state["image"] == {
            "width": 1024,
            "height": 1024,
            "content_type": "image/tiff",
            "size_bytes": path.stat().st_size,
        }
        mask = read_png(client.get(f"/masks/{task_id}").content)
        labels_response = client.get(f"/tasks/{task_id}/labels")
        assert labels_response.headers["content-type"] == "image/png"
        labels = read_png(labels_response.content)
        table = client.get(f"/tasks/{task_id}/ams.csv")
        assert table.headers["content-type"].startswith("text/csv")
        qc = client.get(f"/tasks/{task_id}/qc").json()
        assert read_png(client.get(f"/tasks/{task_id}/overlay.png").content).ndim == 3

    assert labels.dtype == np.uint16 and labels.shape == (1024, 1024)
    assert mark_id_accuracy(labels, slide.labels) >= 0.95
    marks = list(csv.DictReader(io.StringIO(table.text)))
    assert {int(m["id"]) for m in marks} == set(np.unique(labels[labels > 0]).tolist())
    assert isinstance(qc, dict) and qc

    amseg("predict", str(path), "-o", str(tmp_path / "cli"))
    cli_mask = read_image(tmp_path / "cli" / "slide_mask.png")
    assert dice(mask > 0, cli_mask > 0) >= 0.999
    amseg(
        "register",
        "--mask",
        str(tmp_path / "cli" / "slide_mask.png"),
        "--rows",
        str(rows),
        "--cols",
        str(cols),
        "-o",
        str(tmp_path / "cli_reg"),
    )
    cli_labels = read_image(tmp_path / "cli_reg" / "am_coordinates.png")
    assert mark_id_accuracy(labels, cli_labels) >= 0.99
    cli_qc = json.loads((tmp_path / "cli_reg" / "qc.json").read_text())
    assert cli_qc.keys() == qc.keys()
