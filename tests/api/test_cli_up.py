"""`amseg up`: the embedded service (SQLite, local files, file queue) from one command."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from model.synth.grid import fit_grid_inside
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from tests.conftest import free_port
from tests.service_stack import png_bytes, read_png

AMSEG = Path(sys.executable).with_name("amseg")
pytestmark = pytest.mark.slow


def test_amseg_up_turns_an_upload_into_a_mask_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # ignored: `up` is always embedded
    server = subprocess.Popen(
        [AMSEG, "up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                if httpx.get(f"{base}/health").json()["status"] == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)

        spec = fit_grid_inside(random_spec(3, height=512, width=512, rows=6, cols=6, mark_size=24))
        slide = generate_slide(spec, 3)
        created = httpx.post(
            f"{base}/tasks",
            params={"rows": 6, "cols": 6},
            files={"file": ("slide.png", png_bytes(slide.image), "image/png")},
        )
        assert created.status_code == 201, created.text
        task_url = f"{base}{created.headers['location']}"
        deadline = time.monotonic() + 120
        while (state := httpx.get(task_url).json())["status"] not in ("FINISHED", "FAILED"):
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state["status"] == "FINISHED", state
        mask = read_png(httpx.get(f"{base}{state['links']['mask']}").content)
        assert mask.shape == slide.mask.shape and mask.any()
        labels = read_png(httpx.get(f"{base}{state['links']['labels']}").content)
        assert labels.dtype == np.uint16 and labels.max() <= 36
        worker_pids = children(server.pid)
        assert worker_pids, "amseg up runs no worker process"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
    assert server.returncode in (0, 130)  # 130: the shell's code for "stopped by Ctrl-C"
    assert (tmp_path / "data" / "amseg.sqlite3").is_file()
    for pid in worker_pids:  # the worker went down with it
        assert not Path(f"/proc/{pid}").exists()


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(child) for child in found.stdout.split()]
