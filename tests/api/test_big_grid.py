"""A 300 x 300 acquisition (90 000 marks, more than 16 bits can number) through the real
service: segmented, registered with 32-bit ids, served as a TIFF by /labels, and read back
through the marks JSON the viewer uses."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import tifffile

from tests.model.grid_masks import GridSpec, id_accuracy, make_grid_mask
from tests.service_stack import ServiceStack, png_bytes

pytestmark = pytest.mark.slow
SIDE = 300  # rows and columns
# 6 px apart keeps the slide at 1806² px: the network looks at it enlarged 2x, in seconds.
BIG = GridSpec(rows=SIDE, cols=SIDE, pitch_x=6, pitch_y=6, seed=83)


def test_a_300_x_300_grid_end_to_end(stack: ServiceStack) -> None:
    grid = make_grid_mask(BIG)
    slide = grid.mask.astype(np.uint8) * 200 + 30  # bright marks on a dark matrix
    with stack.client() as client:
        created = client.post(
            "/tasks",
            params={"rows": SIDE, "cols": SIDE},
            files={"file": ("big.png", png_bytes(slide), "image/png")},
        )
        assert created.status_code == 201, created.text
        state = stack.wait_until_over(client, created.json()["id"], timeout=300)
        assert state["status"] == "FINISHED", state
        task_id = state["id"]
        assert state["summary"]["expected"] == SIDE * SIDE
        assert state["summary"]["found"] >= 0.99 * SIDE * SIDE

        labels = client.get(f"/tasks/{task_id}/labels")
        assert labels.headers["content-type"] == "image/tiff"
        assert 'filename="big_labels.tiff"' in labels.headers["content-disposition"]
        ids = tifffile.imread(io.BytesIO(labels.content))
        assert ids.dtype == np.uint32 and int(ids.max()) > 65_535
        assert id_accuracy(ids, grid.labels)["accuracy"] >= 0.99
        assert client.get(f"/tasks/{task_id}/labels.tiff").content == labels.content

        ams = list(csv.DictReader(io.StringIO(client.get(f"/tasks/{task_id}/ams.csv").text)))
        marks = client.get(f"/tasks/{task_id}/marks").json()
    assert len(marks["marks"]) == len(ams) == state["summary"]["found"]
    assert marks["expected"] == SIDE * SIDE
    last = max(marks["marks"], key=lambda mark: mark["id"])
    assert last["id"] > 65_535 and last["id"] == last["row"] * SIDE + last["col"] + 1
