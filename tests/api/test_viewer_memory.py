"""The API opens 20000² slides in the viewer without decoding them: their tiles are the worker's
tile packs, read by byte ranges, so its memory stays small however large the slides (it used
to decode each one, ~1.5 GB a slide: BENCHMARKS.md)."""

import threading
from pathlib import Path

import pytest

from store.blobs import TaskBlob, task_blob_key
from store.tasks import finish_task, mark_running
from tests.service_stack import ServiceStack
from tests.viewer_load import MemoryWatch, open_viewer, slide_views, zeros_png

SIDE = 20_000
VIEWERS = 4
MAX_PEAK_RSS_BYTES = 400 * 1024**2  # as for uploads (tests/api/test_upload_memory.py)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def memory_stack(make_stack) -> ServiceStack:
    # A stack of its own and no worker: the tasks are finished below, as a worker would. Blobs
    # in DATA_DIR, as `amseg up` keeps them (moto's S3 copies a whole object for each ranged
    # read: minutes for these; ranged reads from S3 are tested in test_views.py).
    return make_stack(workers=0, S3_BUCKET="")


def finished_huge_slides(stack: ServiceStack, views: dict[str, Path], count: int) -> list[str]:
    """`count` 20000² uploads, FINISHED with what a worker stores for the viewer (one set of
    files, copied to each task in the store, so every viewer reads its own)."""
    data = zeros_png(SIDE, SIDE)
    blobs = stack.blobs()
    ids = []
    with stack.client() as client:
        for number in range(count):
            response = client.post(
                "/tasks",
                content=data,
                params={"name": f"huge{number}.png"},
                headers={"Content-Type": "image/png"},
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    for task_id in ids:
        keys = {name: f"tasks/{task_id}/{name}" for name in views}
        if task_id == ids[0]:
            for name, path in views.items():
                blobs.put_file(keys[name], path)
        else:
            for name, key in keys.items():
                blobs.copy(f"tasks/{ids[0]}/{name}", key)
        keys[TaskBlob.MASK.value] = task_blob_key(task_id, TaskBlob.MASK)
        keys[TaskBlob.AMS.value] = task_blob_key(task_id, TaskBlob.AMS)
        with stack.sessions()() as session:
            assert mark_running(session, task_id, stale_after_s=60, max_attempts=3)
            assert finish_task(session, task_id, result_keys=keys, summary={"warnings": []})
    return ids


def test_four_viewers_open_20000_px_slides_and_the_api_stays_small(
    memory_stack: ServiceStack, tmp_path: Path
) -> None:
    views = slide_views(tmp_path, SIDE)
    ids = finished_huge_slides(memory_stack, views, VIEWERS)
    barrier = threading.Barrier(VIEWERS)
    requests: list[int] = []

    def viewer(task_id: str) -> None:
        barrier.wait()
        requests.append(open_viewer(memory_stack.base_url, task_id))

    watch = MemoryWatch(memory_stack.api.pid)
    before = watch.rss()
    with watch:
        threads = [threading.Thread(target=viewer, args=(task_id,)) for task_id in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(requests) == VIEWERS, "a viewer failed (see above)"
    peak = watch.peak()
    print(
        f"API: {before / 2**20:.0f} MB before, peak {peak / 2**20:.0f} MB while {VIEWERS} "
        f"viewers opened {SIDE}² slides ({sum(requests)} requests)"
    )
    assert peak < MAX_PEAK_RSS_BYTES
