"""A segment task made from another one (a re-run, e.g. with a fine-tuned model) says what
changed: its mask is compared with its source's (model.compare), the counts go in the task's
summary under `changes` and the diff image is stored as `diff.png`. Without a source, or when
the source has no mask any more, there is simply nothing to compare; that never fails the task."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from model.compare import compare_masks
from model.errors import AmsegError
from model.image.io import write_png
from store.blobs import BlobNotFoundError, TaskBlob
from store.tasks import SEGMENTATION_KINDS, Task, TaskStatus, get_task
from worker.jobs import WorkerContext, download_image
from worker.viewing import diff_views

log = logging.getLogger(__name__)


def compare_with_source(
    context: WorkerContext, task: Task, mask: np.ndarray, scratch_dir: Path
) -> tuple[dict[TaskBlob, Path], dict | None]:
    """The diff image (and its tile pack, for the viewer) to store and the `changes` summary,
    or ({}, None)."""
    before = _source_mask(context, task, scratch_dir / "source_mask.png")
    if before is None:
        return {}, None
    if before.shape[:2] != mask.shape[:2]:
        log.warning(
            "task %s: the source's mask is %s, this one %s", task.id, before.shape, mask.shape
        )
        return {}, None
    result = compare_masks(before, mask)
    del before
    path = write_png(scratch_dir / TaskBlob.DIFF.value, result.diff)
    changes = {"source_task": str(task.source_task), **result.counts()}
    log.info("task %s against task %s: %s", task.id, task.source_task, result.counts())
    return {TaskBlob.DIFF: path, **diff_views(scratch_dir, result.diff)}, changes


def _source_mask(context: WorkerContext, task: Task, path: Path) -> np.ndarray | None:
    if task.source_task is None:
        return None
    with context.sessions() as session:
        source = get_task(session, task.source_task)
        finished = (
            source is not None
            and source.kind in SEGMENTATION_KINDS
            and source.status == TaskStatus.FINISHED
        )
        key = source.result_keys.get(TaskBlob.MASK.value) if finished else None
    if key is None:
        log.info("task %s: source %s has no mask to compare with", task.id, task.source_task)
        return None
    try:
        return download_image(context, key, path, "the earlier mask")
    except (BlobNotFoundError, AmsegError) as error:  # deleted meanwhile, or damaged
        log.warning("task %s: no comparison with task %s: %s", task.id, task.source_task, error)
        return None
