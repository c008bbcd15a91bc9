"""The API's memory while people open huge slides in the viewer, for any version of the API.

    .venv/bin/python benchmarks/viewer_memory.py [--side 20000] [--viewers 4]
        [--api-root PATH] [--no-marks]

Starts the API alone (uvicorn, embedded settings: SQLite, local blobs in a scratch DATA_DIR,
no worker) from `--api-root` (default: this checkout; another checkout, e.g. a `git worktree`
of an earlier commit, measures that version), uploads `--viewers` side² slides (8-bit PNGs of
zeros, a few hundred kB: the API streams them) and finishes them as a worker would: stores a
side² mask.png (zeros) and, with the worker's code of this checkout, the image's, the mask's
and the outlines' tile packs of a synthetic slide whose tiles weigh what real ones do, and a
mark table of 90 000 marks. Then as many viewers open the slides at once
(tests/viewer_load.py: the pyramid, the mark table, the tiles of the levels a screen shows the
whole slide at for image, mask and outlines, two screens of full-size tiles, a preview) and the
API process's resident memory is sampled (VmRSS every 20 ms) and read at its peak (VmHWM).

An API that decodes the slides itself (before issue 38 §4) ignores the stored packs and builds
its pyramids from input and mask.png; `--no-marks` leaves the mark table out for one that would
build it from the ids (not stored here).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store.blobs import LocalBlobStore, TaskBlob, task_blob_key  # noqa: E402
from store.database import create_db_engine, create_session_factory  # noqa: E402
from store.tasks import finish_task, mark_running  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.viewer_load import MemoryWatch, open_viewer, slide_views, zeros_png  # noqa: E402


def start_api(api_root: Path, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "S3_", "DATABASE_", "REDIS_"))
    }
    env.update(DATA_DIR=str(data_dir), PYTHONPATH=str(api_root))
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app", "--port", str(port)],
        cwd=api_root,
        env=env,
        stdout=(data_dir.parent / "api.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError((data_dir.parent / "api.log").read_text())
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return process, base_url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the API did not start in 60 s")
        time.sleep(0.2)


def finish_slides(base_url: str, data_dir: Path, views: dict[str, Path], args) -> list[str]:
    upload = zeros_png(args.side, args.side)
    ids = []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for number in range(args.viewers):
            response = client.post(
                "/tasks",
                content=upload,
                params={"name": f"huge{number}.png"},
                headers={"Content-Type": "image/png"},
            )
            response.raise_for_status()
            ids.append(response.json()["id"])
    blobs = LocalBlobStore(data_dir / "blobs")
    sessions = create_session_factory(create_db_engine(f"sqlite:///{data_dir / 'amseg.sqlite3'}"))
    for task_id in ids:
        keys = {}
        for name, path in {**views, TaskBlob.MASK.value: None}.items():
            keys[name] = f"tasks/{task_id}/{name}"
            if path is None:  # the mask, for an API that makes its own pyramid of it
                blobs.put_bytes(keys[name], upload)
            else:
                blobs.put_file(keys[name], path)
        if args.marks:
            keys[TaskBlob.AMS.value] = task_blob_key(task_id, TaskBlob.AMS)
        with sessions() as session:
            assert mark_running(session, task_id, stale_after_s=60, max_attempts=3)
            assert finish_task(session, task_id, result_keys=keys, summary={"warnings": []})
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20_000)
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--api-root", type=Path, default=ROOT)
    parser.add_argument("--no-marks", dest="marks", action="store_false")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="amseg-viewer-memory-") as scratch:
        work = Path(scratch)
        started = time.perf_counter()
        views = slide_views(work, args.side)
        if not args.marks:
            views.pop("views/marks.json")
        print(f"the worker's files of a {args.side}² slide: {time.perf_counter() - started:.0f} s")
        data_dir = work / "data"
        process, base_url = start_api(args.api_root.resolve(), data_dir)
        try:
            ids = finish_slides(base_url, data_dir, views, args)
            watch = MemoryWatch(process.pid)
            before = watch.rss()
            barrier = threading.Barrier(len(ids))
            counts: list[int] = []
            failures: list[BaseException] = []

            def viewer(task_id: str) -> None:
                barrier.wait()
                try:
                    counts.append(open_viewer(base_url, task_id, marks=args.marks))
                except BaseException as error:
                    failures.append(error)

            started = time.perf_counter()
            with watch:
                threads = [threading.Thread(target=viewer, args=(task_id,)) for task_id in ids]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            took = time.perf_counter() - started
            if failures:
                raise failures[0]
            print(
                f"API from {args.api_root}: {before / 2**20:.0f} MB before; while "
                f"{len(ids)} viewers opened {args.side}² slides ({sum(counts)} requests, "
                f"{took:.1f} s): peak {watch.peak() / 2**20:.0f} MB (VmHWM), "
                f"highest sample {max(watch.samples, default=0) / 2**20:.0f} MB"
            )
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
