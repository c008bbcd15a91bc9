"""What the viewer and the exports read, as the worker stored it: the API decodes no image.

Each layer of a task's pyramid is a tile pack in the blob store (model/image/tilepack.py): the
API reads its index once (one ranged read of its tail) and then each tile as a byte range, and
keeps indexes and recently sent tiles in memory up to VIEW_CACHE_BYTES (least recently used
out). The mark table and the exports are stored files, sent as they are.

A task that lacks them (finished before workers made tiles, or an export asked for the first
time) gets a views task: the first request queues one at the head of the queue and is answered
"not ready, ask again" (409 with Retry-After); the worker stores what it made with the task's
results. A QUEUED task has no tiles yet: its worker makes the image's as soon as it starts.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from uuid import UUID

import anyio
import cv2
import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from model.image.pyramid import TileOutOfRange
from model.image.tilepack import PackIndex, TilePackError, read_index
from store.blobs import BlobNotFoundError, BlobStore, TaskBlob, task_blob_key, task_prefix
from store.tasks import (
    Task,
    TaskStatus,
    ViewPart,
    ViewsParameters,
    create_task,
    get_task,
    latest_views_task,
    utc_now,
)

log = logging.getLogger(__name__)

# A failed views task is answered with its error for this long; a request after that asks
# for a new one (the failure may have been a passing storage outage).
RETRY_FAILED_BUILD_S = 60.0
# Clients are told to ask again after this many seconds while tiles are being made.
RETRY_AFTER_S = 2

NOT_STARTED = (
    "its tiles are made by the worker that runs it, as soon as it starts; ask again in a few "
    "seconds"
)
# What the viewer of a FINISHED task reads, besides the packs of layers it may not have.
VIEWER_BLOBS = (TaskBlob.VIEW_IMAGE, TaskBlob.VIEW_MASK, TaskBlob.VIEW_OUTLINE)


class ViewNotReady(Exception):
    """What was asked for is not stored yet and a worker is (or will be) making it; the
    message says which, for the person looking."""


class ViewUnavailable(Exception):
    """The worker could not make what was asked for (the image or the mask cannot be
    decoded, or is gone); the message says why."""


class _ByteCache:
    """A least-recently-used map whose values say their size; thread-safe."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self._items: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> object | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: tuple, value: object, size: int) -> None:
        if size > self.limit_bytes:
            return
        with self._lock:
            if (old := self._items.pop(key, None)) is not None:
                self.held_bytes -= old[1]
            self._items[key] = (value, size)
            self.held_bytes += size
            while self.held_bytes > self.limit_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.held_bytes -= dropped

    def drop_prefix(self, prefix: str) -> None:
        with self._lock:
            for key in [key for key in self._items if key[0].startswith(prefix)]:
                self.held_bytes -= self._items.pop(key)[1]


class ViewStore:
    """The viewer's and the exports' stored files of every task, read for the routes."""

    def __init__(
        self,
        blobs: BlobStore,
        sessions: sessionmaker[Session],
        publish_first: Callable[[str], None],
        *,
        cache_bytes: int,
    ) -> None:
        self.blobs = blobs
        self.sessions = sessions
        self.publish_first = publish_first
        self.cache = _ByteCache(cache_bytes)

    # Tiles -----------------------------------------------------------------------------

    async def index(self, task: Task, blob: TaskBlob) -> tuple[str, PackIndex]:
        """The key and index of one of the task's tile packs; ViewNotReady, ViewUnavailable."""
        key = await self._key(task, blob, ViewPart.VIEWER)
        try:
            return key, await anyio.to_thread.run_sync(self._index, key)
        except BlobNotFoundError:
            if task.status != TaskStatus.FINISHED:
                raise ViewNotReady(NOT_STARTED) from None
            raise ViewUnavailable("its tiles are missing from storage") from None

    def _index(self, key: str) -> PackIndex:
        if (cached := self.cache.get((key, "index"))) is not None:
            return cached
        try:
            index = read_index(
                lambda n: self.blobs.get_tail(key, n),
                lambda start, length: self.blobs.get_range(key, start, length),
            )
        except TilePackError as error:
            raise ViewUnavailable(f"its stored tiles are damaged ({error})") from None
        self.cache.put((key, "index"), index, index.nbytes)
        return index

    async def tile(self, task: Task, blob: TaskBlob, level: int, col: int, row: int) -> bytes:
        """One tile's PNG as stored; TileOutOfRange, ViewNotReady, ViewUnavailable."""
        key, index = await self.index(task, blob)
        return await anyio.to_thread.run_sync(self._tile, key, index, level, col, row)

    def _tile(self, key: str, index: PackIndex, level: int, col: int, row: int) -> bytes:
        start, length = index.tile_span(level, col, row)
        if (cached := self.cache.get((key, start))) is not None:
            return cached
        data = self.blobs.get_range(key, start, length)
        self.cache.put((key, start), data, len(data))
        return data

    async def preview(self, task: Task, max_side: int) -> np.ndarray:
        """The image with its longer side `max_side` px (never enlarged), from the smallest
        level at least that large: one read of that level's tiles, a few MB at most."""
        key, index = await self.index(task, TaskBlob.VIEW_IMAGE)
        return await anyio.to_thread.run_sync(_preview, self.blobs, key, index, max_side)

    # Whole files -------------------------------------------------------------------------

    async def marks(self, task: Task) -> bytes:
        """The mark table of a FINISHED, registered task (the caller checks that)."""
        key = await self._key(task, TaskBlob.VIEW_MARKS, ViewPart.VIEWER)
        try:
            return await anyio.to_thread.run_sync(self.blobs.get_bytes, key)
        except BlobNotFoundError:
            raise ViewUnavailable("its mark table is missing from storage") from None

    async def export(self, task: Task, blob: TaskBlob, part: ViewPart, wait_s: float) -> str:
        """The key of an export of a FINISHED task, made by a worker on the first request:
        waits up to `wait_s` for it; ViewNotReady after that."""
        if (key := task.result_keys.get(blob.value)) is not None:
            return key
        deadline = anyio.current_time() + wait_s
        message = await anyio.to_thread.run_sync(self._ask_for, task, part)
        while anyio.current_time() < deadline:
            await anyio.sleep(0.5)
            fresh = await anyio.to_thread.run_sync(self._reload, task.id)
            if fresh is None:
                break
            if (key := fresh.result_keys.get(blob.value)) is not None:
                return key
            await anyio.to_thread.run_sync(self._check_build, fresh, part)
        raise ViewNotReady(message)

    # What a task lacks -------------------------------------------------------------------

    async def state(self, task: Task) -> tuple[str, list[TaskBlob], str | None]:
        """What the viewer can read of the task now: "ready", "pending" (QUEUED or RUNNING:
        its worker makes them), "building" (a views task is making them) or "failed"; the
        packs stored; the error when failed."""
        if task.status != TaskStatus.FINISHED:
            try:
                await self.index(task, TaskBlob.VIEW_IMAGE)
                return "pending", [TaskBlob.VIEW_IMAGE], None
            except (ViewNotReady, ViewUnavailable):
                return "pending", [], None
        keys = task.result_keys
        stored = [blob for blob in (*VIEWER_BLOBS, TaskBlob.VIEW_DIFF) if blob.value in keys]
        if all(blob.value in keys for blob in expected_views(task)):
            return "ready", stored, None
        try:
            await anyio.to_thread.run_sync(self._ask_for, task, ViewPart.VIEWER)
        except ViewUnavailable as error:
            return "failed", stored, str(error)
        return "building", stored, None

    async def _key(self, task: Task, blob: TaskBlob, part: ViewPart) -> str:
        """Where the task's `blob` is stored; a FINISHED task that lacks it gets a views task
        (ViewNotReady). A QUEUED or RUNNING task's image pack has its own key."""
        if (key := task.result_keys.get(blob.value)) is not None:
            return key
        if task.status != TaskStatus.FINISHED:
            return task_blob_key(task.id, blob)
        raise ViewNotReady(await anyio.to_thread.run_sync(self._ask_for, task, part))

    def _ask_for(self, task: Task, part: ViewPart) -> str:
        """Queue a views task for `part` of `task` unless one is on its way; what to tell the
        person waiting. ViewUnavailable when the last one failed a moment ago."""
        with self.sessions() as session:
            latest = latest_views_task(session, task.id, part)
            if latest is not None and (waiting := self._judge(latest, part)) is not None:
                return waiting
            after = latest.id if latest is not None else "none"
            views, created = create_task(
                session,
                parameters=ViewsParameters(part=part),
                input_content_type=task.input_content_type,
                input_size=task.input_size,
                image_width=task.image_width,
                image_height=task.image_height,
                input_key=task.input_key,
                source_task=task.id,
                name=task.name,
                # Two requests at once make one task: the key names the one it follows.
                idempotency_key=f"views/{task.id}/{part.value}/after-{after}",
            )
            views_id = str(views.id)
        if created:
            log.info("task %s lacks its %s: views task %s queued", task.id, part.value, views_id)
            try:
                self.publish_first(views_id)
            except Exception as error:  # the sweep sends it once the broker is back
                log.warning("could not queue views task %s now (%s)", views_id, error)
        return _building(part)

    def _check_build(self, task: Task, part: ViewPart) -> None:
        """Raises ViewUnavailable when the views task making `part` of `task` failed."""
        with self.sessions() as session:
            latest = latest_views_task(session, task.id, part)
            if latest is not None and latest.status == TaskStatus.FAILED:
                raise ViewUnavailable(latest.error or "the worker could not make it")

    def _judge(self, latest: Task, part: ViewPart) -> str | None:
        """What the latest views task says (ViewUnavailable when it failed a moment ago), or
        None when it is time for a new one."""
        if latest.status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            return _building_since(latest, part)
        recent = latest.finished_at is not None and utc_now() - latest.finished_at < timedelta(
            seconds=RETRY_FAILED_BUILD_S
        )
        if recent and latest.status == TaskStatus.FAILED:
            raise ViewUnavailable(latest.error or "the worker could not make it")
        if recent:  # FINISHED a moment ago: the task read before it may not show its keys
            return _building_since(latest, part)
        return None

    def _reload(self, task_id: UUID) -> Task | None:
        with self.sessions() as session:
            task = get_task(session, task_id)
            if task is not None:
                session.expunge(task)
            return task

    def drop(self, task_id: UUID | str) -> None:
        """Forget what is held of a deleted task."""
        self.cache.drop_prefix(task_prefix(task_id))


def expected_views(task: Task) -> list[TaskBlob]:
    """What the viewer of a FINISHED task reads: the packs, the changes' for a re-run, the
    mark table for a registered task."""
    keys = task.result_keys
    expected = list(VIEWER_BLOBS)
    if TaskBlob.DIFF.value in keys:
        expected.append(TaskBlob.VIEW_DIFF)
    if TaskBlob.AMS.value in keys:
        expected.append(TaskBlob.VIEW_MARKS)
    return expected


def _preview(blobs: BlobStore, key: str, index: PackIndex, max_side: int) -> np.ndarray:
    shape = index.shape
    scale = min(1.0, max_side / max(shape.width, shape.height))
    width = max(1, round(shape.width * scale))
    height = max(1, round(shape.height * scale))
    level = 0
    for candidate, (level_width, level_height) in enumerate(shape.level_sizes):
        if level_width >= width and level_height >= height:
            level = candidate
    level_width, level_height = shape.level_sizes[level]
    cols, rows = shape.grid(level)
    first, _ = index.tile_span(level, 0, 0)
    last_start, last_length = index.tile_span(level, cols - 1, rows - 1)
    data = blobs.get_range(key, first, last_start + last_length - first)
    pixels = np.empty((level_height, level_width), dtype=np.uint8)
    for row in range(rows):
        for col in range(cols):
            start, length = index.tile_span(level, col, row)
            tile = np.frombuffer(data, np.uint8, count=length, offset=start - first)
            x0, y0, x1, y1 = shape.tile_box(level, col, row)
            pixels[y0:y1, x0:x1] = cv2.imdecode(tile, cv2.IMREAD_UNCHANGED)
    if pixels.shape == (height, width):
        return pixels
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)


def _what(part: ViewPart) -> str:
    return {
        ViewPart.VIEWER: "tiles",
        ViewPart.GEOJSON: "marks.geojson",
        ViewPart.LABELS_TIFF: "labels.tiff",
    }[part]


def _building(part: ViewPart) -> str:
    why = (
        "the task finished before workers made them"
        if part == ViewPart.VIEWER
        else "it is made on the first request"
    )
    return f"a worker is making its {_what(part)} now ({why}); ask again in a few seconds"


def _building_since(latest: Task, part: ViewPart) -> str:
    state = "waits for a worker" if latest.status == TaskStatus.QUEUED else "is being made"
    return f"its {_what(part)} {state} (views task {latest.id}); ask again in a few seconds"


__all__ = ["TileOutOfRange", "ViewNotReady", "ViewStore", "ViewUnavailable", "expected_views"]
