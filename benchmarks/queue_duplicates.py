"""What a duplicate message costs on `amseg up` (file queue): one task FINISHED, then N copies of
its message sent; the time until the queue is empty again, and the task's attempts after.

    .venv/bin/python benchmarks/queue_duplicates.py [--copies 200] [--rounds 2]

The worker's main process drops a copy whose task nobody could claim before the pool sees it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store.queue import resend_first, waiting_task_ids  # noqa: E402
from store.settings import Settings  # noqa: E402
from tests.api.test_cli_up import running_up, wait_for  # noqa: E402
from tests.api.test_queue_flood import small_png  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="amseg-duplicates-")) / "data"
    settings = Settings(embedded=True, data_dir=data_dir)
    with running_up(data_dir) as (_, client):
        png = {"Content-Type": "image/png"}
        task_id = client.post("/tasks", content=small_png(1), headers=png).json()["id"]
        wait_for(client, task_id, lambda state: state["status"] == "FINISHED")
        for _ in range(args.rounds):
            resend_first(settings, [task_id] * args.copies)
            started = time.monotonic()
            while sum(waiting_task_ids(settings).values()):
                time.sleep(0.02)
            seconds = time.monotonic() - started
            attempts = client.get(f"/tasks/{task_id}").json()["attempts"]
            print(
                f"{args.copies} copies gone in {seconds:.2f} s "
                f"({1000 * seconds / args.copies:.1f} ms each); the task's attempts: {attempts}"
            )


if __name__ == "__main__":
    main()
