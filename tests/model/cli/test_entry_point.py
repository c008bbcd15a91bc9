"""The installed `amseg` entry point, as a user runs it."""

import subprocess
import sys
from pathlib import Path

import pytest

AMSEG = Path(sys.executable).with_name("amseg")


@pytest.fixture(scope="module")
def amseg() -> Path:
    if not AMSEG.exists():
        pytest.skip("the amseg console script is not installed in this environment")
    return AMSEG


def test_help_lists_every_command(amseg):
    result = subprocess.run([amseg, "--help"], capture_output=True, text=True, check=True)
    for command in ("segment", "register", "synth", "demo"):
        assert command in result.stdout


def test_user_error_is_one_line_without_traceback(amseg, tmp_path):
    bad = tmp_path / "mask.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # a PNG signature, then nothing
    result = subprocess.run(
        [amseg, "register", "--mask", bad, "--rows", "3", "--cols", "3", "-o", tmp_path / "out"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert str(bad) in lines[0]
    assert "Traceback" not in result.stderr


def test_predict_path_does_not_load_scipy():
    """`amseg predict` loads every command module and the inference stack, then estimates the
    grid pitch; scipy (~0.1-0.2 s to import) is only for commands that register or
    synthesise, so none of that may pull it in."""
    code = (
        "import sys, numpy as np\n"
        "import model.cli\n"
        "from model.segment.pitch import estimate_mark_pitch\n"
        "from model.segment.predict import predict_image\n"
        "image = np.zeros((256, 256), np.uint8)\n"
        "image[4::16, 4::16] = 255\n"
        "assert estimate_mark_pitch(image) is not None\n"
        "print(sorted(m for m in sys.modules if m == 'scipy' or m.startswith('scipy.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
