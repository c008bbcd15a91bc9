"""Service latency and throughput on loopback, with wrk as the load generator.

    .venv/bin/python benchmarks/service_latency.py [--duration 15] [--slides 8]

Starts the production-shaped stack the tests use (uvicorn with the API, Celery workers, a
redis-server of its own, moto's S3 over HTTP, a fresh database on the local PostgreSQL) and
measures:
  1. GET /tasks/{id}: p50/p99 latency and requests/s, wrk with 1 and with 16 connections;
  2. POST /tasks with a 5 MB PNG: p50/p99 latency, wrk with 4 connections (no worker running,
     so only the API is measured: receive, sniff, decode check, store, insert, publish);
  3. tasks per minute of one CPU worker on 2048x2048 synthetic slides with a 40x40 grid
     (segment + register + store), from the first upload to the last FINISHED.
Needs wrk (apt-get install wrk) and redis-server.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.synth.grid import fit_grid_inside  # noqa: E402
from model.synth.slide import generate_slide  # noqa: E402
from model.synth.styles import random_spec  # noqa: E402
from store.database import upgrade_database  # noqa: E402
from store.queue import create_celery  # noqa: E402
from store.settings import Settings  # noqa: E402
from tests.conftest import RedisServer  # noqa: E402
from tests.service_stack import ServiceStack, png_bytes, stack_environment  # noqa: E402

POST_SCRIPT = """
local f = io.open("{path}", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/png"
"""


def parse_wrk(output: str) -> dict:
    """p50/p99 latency (ms) and requests/s from `wrk --latency` output."""

    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    found = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.MULTILINE))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "p50_ms": ms(found["50"]),
        "p99_ms": ms(found["99"]),
        "requests_per_s": rate,
        "requests": total,
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def wrk(url: str, *, connections: int, duration: int, script: Path | None = None) -> dict:
    threads = min(2, connections)  # wrk needs a connection per thread
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "30s",
    ]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def make_database() -> str:
    admin = psycopg.connect("host=127.0.0.1 dbname=test user=postgres", autocommit=True)
    name = f"amseg_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade_database(url)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--slides", type=int, default=8, help="2048² slides for throughput")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log lines
    work = Path(tempfile.mkdtemp(prefix="amseg-bench-"))
    redis = RedisServer(work / "redis")
    redis.start()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    env = stack_environment(
        work,
        database_url=make_database(),
        redis_url=redis.url,
        s3_endpoint_url=f"http://{host}:{port}",
        TASK_STALE_AFTER_S="60",
        SWEEP_INTERVAL_S="5",
    )
    stack = ServiceStack(env=env, directory=work)
    try:
        stack.start_api()
        base = stack.base_url
        print(f"stack up: API {base}, Redis {redis.url}, S3 http://{host}:{port}, Postgres")

        rng = np.random.default_rng(0)
        five_mb = png_bytes(rng.integers(0, 256, (2290, 2290), dtype=np.uint8))
        upload = work / "upload.png"
        upload.write_bytes(five_mb)
        with httpx.Client(base_url=base, timeout=60) as client:
            task_id = client.post(
                "/tasks", content=five_mb, headers={"Content-Type": "image/png"}
            ).json()["id"]

        for connections in (1, 16):
            get = wrk(f"{base}/tasks/{task_id}", connections=connections, duration=args.duration)
            print(
                f"GET /tasks/{{id}}, {connections} connection(s): p50 {get['p50_ms']:.1f} ms, "
                f"p99 {get['p99_ms']:.1f} ms, {get['requests_per_s']:.0f} req/s "
                f"({get['requests']} requests, {get['non_2xx']} non-2xx)"
            )
        script = work / "post.lua"
        script.write_text(POST_SCRIPT.format(path=upload))
        post = wrk(f"{base}/tasks", connections=4, duration=args.duration, script=script)
        print(
            f"POST /tasks {len(five_mb) / 1e6:.1f} MB PNG, 4 connections: p50 "
            f"{post['p50_ms']:.0f} ms, p99 {post['p99_ms']:.0f} ms, "
            f"{post['requests_per_s']:.1f} uploads/s ({post['requests']} uploads, "
            f"{post['non_2xx']} non-2xx)"
        )

        slides = []
        for index in range(args.slides):
            spec = fit_grid_inside(
                random_spec(500 + index, height=2048, width=2048, rows=40, cols=40, bit_depth=8)
            )
            slides.append(png_bytes(generate_slide(spec, 500 + index).image))
        with httpx.Client(base_url=base, timeout=60) as client:
            # Drop the backlog of step 2: delete its tasks and purge their messages.
            while page := client.get("/tasks", params={"limit": 1000}).json()["data"]:
                for task in page:
                    client.delete(f"/tasks/{task['id']}")
        publisher = create_celery(
            Settings(redis_url=env["REDIS_URL"], task_queue=env["TASK_QUEUE"], data_dir=work)
        )
        with publisher.connection_for_write() as connection:
            connection.default_channel.queue_purge(env["TASK_QUEUE"])
        publisher.close()
        stack.start_worker()
        with httpx.Client(base_url=base, timeout=60) as client:
            start = time.perf_counter()
            ids = [
                client.post(
                    "/tasks",
                    params={"rows": 40, "cols": 40},
                    content=data,
                    headers={"Content-Type": "image/png"},
                ).json()["id"]
                for data in slides
            ]
            states = [stack.wait_until_over(client, task, timeout=1800) for task in ids]
            elapsed = time.perf_counter() - start
        assert all(s["status"] == "FINISHED" for s in states), states
        print(
            f"one CPU worker, {args.slides} slides 2048² (40x40 grid, registered): "
            f"{elapsed:.1f} s, {args.slides / elapsed * 60:.1f} tasks/min"
        )
    finally:
        stack.stop()
        s3.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
