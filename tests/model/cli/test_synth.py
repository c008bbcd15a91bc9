"""End-to-end tests of `amseg synth` through Typer's test runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from model.cli.app import app
from model.cli.synth import SynthOptionError  # importing registers the command on `app`
from model.errors import AmsegError
from model.image.io import read_image

runner = CliRunner()


def test_help_lists_every_option() -> None:
    result = runner.invoke(app, ["synth", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in (
        "--count",
        "--seed",
        "--height",
        "--width",
        "--rows",
        "--cols",
        "--mark-size",
        "--bit-depth",
        "--layout",
        "--valid-fraction",
        "--dataset",
        "--background",
        "--style",
    ):
        assert option in result.output


def test_train_layout_end_to_end(tmp_path) -> None:
    args = [
        "synth",
        str(tmp_path),
        "--count",
        "3",
        "--seed",
        "7",
        "--height",
        "256",
        "--width",
        "256",
        "--valid-fraction",
        "0.34",
        "--dataset",
        "syn",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    train = sorted(p.name for p in (tmp_path / "train" / "syn").iterdir())
    valid = sorted(p.name for p in (tmp_path / "valid" / "syn").iterdir())
    assert train == ["slide_000", "slide_001"] and valid == ["slide_002"]
    source = tmp_path / "valid" / "syn" / "slide_002" / "source" / "0000.png"
    mask = read_image(source.parent.parent / "mask" / "0000.png")
    assert read_image(source).shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
    assert "train" in result.output and "valid" in result.output


def test_dataset_layout_prints_segment_command(tmp_path) -> None:
    args = [
        "synth",
        str(tmp_path),
        "--count",
        "2",
        "--layout",
        "dataset",
        "--height",
        "300",
        "--width",
        "300",
        "--rows",
        "5",
        "--cols",
        "6",
        "--mark-size",
        "16",
        "--bit-depth",
        "16",
    ]
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 0, result.output
    for group in ("slide_000", "slide_001"):
        image = read_image(tmp_path / "source" / group / "source.tiff")
        assert image.dtype == np.uint16 and image.shape == (300, 300)
        spec = json.loads((tmp_path / "ground_truth" / group / "spec.json").read_text())
        assert (spec["rows"], spec["cols"], spec["mark_size"]) == (5, 6, 16)
        labels = read_image(tmp_path / "ground_truth" / group / "labels.png")
        assert labels.max() <= 30
    assert "--rows 5 --cols 6" in result.output.replace("\n", " ")


def test_background_option_fixes_the_matrix_style(tmp_path) -> None:
    args = ["synth", str(tmp_path), "--count", "3", "--layout", "dataset", "--height", "200"]
    args += ["--width", "200", "--background", "mottled", "--low-contrast-fraction", "0"]
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 0, result.output
    for group in ("slide_000", "slide_001", "slide_002"):
        spec = json.loads((tmp_path / "ground_truth" / group / "spec.json").read_text())
        # Only the mottled matrix has fibrous ridges of 0.5 or more and marks this bright.
        assert spec["ridge_strength"] >= 0.5 and spec["contrast"] >= 0.85


def test_style_option_makes_every_slide_of_that_style(tmp_path) -> None:
    args = ["synth", str(tmp_path), "--count", "2", "--layout", "dataset", "--height", "200"]
    args += ["--width", "200", "--style", "ghosted"]
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 0, result.output
    for group in ("slide_000", "slide_001"):
        spec = json.loads((tmp_path / "ground_truth" / group / "spec.json").read_text())
        assert spec["ghost_fraction"] >= 0.4


def test_same_seed_writes_same_files(tmp_path) -> None:
    for name in ("a", "b"):
        args = [
            "synth",
            str(tmp_path / name),
            "--count",
            "1",
            "--seed",
            "3",
            "--height",
            "128",
            "--width",
            "128",
            "--layout",
            "dataset",
            "--bit-depth",
            "8",
        ]
        assert runner.invoke(app, args).exit_code == 0
    first = (tmp_path / "a" / "source" / "slide_000" / "source.png").read_bytes()
    second = (tmp_path / "b" / "source" / "slide_000" / "source.png").read_bytes()
    assert first == second


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--count", "-1", "--count"),
        ("--mark-size", "2", "--mark-size"),
        ("--mark-size", "200", "--mark-size"),
        ("--bit-depth", "12", "--bit-depth"),
        ("--layout", "zip", "--layout"),
        ("--valid-fraction", "1.5", "--valid-fraction"),
        ("--background", "glossy", "--background"),
        ("--style", "glossy", "--style"),
    ],
)
def test_bad_options_fail_with_a_clear_error(tmp_path, option, value, fragment) -> None:
    result = runner.invoke(app, ["synth", str(tmp_path), option, value], terminal_width=300)
    assert result.exit_code != 0
    # How app.py presents user errors (error line or raised exception) is not this module's
    # concern; the message must name the option and fit on one line.
    message = error_message(result)
    assert fragment in message and "\n" not in message.strip()
    assert not any(tmp_path.iterdir())


def test_grid_too_large_for_uint16_ids(tmp_path) -> None:
    result = runner.invoke(app, ["synth", str(tmp_path), "--rows", "256", "--cols", "257"])
    assert result.exit_code != 0
    assert "65535" in error_message(result)
    assert not any(tmp_path.iterdir())


def test_option_errors_are_user_errors() -> None:
    assert issubclass(SynthOptionError, AmsegError)


def error_message(result: Result) -> str:
    """The user-error text of a failed run: the raised exception's, else the stderr line."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return str(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]
