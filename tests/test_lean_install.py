"""The lean install (`pip install amseg`, no `[torch]` extra) as its commands see it: PyTorch,
segmentation-models-pytorch, NNCF and the rest of the extra are made unimportable in a fresh
process. CPU prediction, registration and the service's modules work on the shipped OpenVINO
IR; a command that needs PyTorch says in one line what to install.

A real lean virtual environment was checked by hand (BENCHMARKS.md, install size): this test
guards the imports that must stay lazy for it to keep working.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.image.io import write_png

# What only the [torch] extra installs; None in sys.modules makes `import X` fail.
EXTRA_ONLY = ("torch", "torchvision", "segmentation_models_pytorch", "timm", "nncf", "safetensors")
BLOCK = f"import sys\nsys.modules.update(dict.fromkeys({EXTRA_ONLY!r}))\n"


def run_lean(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"AMSEG_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code], capture_output=True, text=True, env=env
    )


def amseg(*args: str) -> str:
    return f"from model.cli import main\nsys.argv = ['amseg', *{list(args)!r}]\nmain()\n"


@pytest.fixture
def slide(tmp_path) -> Path:
    image = np.full((256, 256), 40, np.uint8)
    for y in range(20, 256, 40):
        for x in range(20, 256, 40):
            image[y - 6 : y + 6, x - 6 : x + 6] = 200
    return write_png(tmp_path / "slide.png", image)


def test_predict_and_register_need_no_torch(tmp_path, slide):
    result = run_lean(amseg("predict", str(slide), "-o", str(tmp_path / "out")), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "slide_mask.png").is_file()
    mask = tmp_path / "out" / "slide_mask.png"
    result = run_lean(
        amseg("register", "--mask", str(mask), "--rows", "6", "--cols", "6", "-o", str(tmp_path)),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr


def test_the_service_loads_without_torch(tmp_path):
    code = (
        "import api.app, api.cli, worker.tasks, worker.processing, worker.finetuning\n"
        "from model.segment.neural import get_segmenter\n"
        "s = get_segmenter(None)\n"
        "print(s.ir_source.split(' ')[0], 'torch' in sys.modules and sys.modules['torch'])\n"
    )
    result = run_lean(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["shipped", "None"]


@pytest.mark.parametrize(
    "args",
    [
        ["train", "data", "--matrix", "DHB", "-o", "out"],
        ["finetune", "--image", "{slide}", "--rows", "6", "--cols", "6", "-o", "out"],
        ["predict", "{slide}", "-o", "out", "--backend", "torch"],
    ],
)
def test_a_torch_command_says_in_one_line_what_to_install(tmp_path, slide, args):
    args = [arg.format(slide=slide) for arg in args]
    result = run_lean(amseg(*args), tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "needs PyTorch" in line
    assert "pip install 'amseg[torch]'" in line
