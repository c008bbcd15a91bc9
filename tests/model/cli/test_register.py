"""`amseg register` end to end: the dataset layout and the single-mask form."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import model.cli.register  # noqa: F401  registers the command on the app
from model.cli.app import app
from model.errors import RegistrationError
from model.image.io import read_image, write_png, write_tiff
from model.register.registration import register_marks
from tests.model.grid_masks import GridSpec, id_accuracy, make_grid_mask

runner = CliRunner()
OUTPUTS = ("am_coordinates.png", "ams.csv", "qc.json", "overlay.png")


@pytest.fixture(scope="module")
def grid():
    return make_grid_mask(GridSpec(rows=6, cols=7, angle_deg=4, specks=10, seed=61))


def _mask_u8(grid) -> np.ndarray:
    return grid.mask.astype(np.uint8) * 255


def test_single_mask_form(tmp_path: Path, grid) -> None:
    mask_path = write_png(tmp_path / "mask.png", _mask_u8(grid))
    source = (np.random.default_rng(0).random(grid.mask.shape) * 60000).astype(np.uint16)
    image_path = write_png(tmp_path / "source.png", source)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            *("register", "--mask", str(mask_path), "--rows", "6", "--cols", "7"),
            *("-o", str(out), "--image", str(image_path)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "42/42 marks" in result.output
    for name in OUTPUTS:
        assert (out / name).is_file()
    labels = read_image(out / "am_coordinates.png")
    assert id_accuracy(labels, grid.labels)["wrong_ids"] == []
    assert json.loads((out / "qc.json").read_text())["found"] == 42


def test_dataset_form_all_groups_and_a_failing_group(tmp_path: Path, grid) -> None:
    ds = tmp_path / "ds"
    write_png(ds / "tiles_stitched" / "a" / "mask.png", _mask_u8(grid))
    write_tiff(ds / "tiles_stitched" / "b" / "mask.tiff", _mask_u8(grid))
    write_tiff(ds / "source_norm" / "b" / "source.tiff", np.full(grid.mask.shape, 0.5, np.float32))
    write_png(ds / "tiles_stitched" / "empty" / "mask.png", np.zeros((40, 40), np.uint8))
    (ds / "tiles_stitched" / "nomask").mkdir()

    result = runner.invoke(app, ["register", str(ds), "--rows", "6", "--cols", "7"])
    assert result.exit_code == 1, result.output
    for group in ("a", "b"):
        for name in OUTPUTS:
            assert (ds / "am_coords" / group / name).is_file(), (group, name)
        labels = read_image(ds / "am_coords" / group / "am_coordinates.png")
        assert id_accuracy(labels, grid.labels)["wrong_ids"] == []
    assert "2 of 4 group(s) failed" in result.output
    assert "empty" in result.output and "no foreground" in result.output
    assert "nomask" in result.output and "no mask.tiff" in result.output
    assert not (ds / "am_coords" / "empty").exists()


def test_dataset_form_selected_group(tmp_path: Path, grid) -> None:
    ds = tmp_path / "ds"
    write_png(ds / "tiles_stitched" / "a" / "mask.png", _mask_u8(grid))
    write_png(ds / "tiles_stitched" / "b" / "mask.png", np.zeros((40, 40), np.uint8))
    result = runner.invoke(app, ["register", str(ds), "a", "--rows", "6", "--cols", "7"])
    assert result.exit_code == 0, result.output
    assert (ds / "am_coords" / "a" / "qc.json").is_file()
    assert not (ds / "am_coords" / "b").exists()


def test_single_mask_user_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    mask_path = write_png(tmp_path / "mask.png", np.zeros((30, 30), np.uint8))
    result = runner.invoke(
        app, ["register", "--mask", str(mask_path), "-r", "2", "-c", "2", "-o", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "error: the mask has no foreground pixels" in result.output
    with pytest.raises(RegistrationError):  # the library raises the same error
        register_marks(np.zeros((30, 30), bool), 2, 2)


@pytest.mark.parametrize(
    "arguments",
    [
        ["register", "--rows", "2", "--cols", "2"],  # neither a dataset nor --mask
        ["register", "ds", "--mask", "m.png", "-o", "out", "--rows", "2", "--cols", "2"],
        ["register", "--mask", "m.png", "--rows", "2", "--cols", "2"],  # no -o
        ["register", "ds", "--rows", "0", "--cols", "2"],
    ],
)
def test_usage_errors(arguments: list[str]) -> None:
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2


def test_missing_dataset_layout(tmp_path: Path) -> None:
    result = runner.invoke(app, ["register", str(tmp_path), "--rows", "2", "--cols", "2"])
    assert result.exit_code == 2
    assert "no tiles_stitched/ directory" in result.output


def test_help_mentions_both_forms() -> None:
    result = runner.invoke(app, ["register", "--help"])
    assert result.exit_code == 0
    assert "--mask" in result.output and "DS_PATH" in result.output


def test_at_anchors_the_grid_on_a_known_mark(tmp_path: Path) -> None:
    spec = GridSpec(rows=6, cols=7, missing_rows=(0,), angle_deg=2, seed=67)
    grid = make_grid_mask(spec)  # first row missing: alone the ids would shift up a row
    mask_path = write_png(tmp_path / "mask.png", _mask_u8(grid))
    ys, xs = np.nonzero(grid.labels == 2 * 7 + 3 + 1)  # row 2, column 3
    at = f"{xs.mean():.1f},{ys.mean():.1f},2,3"
    base = ["register", "--mask", str(mask_path), "-r", "6", "-c", "7", "-o", str(tmp_path)]
    result = runner.invoke(app, [*base, "--at", at])
    assert result.exit_code == 0, result.output
    labels = read_image(tmp_path / "am_coordinates.png")
    assert id_accuracy(labels, grid.labels)["wrong_ids"] == []
    assert json.loads((tmp_path / "qc.json").read_text())["known_node"]["row"] == 2

    assert runner.invoke(app, [*base, "--at", "1,2,3"]).exit_code == 2
    off = runner.invoke(app, [*base, "--at", at.rsplit(",", 2)[0] + ",6,0"])
    assert off.exit_code == 2 and "off the 6x7 grid" in off.output
    dataset = runner.invoke(app, ["register", "ds", "-r", "6", "-c", "7", "--at", at])
    assert dataset.exit_code == 2 and "--at" in dataset.output


def test_imzml_gives_the_grid_and_a_spectrum_column(tmp_path: Path, grid) -> None:
    from tests.model.register.imzml_files import serpentine, write_imzml

    # Node (0, 0) was left out of the acquisition, so it has no mark; x runs right to left.
    mask_path = write_png(tmp_path / "mask.png", _mask_u8(grid) * (grid.labels != 1))
    positions = [(8 - x, y) for x, y in serpentine(6, 7, skip={(0, 0)})]
    imzml = write_imzml(tmp_path / "run.imzML", positions)
    out = tmp_path / "out"
    base = ["register", "--mask", str(mask_path), "-o", str(out), "--imzml", str(imzml)]
    result = runner.invoke(app, [*base, "--flip-x", "--tiff", "--geojson"])

    assert result.exit_code == 0, result.output
    assert "41/42 marks" in result.output and "41 marks joined to spectra" in result.output
    with (out / "ams.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    expected = {(y - 1, 7 - x): index for index, (x, y) in enumerate(positions)}
    assert {(int(r["row"]), int(r["col"])): int(r["spectrum"]) for r in rows} == expected
    png, tiff = read_image(out / "am_coordinates.png"), read_image(out / "am_coordinates.tiff")
    assert png.dtype == np.uint16 and tiff.dtype == np.uint32
    np.testing.assert_array_equal(png, tiff)
    features = json.loads((out / "marks.geojson").read_text())["features"]
    assert sorted(f["properties"]["id"] for f in features) == list(range(2, 43))

    unflipped = runner.invoke(app, base)  # the wrong orientation: the QC says which is right
    assert unflipped.exit_code == 0, unflipped.output
    assert "Oriented flip_x only 0 would" in " ".join(unflipped.output.split())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--flip-x", "-r", "6", "-c", "7"], "give --imzml too"),
        (["-r", "6"], "give both --rows and --cols"),
        ([], "--rows R --cols C, or --imzml"),
    ],
)
def test_grid_and_orientation_errors(
    tmp_path: Path, grid, arguments: list[str], message: str
) -> None:
    mask_path = write_png(tmp_path / "mask.png", _mask_u8(grid))
    result = runner.invoke(
        app, ["register", "--mask", str(mask_path), "-o", str(tmp_path), *arguments]
    )
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.slow
def test_a_300_x_300_grid_gets_32_bit_ids(tmp_path: Path) -> None:
    big = make_grid_mask(GridSpec(rows=300, cols=300, pitch_x=6, pitch_y=6, seed=83))
    mask_path = write_png(tmp_path / "mask.png", _mask_u8(big))
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["register", "--mask", str(mask_path), "-r", "300", "-c", "300", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "90000/90000 marks" in result.output
    assert not (out / "am_coordinates.png").exists()  # 16 bits cannot hold the ids
    labels = read_image(out / "am_coordinates.tiff")
    assert labels.dtype == np.uint32 and int(labels.max()) == 90_000
    assert id_accuracy(labels, big.labels)["wrong_ids"] == []
    with (out / "ams.csv").open() as handle:
        ids = [int(row["id"]) for row in csv.DictReader(handle)]
    assert ids == list(range(1, 90_001))
