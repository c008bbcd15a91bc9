"""A re-run's changes against the task it was made from, through the real service: the counts
in its summary, the diff PNG and the `diff` tile layer; a task that was not re-run has none."""

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from tests.service_stack import ServiceStack, png_bytes, read_png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(make_stack) -> ServiceStack:
    return make_stack(workers=1)


@pytest.fixture(scope="module")
def client(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


@pytest.fixture(scope="module")
def source_and_rerun(stack: ServiceStack, client: httpx.Client) -> tuple[str, str]:
    spec = fit_grid_inside(random_spec(3, height=300, width=420, rows=5, cols=6, mark_size=24))
    data = png_bytes(generate_slide(spec, 3).image)
    response = client.post(
        "/tasks", files={"file": ("slide3.png", data, "image/png")}, params={"rows": 5, "cols": 6}
    )
    source = response.json()["id"]
    assert stack.wait_until_over(client, source)["status"] == "FINISHED"
    rerun = client.post(f"/tasks/{source}/rerun").json()["id"]
    assert stack.wait_until_over(client, rerun)["status"] == "FINISHED"
    return source, rerun


def test_a_rerun_counts_what_changed(client: httpx.Client, source_and_rerun) -> None:
    source, rerun = source_and_rerun
    task = client.get(f"/tasks/{rerun}").json()
    changes = task["summary"]["changes"]
    found = client.get(f"/tasks/{source}").json()["summary"]["found"]
    # The same model on the same image: every mark is where it was.
    assert changes["source_task"] == source
    assert changes["before"] == changes["after"] >= found > 0
    assert changes["unchanged"] == changes["before"]
    assert changes["added"] == changes["removed"] == changes["changed"] == 0
    assert "changes" not in client.get(f"/tasks/{source}").json()["summary"]


def test_the_changes_as_a_png_and_as_tiles(client: httpx.Client, source_and_rerun) -> None:
    source, rerun = source_and_rerun
    response = client.get(f"/tasks/{rerun}/diff.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert 'filename="slide3_diff.png"' in response.headers["content-disposition"]
    diff = read_png(response.content)
    assert diff.shape == (300, 420) and diff.dtype == np.uint8 and not diff.any()
    assert "diff" in client.get(f"/tasks/{rerun}/pyramid").json()["layers"]
    tile = client.get(f"/tasks/{rerun}/tiles/diff/0/1_0.png")
    assert tile.status_code == 200
    assert read_png(tile.content).shape == (256, 164) and not read_png(tile.content).any()
    # The first task was not made from another: it has no changes to show.
    assert "diff" not in client.get(f"/tasks/{source}/pyramid").json()["layers"]
    for path in (f"/tasks/{source}/diff.png", f"/tasks/{source}/tiles/diff/0/0_0.png"):
        refused = client.get(path)
        assert refused.status_code == 404 and refused.json()["type"].endswith("no-changes")


def test_a_rerun_keeps_its_own_copy_of_the_sources_image_tiles(
    client: httpx.Client, source_and_rerun
) -> None:
    """The re-run was given the source's image tile pack (not made again) as its own copy:
    the same tiles, still there after the source is deleted. Last here: it deletes the source."""
    source, rerun = source_and_rerun
    path = "tiles/image/0/0_0.png"
    before = client.get(f"/tasks/{source}/{path}")
    assert before.status_code == 200
    assert client.get(f"/tasks/{rerun}/{path}").content == before.content
    assert client.delete(f"/tasks/{source}").status_code == 204
    after = client.get(f"/tasks/{rerun}/{path}")
    assert after.status_code == 200 and after.content == before.content
