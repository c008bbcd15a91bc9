"""benchmarks/finetune_dev.py runs end to end on one real crop (a few steps, not a measurement):
every figure it reports is a Dice in [0, 1], and its overlay is written. Its figures are never
asserted here: the development set is for measuring, not for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.segment.runtime import nncf_available

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "finetune_dev.py"
CROP = ROOT.parent / "shared" / "data" / "real" / "source_small.png"


@pytest.mark.slow
@pytest.mark.skipif(not CROP.is_file(), reason="the real crops (../shared/data/real) are absent")
def test_a_short_run_reports_every_figure(tmp_path):
    rows_file, overlays = tmp_path / "rows.json", tmp_path / "overlays"
    few_steps = ["steps=4", "eval_every=2", "min_final_steps=2"]
    command = [sys.executable, str(SCRIPT), "--crops", "source_small", "--protocols", "top",
               "--flips", "--int8", "--json", str(rows_file),
               "--overlays", str(overlays)]  # fmt: skip
    for option in few_steps:
        command += ["--set", option]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(rows_file.read_text())
    assert (row["crop"], row["protocol"]) == ("source_small", "top")
    dice_keys = [key for key in row if key.startswith(("zero_shot", "tuned"))]
    assert len(dice_keys) == 6
    assert all(0.0 <= row[key] <= 1.0 for key in dice_keys), row
    assert row["steps"] >= 4 + 2  # the main steps and the last pass
    assert (overlays / "ftdev_source_small_top.png").is_file()
    assert "source_small" in done.stdout and "flips" in done.stdout
    if nncf_available():  # --int8: the check amseg finetune makes, and int8 against fp32
        assert set(row["int8_check"]) == {"int8_mask_dice", "int8_dice_drop", "passed"}
        int8_keys = ("fp32_unseen", "int8_unseen", "int8_vs_fp32")
        assert all(0.0 <= row[key] <= 1.0 for key in int8_keys), row
        assert "int8: check" in done.stdout
