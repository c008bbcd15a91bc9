"""How long registering a finished task again takes (POST /tasks/{id}/register on another grid),
against segmenting it, through `amseg up` (embedded: SQLite, files, file queue, one worker).

    .venv/bin/python benchmarks/reregister_speed.py [--side 4097] [--pitch 60] [--repeats 3]

A 16-bit synthetic slide of `side`² px with a square grid of pitch ~`pitch` px is uploaded
with its grid and segmented once; then it is registered again `repeats` times on a grid one
column wider. Prints, in seconds: the segment task (upload answered -> FINISHED), and each
re-registration from the POST to FINISHED as a client sees it (polling every 50 ms), with the
worker's share (started -> finished).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import model and tests

from model.synth.grid import fit_grid_inside  # noqa: E402
from model.synth.slide import generate_slide  # noqa: E402
from model.synth.styles import random_spec  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.service_stack import png_bytes  # noqa: E402

AMSEG = Path(sys.executable).with_name("amseg")
POLL_S = 0.05
GIVE_UP_S = 900


def slide_png(side: int, grid: int, pitch: float, seed: int) -> bytes:
    spec = random_spec(
        seed, height=side, width=side, rows=grid, cols=grid, mark_size=pitch * 0.35,
        bit_depth=16, low_contrast_fraction=0.0, background="smooth",
    )  # fmt: skip
    return png_bytes(generate_slide(fit_grid_inside(spec), seed).image)


def start_up(data_dir: Path) -> tuple[subprocess.Popen, httpx.Client]:
    port = free_port()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    process = subprocess.Popen(
        [AMSEG, "up", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.get("/health").json()["status"] == "ok":
                return process, client
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("amseg up did not become healthy")
        time.sleep(0.2)


def wait_finished(client: httpx.Client, task_id: str) -> dict:
    deadline = time.monotonic() + GIVE_UP_S
    while (state := client.get(f"/tasks/{task_id}").json())["status"] not in ("FINISHED", "FAILED"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting: {state}")
        time.sleep(POLL_S)
    if state["status"] != "FINISHED":
        raise RuntimeError(f"task {task_id} FAILED: {state['error']}")
    return state


def run_seconds(state: dict) -> float:
    started, finished = (datetime.fromisoformat(state[k]) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4097)
    parser.add_argument("--pitch", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=36)
    args = parser.parse_args()
    grid = max(2, int(args.side * 0.84 / args.pitch))
    data = slide_png(args.side, grid, args.pitch, args.seed)
    print(f"slide {args.side}² px, 16-bit PNG ({len(data) / 1e6:.1f} MB), grid {grid} x {grid}")

    with tempfile.TemporaryDirectory(prefix="amseg-reregister-") as scratch:
        process, client = start_up(Path(scratch) / "data")
        try:
            params = {"rows": grid, "cols": grid, "name": "bench.png"}
            headers = {"Content-Type": "image/png"}
            source = client.post("/tasks", params=params, content=data, headers=headers)
            source.raise_for_status()
            began = time.perf_counter()
            state = wait_finished(client, source.json()["id"])
            found = state["summary"]["found"]
            print(
                f"segment task: {time.perf_counter() - began:.2f} s to FINISHED "
                f"(worker {run_seconds(state):.2f} s), {found} marks"
            )
            seconds = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                created = client.post(
                    f"/tasks/{state['id']}/register", params={"rows": grid, "cols": grid + 1}
                )
                created.raise_for_status()
                done = wait_finished(client, created.json()["id"])
                seconds.append(time.perf_counter() - began)
                print(
                    f"re-register: {seconds[-1]:.2f} s POST -> FINISHED "
                    f"(worker {run_seconds(done):.2f} s)"
                )
            print(f"re-register median: {statistics.median(seconds):.2f} s of {len(seconds)}")
        finally:
            process.terminate()
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
