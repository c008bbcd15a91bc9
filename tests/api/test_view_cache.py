"""The API's side of the viewer's tiles, without the service: what it keeps in memory, and the
preview it puts together from a stored level's tiles (it decodes no image of its own)."""

from pathlib import Path

import anyio
import cv2
import numpy as np

from api.view_cache import ViewStore, _ByteCache
from model.image.tilepack import read_file_index, write_image_pack
from store.blobs import LocalBlobStore, TaskBlob
from store.tasks import Task, TaskStatus


def test_the_cache_holds_the_most_recently_used_up_to_its_bytes() -> None:
    cache = _ByteCache(100)
    cache.put(("tasks/a/views/image.tiles", 1), b"a", 40)
    cache.put(("tasks/a/views/image.tiles", 2), b"b", 40)
    assert cache.get(("tasks/a/views/image.tiles", 1)) == b"a"  # now the most recent
    cache.put(("tasks/b/views/image.tiles", 1), b"c", 40)  # 120 bytes: the oldest goes
    assert cache.get(("tasks/a/views/image.tiles", 2)) is None
    assert cache.held_bytes == 80
    cache.put(("tasks/b/views/image.tiles", 2), b"big", 101)  # larger than all: not kept
    assert cache.get(("tasks/b/views/image.tiles", 2)) is None
    cache.drop_prefix("tasks/a/")
    assert cache.get(("tasks/a/views/image.tiles", 1)) is None and cache.held_bytes == 40
    nothing = _ByteCache(0)
    nothing.put(("k", 0), b"x", 1)
    assert nothing.get(("k", 0)) is None


def test_tiles_and_previews_are_read_from_the_stored_pack(tmp_path: Path) -> None:
    image = np.random.default_rng(8).integers(0, 60000, (700, 1100), dtype=np.uint16)
    blobs = LocalBlobStore(tmp_path / "blobs")
    pack = write_image_pack(image, tmp_path / "image.tiles")
    key = "tasks/00000000-0000-4000-8000-000000000001/views/image.tiles"
    blobs.put_file(key, pack)
    task = Task(
        id="00000000-0000-4000-8000-000000000001",
        status=TaskStatus.FINISHED,
        result_keys={TaskBlob.VIEW_IMAGE.value: key},
        image_width=1100,
        image_height=700,
    )
    views = ViewStore(blobs, sessions=None, publish_first=None, cache_bytes=1024**2)
    index = read_file_index(pack)

    async def read() -> tuple[bytes, np.ndarray, np.ndarray]:
        tile = await views.tile(task, TaskBlob.VIEW_IMAGE, 0, 4, 2)
        return tile, await views.preview(task, 300), await views.preview(task, 5000)

    tile, small, whole = anyio.run(read)
    start, length = index.tile_span(0, 4, 2)
    assert tile == pack.read_bytes()[start : start + length]  # the stored bytes, as they are
    level0 = np.zeros((700, 1100), np.uint8)
    for row in range(3):
        for col in range(5):
            start, length = index.tile_span(0, col, row)
            encoded = np.frombuffer(pack.read_bytes()[start : start + length], np.uint8)
            level0[row * 256 : row * 256 + 256, col * 256 : col * 256 + 256] = cv2.imdecode(
                encoded, cv2.IMREAD_UNCHANGED
            )
    np.testing.assert_array_equal(whole, level0)
    assert small.shape == (191, 300)
    assert views.cache.held_bytes > 0
    views.drop(task.id)
    assert views.cache.held_bytes == 0
