"""Cold start of the full and the lean install side by side (issue 38 §5): the size of each
virtual environment, and whole-process times with an empty AMSEG_CACHE_DIR.

    amseg --help                 imports and the command line
    amseg predict SLIDE          a 1024² generated slide, the shipped model (first run)
    amseg up, until /health      the service on embedded defaults, answering (its worker
                                 preloads the model at the same time)
    amseg up, first task         up to the first task FINISHED (a 1024² slide on a 20 x 20
                                 grid, uploaded once /health answers)
    task 1, task 2               the first and the second task, upload to FINISHED (the
                                 same slide), and the worker's own time (started_at to
                                 finished_at): a fresh worker's first task vs the next

Each environment is given by its python (its `amseg` beside it); a lean one is `python3 -m
venv /tmp/lean && /tmp/lean/bin/pip install -e .` (no [torch] extra). Runs alternate between
environments; medians of --reps. The venv size counts every file under its prefix.

    .venv/bin/python benchmarks/cold_start.py --env full=.venv/bin/python \\
        --env lean=/tmp/lean/bin/python --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def venv_size_mb(python: str) -> float:
    prefix = Path(
        subprocess.check_output([python, "-c", "import sys; print(sys.prefix)"], text=True).strip()
    )
    total = sum(p.stat().st_size for p in prefix.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 1e6


def amseg(python: str) -> list[str]:
    """The environment's `amseg` console script."""
    return [str(Path(python).with_name("amseg"))]


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def run_task(base: str, slide: Path, deadline: float) -> tuple[float, float]:
    """Seconds from upload to FINISHED of one task on a 20 x 20 grid, and the worker's own
    (started_at to finished_at: without the wait for a worker to take it)."""
    start = time.perf_counter()
    request = urllib.request.Request(
        f"{base}/tasks?rows=20&cols=20", data=slide.read_bytes(),
        headers={"Content-Type": "image/png"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        task_id = json.load(response)["id"]
    while get_json(f"{base}/tasks/{task_id}")["status"] not in ("FINISHED", "FAILED"):
        if time.perf_counter() > deadline:
            raise RuntimeError("the task did not finish")
        time.sleep(0.05)
    total = time.perf_counter() - start
    task = get_json(f"{base}/tasks/{task_id}")
    if task["status"] != "FINISHED":
        raise RuntimeError(f"the task is {task['status']}")
    started, finished = (datetime.fromisoformat(task[k]) for k in ("started_at", "finished_at"))
    return total, (finished - started).total_seconds()


def service_times(python: str, env: dict, slide: Path, workdir: Path) -> dict[str, float]:
    """Seconds from `amseg up` to /health answering and to the first task FINISHED, and the
    first and the second task's times (upload to FINISHED, and the worker's own)."""
    port = free_port()
    data = Path(tempfile.mkdtemp(dir=workdir, prefix="data-"))
    command = [*amseg(python), "up", "--port", str(port), "--data-dir", str(data)]
    start = time.perf_counter()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(command, env=env, start_new_session=True, **quiet)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                get_json(f"{base}/health")
                break
            except OSError:
                if process.poll() is not None or time.perf_counter() - start > 120:
                    raise RuntimeError("amseg up did not answer") from None
                time.sleep(0.05)
        healthy = time.perf_counter() - start
        first, first_run = run_task(base, slide, start + 300)
        finished = time.perf_counter() - start
        second, second_run = run_task(base, slide, start + 600)
        return {
            "up_health": healthy,
            "up_first_task": finished,
            "task_1": first,
            "task_2": second,
            "task_1_worker": first_run,
            "task_2_worker": second_run,
        }
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", required=True, help="NAME=PYTHON")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    envs = dict(item.split("=", 1) for item in args.env)

    from model.image.io import write_png
    from model.segment.runtime import cpu_description
    from model.synth.slide import generate_slide
    from model.synth.styles import random_spec

    workdir = Path(tempfile.mkdtemp(prefix="amseg-cold-start-"))
    spec = random_spec(5, height=1024, width=1024, rows=20, cols=20)
    slide = write_png(workdir / "slide.png", generate_slide(spec, 5).image)
    print(cpu_description())
    times: dict[str, dict[str, list[float]]] = {name: {} for name in envs}
    for rep in range(args.reps):
        for name, python in envs.items():
            env = os.environ | {"AMSEG_CACHE_DIR": str(workdir / f"cache-{name}-{rep}")}
            record = times[name]
            record.setdefault("help", []).append(timed([*amseg(python), "--help"], env))
            out = workdir / f"out-{name}-{rep}"
            predict = [*amseg(python), "predict", str(slide), "-o", str(out)]
            record.setdefault("predict", []).append(timed(predict, env))
            env["AMSEG_CACHE_DIR"] = str(workdir / f"cache-up-{name}-{rep}")
            for key, value in service_times(python, env, slide, workdir).items():
                record.setdefault(key, []).append(value)
            line = ", ".join(f"{k} {v[-1]:.1f} s" for k, v in record.items())
            print(f"{name} run {rep + 1}: {line}", flush=True)
    columns = ["help", "predict", "up_health", "up_first_task", "task_1", "task_2",
               "task_1_worker", "task_2_worker"]  # fmt: skip
    print(
        f"\nmedians, seconds\n{'install':8s} {'venv MB':>8s} "
        + " ".join(f"{c:>13s}" for c in columns)
    )
    for name, python in envs.items():
        med = {k: statistics.median(v) for k, v in times[name].items()}
        cells = " ".join(f"{med[c]:13.2f}" for c in columns)
        print(f"{name:8s} {venv_size_mb(python):8.0f} {cells}")


if __name__ == "__main__":
    main()
