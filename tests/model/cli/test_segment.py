"""`amseg segment` end to end: outputs, exit codes and one-line errors."""

from typer.testing import CliRunner

from model.cli import app
from model.image.io import read_image, write_png
from model.metrics import mark_id_accuracy
from tests.model.scenes import SmallMarkBlindSegmenter, disc_grid_scene

runner = CliRunner()


def _make_dataset(root, groups):
    for name, image in groups.items():
        folder = root / "source" / name
        folder.mkdir(parents=True)
        if isinstance(image, bytes):
            (folder / "slide.png").write_bytes(image)
        else:
            write_png(folder / "slide.png", image)
    return root


def test_segment_dataset_end_to_end(tmp_path):
    image, labels = disc_grid_scene(rows=4, cols=5, seed=3)
    ds = _make_dataset(tmp_path / "ds", {"well1": image, "well2": image[:, ::-1].copy()})
    result = runner.invoke(
        app,
        [
            "segment",
            str(ds),
            "--rows",
            "4",
            "--cols",
            "5",
            "--tile-size",
            "128",
            "--overlap",
            "32",
            "--segmenter",
            "classical",
        ],
    )
    assert result.exit_code == 0, result.output
    for group in ("well1", "well2"):
        assert (ds / "tiles_stitched" / group / "mask.tiff").is_file()
        assert (ds / "am_coords" / group / "am_coordinates.png").is_file()
    ids = read_image(ds / "am_coords" / "well1" / "am_coordinates.png")
    assert mark_id_accuracy(ids, labels) == 1.0


def test_one_bad_group_fails_the_command_but_not_the_others(tmp_path):
    image, _ = disc_grid_scene(rows=3, cols=3, seed=4)
    ds = _make_dataset(tmp_path / "ds", {"bad": b"not an image", "good": image})
    result = runner.invoke(
        app, ["segment", str(ds), "--no-register", "--tile-size", "128", "--segmenter", "classical"]
    )
    assert result.exit_code == 1
    assert "bad" in result.output
    assert "not a PNG, JPEG or TIFF" in result.output
    assert (ds / "tiles_stitched" / "good" / "mask.tiff").is_file()


def test_only_the_named_groups_run(tmp_path):
    image, _ = disc_grid_scene(rows=3, cols=3, seed=5)
    ds = _make_dataset(tmp_path / "ds", {"a": image, "b": image})
    result = runner.invoke(
        app, ["segment", str(ds), "b", "--no-register", "--no-tiles", "--segmenter", "classical"]
    )
    assert result.exit_code == 0, result.output
    assert not (ds / "tiles_stitched" / "a").exists()
    assert (ds / "tiles_stitched" / "b" / "mask.tiff").is_file()
    assert not (ds / "tiles" / "b" / "source").exists()  # --no-tiles


def test_usage_errors_are_one_line(tmp_path):
    image, _ = disc_grid_scene(rows=3, cols=3)
    ds = _make_dataset(tmp_path / "ds", {"a": image})
    cases = [
        (["segment", str(ds)], "--rows R --cols C"),
        (["segment", str(ds), "--rows", "70000", "--cols", "70000"], "the id limit"),
        (["segment", str(ds), "--rows", "3"], "--rows R --cols C (or --imzml)"),
        (["segment", str(ds), "--rows", "3", "--cols", "3", "--flip-x"], "give --imzml too"),
        (["segment", str(tmp_path / "missing"), "--no-register"], "no such dataset"),
        (["segment", str(ds), "zzz", "--no-register"], "unknown group"),
        (["segment", str(ds), "--no-register", "--overlap", "300"], "at most half"),
        (["segment", str(ds), "--no-register", "--accurate", "--scale", "1"], "--accurate or"),
        (
            ["segment", str(ds), "--no-register", "--accurate", "--segmenter", "classical"],
            "needs the trained model",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "error: " in result.output
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_accurate_reaches_the_pipeline_options(tmp_path, monkeypatch):
    import model.cli.segment as segment_cli

    image, _ = disc_grid_scene(rows=2, cols=2)
    ds = _make_dataset(tmp_path / "ds", {"well1": image})
    seen = []
    monkeypatch.setattr(segment_cli, "load_segmenter", lambda *a: SmallMarkBlindSegmenter())
    monkeypatch.setattr(
        segment_cli,
        "run_groups",
        lambda layout, groups, segmenter, options, *a, **k: seen.append(options) or [],
    )
    for flags, expected in (([], False), (["--accurate"], True)):
        result = runner.invoke(app, ["segment", str(ds), "--no-register", *flags])
        assert result.exit_code == 0, result.output
        assert seen[-1].accurate is expected and seen[-1].scale is None


def test_imzml_gives_one_group_its_grid_spectra_and_exports(tmp_path):
    import csv
    import json

    from tests.model.register.imzml_files import serpentine, write_imzml

    image, labels = disc_grid_scene(rows=4, cols=5, seed=6)
    ds = _make_dataset(tmp_path / "ds", {"well1": image, "well2": image})
    imzml = write_imzml(tmp_path / "well1.imzML", serpentine(4, 5))
    base = ["segment", str(ds), "--tile-size", "128", "--segmenter", "classical"]

    both = runner.invoke(app, [*base, "--imzml", str(imzml)])
    assert both.exit_code == 2 and "--imzml goes with one group" in both.output

    result = runner.invoke(app, [*base, "well1", "--imzml", str(imzml), "--geojson", "--tiff"])
    assert result.exit_code == 0, result.output
    out = ds / "am_coords" / "well1"
    assert mark_id_accuracy(read_image(out / "am_coordinates.tiff"), labels) == 1.0
    with (out / "ams.csv").open() as handle:
        spectra = {
            (int(r["row"]), int(r["col"])): int(r["spectrum"]) for r in csv.DictReader(handle)
        }
    assert spectra == {(y - 1, x - 1): k for k, (x, y) in enumerate(serpentine(4, 5))}
    assert len(json.loads((out / "marks.geojson").read_text())["features"]) == 20
