"""What the web viewer and the exports read, made by the worker, which holds the decoded image and
the mask anyway: the API only sends stored bytes and never decodes an image.

A segment task makes the image's tile pack while the network runs (stored as soon as it is
made, so the viewer shows the slide of a RUNNING task), the mask's and the outlines' once the
mask is there, the changes' for a re-run, and the mark table with the ids. A views task makes
what a task finished before this lacks (the API asks for one on the viewer's first request),
and the exports on their first request.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import numpy as np

from model.errors import AmsegError
from model.image.io import write_labels_tiff
from model.image.tilepack import write_diff_pack, write_image_pack, write_mask_packs
from model.register.geojson import write_geojson
from model.register.mark_table import mark_records, marks_record, read_ams_csv
from store.blobs import SHARED_RESULTS, BlobNotFoundError, TaskBlob, task_blob_key
from store.tasks import Task, TaskStatus, ViewPart, add_result_keys, get_task
from worker.jobs import WorkerContext, download_image, progress_reporter, store_results

log = logging.getLogger(__name__)

VIEWER_PARTS = (TaskBlob.VIEW_IMAGE, TaskBlob.VIEW_MASK, TaskBlob.VIEW_OUTLINE)


def mask_views(scratch_dir: Path, mask: np.ndarray) -> dict[TaskBlob, Path]:
    """The mask's and the outlines' tile packs, to store with the results."""
    mask_path, outline_path = write_mask_packs(
        mask, scratch_dir / "mask.tiles", scratch_dir / "outline.tiles"
    )
    return {TaskBlob.VIEW_MASK: mask_path, TaskBlob.VIEW_OUTLINE: outline_path}


def diff_views(scratch_dir: Path, diff: np.ndarray) -> dict[TaskBlob, Path]:
    """A re-run's changes as a tile pack."""
    return {TaskBlob.VIEW_DIFF: write_diff_pack(diff, scratch_dir / "diff.tiles")}


def mark_table(
    scratch_dir: Path, ams_csv: str, qc: dict, mask: np.ndarray, labels: np.ndarray
) -> dict[TaskBlob, Path]:
    """The mark table the viewer reads (`GET /tasks/{id}/marks`), as JSON."""
    path = scratch_dir / "marks.json"
    path.write_text(json.dumps(marks_record(ams_csv, qc, mask, labels), separators=(",", ":")))
    return {TaskBlob.VIEW_MARKS: path}


@contextmanager
def image_views_meanwhile(
    context: WorkerContext, task_id: UUID, image: np.ndarray, scratch_dir: Path
) -> Iterator[Callable[[], dict[str, str]]]:
    """Make and store the image's tile pack in a thread while the caller goes on (the network
    runs); yields a call that waits for it and gives its result key. The thread is waited for
    on leaving, whatever happened, so that the scratch folder outlives it. A re-run's pack,
    copied from its source's when the task was made, is used as it is."""
    key = task_blob_key(task_id, TaskBlob.VIEW_IMAGE)
    try:
        copied = context.blobs.exists(key)
    except Exception as error:  # e.g. S3 answering 403 for a missing key: make the pack
        log.warning("task %s: could not ask for a copied image pack (%s)", task_id, error)
        copied = False
    if copied:
        yield lambda: {TaskBlob.VIEW_IMAGE.value: key}
        return

    def make() -> dict[str, str]:
        directory = Path(tempfile.mkdtemp(prefix="image-views-", dir=scratch_dir))
        path = write_image_pack(image, directory / "image.tiles")
        return store_results(context, task_id, {TaskBlob.VIEW_IMAGE: path})

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-views") as pool:
        future: Future[dict[str, str]] = pool.submit(make)
        try:
            yield future.result
        finally:
            future.cancel()
            pool.shutdown(wait=True)


def shared_views(task: Task) -> dict[str, str]:
    """The tile packs a register task reads where its source stored them (given to it when
    it was made), by name."""
    return {
        blob.value: task.result_keys[blob.value]
        for blob in SHARED_RESULTS
        if blob.value in task.result_keys
    }


def run_views(
    context: WorkerContext, task: Task, still_ours: Callable[[], bool]
) -> tuple[dict[str, str], dict]:
    """Make what the views task's part asks for its source task, store it with the source's
    results and add its keys to them; the keys made and a summary."""
    part = task.views_parameters.part
    progress = progress_reporter(context, task.id)
    progress(0.0, f"making the {part.value}")
    with context.sessions() as session:
        source = get_task(session, task.source_task) if task.source_task else None
        if source is not None:
            session.expunge(source)
    if source is None or source.status != TaskStatus.FINISHED:
        raise AmsegError(f"task {task.source_task} is gone or not FINISHED: nothing to make")
    with tempfile.TemporaryDirectory(prefix="amseg-views-") as scratch:
        scratch_dir = Path(scratch)
        if part == ViewPart.VIEWER:
            outputs = _viewer_outputs(context, source, scratch_dir, progress)
        elif part == ViewPart.GEOJSON:
            outputs = _geojson(context, source, scratch_dir)
        else:
            outputs = _labels_tiff(context, source, scratch_dir)
        progress(0.9, "storing")
        keys = store_results(context, source.id, outputs)
    with context.sessions() as session:
        added = add_result_keys(session, source.id, keys)
    if not added:  # deleted meanwhile: leave nothing behind
        for key in keys.values():
            context.blobs.delete_prefix(key)
        log.info("views of task %s: the task went while they were made", source.id)
    log.info("views of task %s: made %s", source.id, ", ".join(sorted(keys)) or "nothing")
    return {}, {"made": sorted(keys), "source_task": str(source.id)}


def _viewer_outputs(
    context: WorkerContext, source: Task, scratch_dir: Path, progress: Callable[..., None]
) -> dict[TaskBlob, Path]:
    """Every viewer part the source lacks, made one decode at a time."""
    keys = source.result_keys
    outputs: dict[TaskBlob, Path] = {}
    if TaskBlob.VIEW_IMAGE.value not in keys:
        image = _decode(context, source.input_key, scratch_dir / "input", "the image")
        outputs[TaskBlob.VIEW_IMAGE] = write_image_pack(image, scratch_dir / "image.tiles")
        del image
    progress(0.4)
    mask = None
    needs_marks = TaskBlob.AMS.value in keys and TaskBlob.VIEW_MARKS.value not in keys
    if needs_marks or not all(blob.value in keys for blob in VIEWER_PARTS[1:]):
        mask = _decode(context, keys[TaskBlob.MASK.value], scratch_dir / "mask", "the mask")
    if mask is not None and not all(blob.value in keys for blob in VIEWER_PARTS[1:]):
        outputs.update(mask_views(scratch_dir, mask))
    if needs_marks:
        labels = _decode(context, labels_key(source), scratch_dir / "labels", "the ids")
        ams = context.blobs.get_bytes(keys[TaskBlob.AMS.value]).decode()
        qc = json.loads(context.blobs.get_bytes(keys[TaskBlob.QC.value]))
        outputs.update(mark_table(scratch_dir, ams, qc, mask, labels))
        del labels
    del mask
    progress(0.7)
    if TaskBlob.DIFF.value in keys and TaskBlob.VIEW_DIFF.value not in keys:
        diff = _decode(context, keys[TaskBlob.DIFF.value], scratch_dir / "diff", "the changes")
        outputs.update(diff_views(scratch_dir, diff))
    return outputs


def _geojson(context: WorkerContext, source: Task, scratch_dir: Path) -> dict[TaskBlob, Path]:
    keys = source.result_keys
    marks = read_ams_csv(context.blobs.get_bytes(keys[TaskBlob.AMS.value]).decode())
    labels = _decode(context, labels_key(source), scratch_dir / "labels", "the ids")
    joined = bool(marks) and "spectrum" in marks[0]
    path = write_geojson(scratch_dir / "marks.geojson", labels, mark_records(marks), joined)
    return {TaskBlob.EXPORT_GEOJSON: path}


def _labels_tiff(context: WorkerContext, source: Task, scratch_dir: Path) -> dict[TaskBlob, Path]:
    key = source.result_keys[TaskBlob.LABELS.value]
    labels = _decode(context, key, scratch_dir / "labels", "the ids")
    return {TaskBlob.EXPORT_LABELS_TIFF: write_labels_tiff(scratch_dir / "labels.tiff", labels)}


def _decode(context: WorkerContext, key: str, path: Path, name: str) -> np.ndarray:
    """A stored image or result, decoded; one lost from storage fails the task in words."""
    try:
        return download_image(context, key, path, name)
    except BlobNotFoundError:
        raise AmsegError(f"{name} is missing from storage") from None


def labels_key(task: Task) -> str:
    """The task's id image: labels.png, or labels.tiff for a grid beyond 65 535 nodes."""
    keys = task.result_keys
    return keys.get(TaskBlob.LABELS_TIFF.value) or keys[TaskBlob.LABELS.value]
