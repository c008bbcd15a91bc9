"""An acquisition's imzML sent with a slide (POST /tasks) or with a registration (POST
/tasks/{id}/register), joined to the marks through the real service, and the exports made from
the ids: marks.geojson for QuPath and the 32-bit labels TIFF for napari."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile

from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from tests.api.test_register import problem
from tests.model.register.imzml_files import serpentine, write_imzml
from tests.service_stack import ServiceStack, png_bytes, read_png

pytestmark = pytest.mark.slow
ROWS, COLS = 6, 8


@pytest.fixture(scope="module")
def slide() -> np.ndarray:
    spec = random_spec(36, height=360, width=440, rows=ROWS, cols=COLS, mark_size=22)
    return generate_slide(fit_grid_inside(spec), 36).image


@pytest.fixture(scope="module")
def imzml(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A serpentine acquisition of every node of the 6 x 8 grid, without its .ibd."""
    path = tmp_path_factory.mktemp("imzml") / "run.imzML"
    return write_imzml(path, serpentine(ROWS, COLS)).read_bytes()


@pytest.fixture(scope="module")
def joined(stack: ServiceStack, slide: np.ndarray, imzml: bytes) -> str:
    """A FINISHED task of `slide7.png` sent with its imzML and no rows or cols."""
    with stack.client() as client:
        created = client.post(
            "/tasks",
            files={
                "file": ("slide7.png", png_bytes(slide), "image/png"),
                "imzml": ("run.imzML", imzml, "application/xml"),
            },
        )
        assert created.status_code == 201, created.text
        state = stack.wait_until_over(client, created.json()["id"])
        assert state["status"] == "FINISHED", state
        return state["id"]


def spectra_by_node(client: httpx.Client, task_id: str) -> dict[tuple[int, int], int]:
    """(row, col) -> spectrum of every mark in the task's ams.csv (-1: none)."""
    text = client.get(f"/tasks/{task_id}/ams.csv").text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) >= ROWS * COLS // 2  # the network finds most marks of this slide
    return {(int(r["row"]), int(r["col"])): int(r["spectrum"] or -1) for r in rows}


def expected_at(nodes, positions: list[tuple[int, int]], node_of) -> dict:
    """The spectrum index each of `nodes` must get: spectrum k was shot at positions[k]."""
    spectrum = {node_of(x, y): k for k, (x, y) in enumerate(positions)}
    return {node: spectrum[node] for node in nodes}


def serpentine_at(nodes) -> dict[tuple[int, int], int]:
    return expected_at(nodes, serpentine(ROWS, COLS), lambda x, y: (y - 1, x - 1))


def test_a_slide_sent_with_its_imzml_gets_the_grid_and_the_spectra(
    stack: ServiceStack, joined: str
) -> None:
    with stack.client() as client:
        state = client.get(f"/tasks/{joined}").json()
        assert state["parameters"]["imzml"] is True and state["parameters"]["rows"] is None
        assert state["summary"]["expected"] == ROWS * COLS  # the imzML's grid
        assert state["summary"]["acquisition"]["spectra"] == ROWS * COLS
        assert state["summary"]["acquisition"]["marks_without_spectrum"] == 0
        spectra = spectra_by_node(client, joined)
        assert spectra == serpentine_at(spectra)  # serpentine: row 1 runs right to left
        marks = client.get(f"/tasks/{joined}/marks").json()["marks"]
        assert {(m["row"], m["col"]): m["spectrum"] for m in marks} == spectra
        assert state["links"]["marks_geojson"] == f"/tasks/{joined}/marks.geojson"


def test_marks_geojson_has_one_polygon_per_mark(stack: ServiceStack, joined: str) -> None:
    with stack.client() as client:
        response = client.get(f"/tasks/{joined}/marks.geojson")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/geo+json"
        assert 'filename="slide7_marks.geojson"' in response.headers["content-disposition"]
        collection = response.json()
        ams = list(csv.DictReader(io.StringIO(client.get(f"/tasks/{joined}/ams.csv").text)))
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == len(ams)
    spectra = serpentine_at(
        {(f["properties"]["row"], f["properties"]["col"]) for f in collection["features"]}
    )
    for feature in collection["features"]:
        properties = feature["properties"]
        node = (properties["row"], properties["col"])
        assert properties["id"] == node[0] * COLS + node[1] + 1
        assert properties["spectrum"] == spectra[node]
        assert properties["objectType"] == "detection"
        assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")


def test_labels_tiff_is_the_id_image_in_32_bits(stack: ServiceStack, joined: str) -> None:
    with stack.client() as client:
        png = read_png(client.get(f"/tasks/{joined}/labels").content)
        response = client.get(f"/tasks/{joined}/labels.tiff")
    assert response.status_code == 200 and response.headers["content-type"] == "image/tiff"
    assert 'filename="slide7_labels.tiff"' in response.headers["content-disposition"]
    ids = tifffile.imread(io.BytesIO(response.content))
    assert ids.dtype == np.uint32
    np.testing.assert_array_equal(ids, png)


def test_register_with_a_mirrored_imzml_then_again_with_the_same(
    stack: ServiceStack, joined: str, tmp_path: Path
) -> None:
    mirrored = [(COLS + 1 - x, y) for x, y in serpentine(ROWS, COLS)]
    body = write_imzml(tmp_path / "mirrored.imzML", mirrored).read_bytes()
    with stack.client() as client:
        created = client.post(
            f"/tasks/{joined}/register",
            params={"flip_x": "true"},
            files={"imzml": ("mirrored.imzML", body, "application/xml")},
        )
        assert created.status_code == 201, created.text
        first = stack.wait_until_over(client, created.json()["id"], timeout=60)
        assert first["status"] == "FINISHED", first
        spectra = spectra_by_node(client, first["id"])
        assert spectra == expected_at(spectra, mirrored, lambda x, y: (y - 1, COLS - x))

        # No body: the task's own imzML (copied) and orientation, on the grid given.
        again = client.post(f"/tasks/{first['id']}/register", params={"rows": 6, "cols": 8})
        state = stack.wait_until_over(client, again.json()["id"], timeout=60)
        assert state["status"] == "FINISHED", state
        assert state["parameters"]["flip_x"] is True
        assert spectra_by_node(client, state["id"]) == spectra


def test_imzml_errors_are_problems_in_words(
    stack: ServiceStack, slide: np.ndarray, joined: str
) -> None:
    image = ("slide.png", png_bytes(slide), "image/png")
    with stack.client() as client:
        before = stack.s3_keys()
        html = client.post("/tasks", files={"file": image, "imzml": ("a.imzML", b"<html/>")})
        assert "not an imzML file" in problem(html, 415, "not-imzml")["detail"]
        flags = client.post("/tasks", params={"flip_x": "true"}, files={"file": image})
        assert "orient an imzML" in problem(flags, 422)["detail"]
        hidden = client.post("/tasks", params={"imzml": "true"}, files={"file": image})
        problem(hidden, 422, "unknown-query-parameter")
        assert stack.s3_keys() == before  # nothing stored for a refused upload

        empty = b'<?xml version="1.0"?><mzML xmlns="http://psi.hupo.org/ms/mzml"><run/></mzML>'
        created = client.post("/tasks", files={"file": image, "imzml": ("e.imzML", empty)})
        failed = stack.wait_until_over(client, created.json()["id"])
        assert failed["status"] == "FAILED"
        assert "no spectra, so no positions to join marks to" in failed["error"]


def test_a_rerun_joins_the_same_imzml(stack: ServiceStack, joined: str) -> None:
    with stack.client() as client:
        rerun = client.post(f"/tasks/{joined}/rerun")
        assert rerun.status_code == 201, rerun.text
        state = stack.wait_until_over(client, rerun.json()["id"])
        assert state["status"] == "FINISHED", state
        assert state["parameters"]["imzml"] is True
        spectra = spectra_by_node(client, state["id"])
        assert spectra == serpentine_at(spectra)
        assert f"tasks/{state['id']}/acquisition.imzML" in stack.s3_keys(f"tasks/{state['id']}/")
