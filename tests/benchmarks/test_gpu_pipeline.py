"""benchmarks/gpu_pipeline.py runs end to end (--smoke: tiny slides and model, on the CPU), so
that the session with a GPU finds it working."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_pipeline.py"


@pytest.mark.slow
def test_the_smoke_run_measures_every_step(tmp_path):
    figures = tmp_path / "figures.json"
    env = os.environ | {"AMSEG_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, str(SCRIPT), "--smoke", "--slides", str(tmp_path / "slides")]
    done = subprocess.run(
        [*command, "--json", str(figures)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "slides/minute" in done.stdout
    record = json.loads(figures.read_text())
    assert record["device"] == "cpu"
    process = record["in_process"]
    for key in ("load_s", "warm_up_s", "first_call_s", "pipeline_s", "cpu_path_s"):
        assert process[key] > 0
    assert process["network_mp_s"] > 0 and process["profile"]["whole call"] > 0
    assert process["mask_pixels_differing"] <= 0.001 * 128 * 128  # the smoke slide
    assert record["processes"]["process_on_s"] > 0
    assert math.isfinite(record["worker"]["slides_per_minute"])
    assert sorted(p.suffix for p in (tmp_path / "slides").iterdir()) == [".png"] * 3
