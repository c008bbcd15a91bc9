"""What the viewer reads, built once per task on first request and kept on the API's disk
(`DATA_DIR/views/<task id>/`): the image pyramid, the mask pyramid and the marks JSON; and the
exports made from the ids on request: marks.geojson and the 32-bit labels TIFF.

A build decodes the slide once, in a worker thread, one build at a time per process (memory
stays that of one decode); a file lock makes concurrent processes wait for each other instead
of building twice. Builds land by renaming a finished directory, so readers never see half of
one. The least recently used tasks are dropped when the cache passes VIEW_CACHE_BYTES;
deleting a task drops its views.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import anyio
import numpy as np

from api.marks import mark_records, marks_record, read_ams_csv
from api.pyramid import (
    STRIP_ROWS,
    Pyramid,
    PyramidShape,
    build_levels,
    create_level,
    halve_max,
    normalized_gray,
)
from model.image.gray import read_gray
from model.image.io import write_labels_tiff
from model.register.geojson import write_geojson
from store.blobs import BlobNotFoundError, BlobStore, TaskBlob
from store.tasks import Task

log = logging.getLogger(__name__)

# Views that could not be built (a damaged image) are remembered, so that the viewer's many
# tile requests get the same answer at once instead of decoding it again: this many at most.
REMEMBERED_FAILURES = 1024
VIEW_CACHE_BYTES = 8 * 1024**3  # all tasks' views on this API's disk together
OPEN_PYRAMIDS = 16  # memory-mapped pyramids kept open per process
_USED = ".used"  # its mtime says when a task's views were last opened
IMAGE, MASK, MARKS, DIFF = "image", "mask", "marks", "diff"
GEOJSON, LABELS_TIFF = "geojson", "labels_tiff"
_MARKERS = {
    IMAGE: "meta.json",
    MASK: "meta.json",
    MARKS: "marks.json",
    DIFF: "meta.json",
    GEOJSON: "marks.geojson",
    LABELS_TIFF: "labels.tiff",
}


class ViewUnavailable(Exception):
    """A task's stored image (or mask) cannot be decoded, so its views cannot be built; the
    message says why, for the person looking."""


class ViewCache:
    """The views of tasks under one directory, shared by every process of this API host."""

    def __init__(
        self, root: Path, blobs: BlobStore, *, max_pixels: int, max_bytes: int | None = None
    ) -> None:
        self.root = root
        self.blobs = blobs
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.limit_bytes = VIEW_CACHE_BYTES
        self._builds = anyio.CapacityLimiter(1)
        self._open: OrderedDict[tuple[str, str], Pyramid] = OrderedDict()
        self._open_lock = threading.Lock()
        self._failed: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def image(self, task: Task) -> Pyramid:
        """The task's input as the model sees it (8-bit, normalized); any task status."""
        await self._ensure(task, IMAGE, self._build_image)
        return await anyio.to_thread.run_sync(self._opened, task.id, IMAGE)

    async def mask(self, task: Task) -> Pyramid:
        """The mask pyramid of a FINISHED task (the caller checks that)."""
        await self._ensure(task, MASK, self._build_mask)
        return await anyio.to_thread.run_sync(self._opened, task.id, MASK)

    async def diff(self, task: Task) -> Pyramid:
        """The changes of a FINISHED re-run against its source (the caller checks it has them):
        model.compare's codes, each smaller level the block maxima, so no code is made up and
        small changes stay in sight."""
        await self._ensure(task, DIFF, self._build_diff)
        return await anyio.to_thread.run_sync(self._opened, task.id, DIFF)

    async def marks(self, task: Task) -> bytes:
        """The marks JSON of a FINISHED, registered task (the caller checks that)."""
        directory = await self._ensure(task, MARKS, self._build_marks)
        return await anyio.to_thread.run_sync((directory / _MARKERS[MARKS]).read_bytes)

    async def geojson(self, task: Task) -> Path:
        """marks.geojson of a FINISHED, registered task (the caller checks that)."""
        directory = await self._ensure(task, GEOJSON, self._build_geojson)
        return directory / _MARKERS[GEOJSON]

    async def labels_tiff(self, task: Task) -> Path:
        """The ids of a FINISHED task with labels.png as a 32-bit TIFF (the caller checks)."""
        directory = await self._ensure(task, LABELS_TIFF, self._build_labels_tiff)
        return directory / _MARKERS[LABELS_TIFF]

    def drop(self, task_id: UUID | str) -> None:
        """Forget a task's views (it was deleted)."""
        with self._open_lock:
            for key in [key for key in self._open if key[0] == str(task_id)]:
                del self._open[key]
        shutil.rmtree(self.root / str(task_id), ignore_errors=True)

    async def _ensure(self, task: Task, part: str, build: Callable[[Task, Path], None]) -> Path:
        """The part's directory, built now if needed; raises ViewUnavailable (logged once)."""
        final = self.root / str(task.id) / part
        if (final / _MARKERS[part]).is_file():
            return final
        if (failed := self._failed.get((str(task.id), part))) is not None:
            raise ViewUnavailable(failed)
        try:
            async with self._builds:
                await anyio.to_thread.run_sync(self._build_once, task, part, build)
        except ViewUnavailable as error:
            self._remember_failure(str(task.id), part, str(error))
            raise
        return final

    def _remember_failure(self, task_id: str, part: str, message: str) -> None:
        log.warning("cannot build the %s view of task %s: %s", part, task_id, message)
        self._failed[task_id, part] = message
        while len(self._failed) > REMEMBERED_FAILURES:
            self._failed.popitem(last=False)

    def _build_once(self, task: Task, part: str, build: Callable[[Task, Path], None]) -> None:
        task_dir = self.root / str(task.id)
        final = task_dir / part
        task_dir.mkdir(parents=True, exist_ok=True)
        with (task_dir / f".{part}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it
            if (final / _MARKERS[part]).is_file():
                return
            started = time.perf_counter()
            building = task_dir / f".{part}.{uuid.uuid4().hex}"
            building.mkdir()
            try:
                build(task, building)
                shutil.rmtree(final, ignore_errors=True)  # an incomplete one, if any
                os.rename(building, final)
            finally:
                shutil.rmtree(building, ignore_errors=True)
        log.info(
            "built the %s view of task %s in %.1fs", part, task.id, time.perf_counter() - started
        )
        self._evict(keep=str(task.id))

    def _download(self, key: str, directory: Path, what: str = "image") -> np.ndarray:
        """The stored image under `key`, decoded to one gray channel (all a view shows, so the
        colour image is never held whole); ViewUnavailable when it is gone or damaged (the API
        checked only the upload's header). Other storage errors propagate."""
        path = directory / "blob"
        try:
            with path.open("wb") as handle:
                for chunk in self.blobs.iter_chunks(key):
                    handle.write(chunk)
        except BlobNotFoundError:
            raise ViewUnavailable(f"the {what} is missing from storage") from None
        try:
            return read_gray(path, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        except MemoryError:
            raise
        except Exception as error:  # a decoder's error: truncated file, corrupt stream
            detail = " ".join(str(error).replace(str(path), what).split()) or type(error).__name__
            raise ViewUnavailable(f"the stored {what} cannot be decoded ({detail})") from None
        finally:
            path.unlink(missing_ok=True)

    def _build_image(self, task: Task, directory: Path) -> None:
        with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
            image = self._download(task.input_key, Path(scratch))
        height, width = image.shape[:2]
        level0 = create_level(directory, 0, width, height)
        low, high = normalized_gray(image, level0)
        level0.flush()
        del image, level0
        meta = {"layer": IMAGE, "window": [low, high]}
        build_levels(directory, PyramidShape(width, height), meta)

    def _build_mask(self, task: Task, directory: Path) -> None:
        with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
            mask = self._download(task.result_keys[TaskBlob.MASK.value], Path(scratch), "mask")
        height, width = mask.shape[:2]
        level0 = create_level(directory, 0, width, height)
        for top in range(0, height, STRIP_ROWS):
            strip = mask[top : top + STRIP_ROWS]
            level0[top : top + STRIP_ROWS] = (strip > 0).view(np.uint8) * np.uint8(255)
        level0.flush()
        del mask, level0
        build_levels(directory, PyramidShape(width, height), {"layer": MASK})

    def _build_diff(self, task: Task, directory: Path) -> None:
        with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
            diff = self._download(task.result_keys[TaskBlob.DIFF.value], Path(scratch), "changes")
        height, width = diff.shape[:2]
        level0 = create_level(directory, 0, width, height)
        level0[:] = diff
        level0.flush()
        del diff, level0
        build_levels(directory, PyramidShape(width, height), {"layer": DIFF}, reduce=halve_max)

    def _build_marks(self, task: Task, directory: Path) -> None:
        keys = task.result_keys
        ams = self.blobs.get_bytes(keys[TaskBlob.AMS.value]).decode()
        qc = json.loads(self.blobs.get_bytes(keys[TaskBlob.QC.value]))
        with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
            mask = self._download(keys[TaskBlob.MASK.value], Path(scratch))
            labels = self._download(_labels_key(task), Path(scratch), "ids")
        record = marks_record(ams, qc, mask, labels)
        del mask, labels
        text = json.dumps(record, separators=(",", ":"))
        (directory / _MARKERS[MARKS]).write_text(text)

    def _build_geojson(self, task: Task, directory: Path) -> None:
        ams = self.blobs.get_bytes(task.result_keys[TaskBlob.AMS.value]).decode()
        marks = read_ams_csv(ams)
        with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
            labels = self._download(_labels_key(task), Path(scratch), "ids")
        joined = bool(marks) and "spectrum" in marks[0]
        write_geojson(directory / _MARKERS[GEOJSON], labels, mark_records(marks), joined)

    def _build_labels_tiff(self, task: Task, directory: Path) -> None:
        with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
            labels = self._download(task.result_keys[TaskBlob.LABELS.value], Path(scratch), "ids")
        write_labels_tiff(directory / _MARKERS[LABELS_TIFF], labels)

    def _opened(self, task_id: UUID, part: str) -> Pyramid:
        key = (str(task_id), part)
        with self._open_lock:
            if key in self._open:
                self._open.move_to_end(key)
                return self._open[key]
        pyramid = Pyramid(self.root / str(task_id) / part)
        with contextlib.suppress(OSError):
            (self.root / str(task_id) / _USED).touch()
        with self._open_lock:
            self._open[key] = pyramid
            while len(self._open) > OPEN_PYRAMIDS:
                self._open.popitem(last=False)
        return pyramid

    def _evict(self, keep: str) -> None:
        """Drop the least recently used tasks' views until the cache fits its limit."""
        entries = []
        total = 0
        for task_dir in self.root.iterdir():
            if not task_dir.is_dir():
                continue
            size = sum(f.stat().st_size for f in task_dir.rglob("*") if f.is_file())
            total += size
            used = task_dir / _USED
            last = used.stat().st_mtime if used.exists() else task_dir.stat().st_mtime
            if task_dir.name != keep:
                entries.append((last, size, task_dir))
        for _, size, task_dir in sorted(entries):
            if total <= self.limit_bytes:
                break
            log.info("view cache over %d bytes: dropping %s", self.limit_bytes, task_dir.name)
            self.drop(task_dir.name)
            total -= size


def _labels_key(task: Task) -> str:
    """The task's id image: labels.png, or labels.tiff for a grid beyond 65 535 nodes."""
    keys = task.result_keys
    return keys.get(TaskBlob.LABELS_TIFF.value) or keys[TaskBlob.LABELS.value]
