"""What a worker does with one task: claim it, segment (and register) its image, store results.

The same `model/` functions as `amseg predict` and `amseg register` do the work, so the service
and the CLI give the same masks and ids for the same image.

Safe to run twice: results go to deterministic keys, claiming and finishing are conditional
updates, and a task that is already FINISHED or FAILED is left as it is.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from model.errors import AmsegError, ImageInputError
from model.image.io import read_image, write_png
from model.segment.single_pass import SegmentOptions
from store.blobs import BlobNotFoundError, BlobStore, TaskBlob, task_blob_key, task_prefix
from store.settings import Settings
from store.tasks import (
    CANCELLED_ERROR,
    Task,
    TaskParameters,
    fail_task,
    finish_task,
    get_task,
    mark_running,
    record_heartbeat,
    report_progress,
)

log = logging.getLogger(__name__)

# Share of the progress bar each stage ends at.
PROGRESS_LOADED = 0.05
PROGRESS_SEGMENTED = 0.85
PROGRESS_REGISTERED = 0.95
# Tile progress is written at most this often, to keep the database quiet on big slides.
PROGRESS_MIN_STEP = 0.02


class TaskStopped(Exception):
    """The task was cancelled, deleted or taken over while this worker ran it."""


@dataclass
class WorkerContext:
    """What a worker process needs, built once per process (after the fork)."""

    settings: Settings
    sessions: sessionmaker[Session]
    blobs: BlobStore
    # Loads (and caches) the segmenter for a model name; None means the default model.
    load_segmenter: Callable[[str | None], object]


@dataclass(frozen=True)
class Outcome:
    """What `process_task` did, for logs and tests."""

    task_id: UUID
    action: str  # "finished", "failed", "skipped", "stopped"
    detail: str = ""


def process_task(context: WorkerContext, task_id: UUID | str) -> Outcome:
    """Run one task to FINISHED or FAILED, or skip it when it is not this worker's to run.

    Input errors (an image that cannot be read, a grid that does not fit) mark the task FAILED
    with a message for the user. Infrastructure errors (database, blob store) propagate, so
    that Celery can retry; the claim then goes stale and the sweep hands the task out again.
    """
    settings = context.settings
    task_id = UUID(str(task_id))
    with context.sessions() as session:
        claimed = mark_running(
            session,
            task_id,
            stale_after_s=settings.task_stale_after_s,
            max_attempts=settings.task_max_attempts,
        )
        task = get_task(session, task_id)
        if not claimed:
            state = "gone" if task is None else task.status.value
            log.info("task %s not claimed (%s); skipping", task_id, state)
            return Outcome(task_id, "skipped", state)
        parameters = task.task_parameters
        input_key = task.input_key

    try:
        with _heartbeat(context, task_id) as still_ours:
            result_keys = _run(context, task_id, parameters, input_key, still_ours)
    except TaskStopped as stop:
        _discard_results_if_gone(context, task_id)
        log.info("task %s stopped: %s", task_id, stop)
        return Outcome(task_id, "stopped", str(stop))
    except (AmsegError, MemoryError, BlobNotFoundError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, BlobNotFoundError):
            message = "the uploaded image is missing from storage; submit it again"
        with context.sessions() as session:
            fail_task(session, task_id, error=message)
        log.warning("task %s failed: %s", task_id, message)
        return Outcome(task_id, "failed", message)

    with context.sessions() as session:
        finished = finish_task(session, task_id, result_keys=result_keys)
    if not finished:
        _discard_results_if_gone(context, task_id)
        return Outcome(task_id, "stopped", "the task was cancelled or deleted meanwhile")
    log.info("task %s finished", task_id)
    return Outcome(task_id, "finished")


def fail_with_error(context: WorkerContext, task_id: UUID | str, error: BaseException) -> None:
    """Record an unexpected error as the task's failure (the last retry gave up)."""
    message = f"internal error: {type(error).__name__}: {error}"
    with context.sessions() as session:
        fail_task(session, task_id, error=" ".join(message.split()))


def _run(
    context: WorkerContext,
    task_id: UUID,
    parameters: TaskParameters,
    input_key: str,
    still_ours: Callable[[], bool],
) -> dict[str, str]:
    # Imported here: the inference stack is heavy and only a worker needs it.
    from model.register.registration import register_marks
    from model.register.writers import write_registration
    from model.segment.predict import predict_image

    def progress(value: float, stage: str | None = None) -> None:
        with context.sessions() as session:
            if not report_progress(session, task_id, progress=value, stage=stage):
                raise TaskStopped("cancelled, deleted or taken over")

    progress(0.0, "loading")
    segmenter = context.load_segmenter(parameters.model)
    with tempfile.TemporaryDirectory(prefix="amseg-task-") as scratch:
        scratch_dir = Path(scratch)
        input_path = scratch_dir / "input"
        with input_path.open("wb") as handle:
            for chunk in context.blobs.iter_chunks(input_key):
                handle.write(chunk)
        try:
            image = read_image(input_path, max_pixels=context.settings.max_pixels)
        except ImageInputError as error:  # name the upload, not our scratch file
            message = str(error).replace(str(input_path), "the uploaded image")
            raise type(error)(message) from None
        progress(PROGRESS_LOADED, "segmenting")

        options = SegmentOptions(
            tile_size=parameters.tile_size or segmenter.tile_size,
            threshold=parameters.threshold,
            accurate=parameters.accurate,
        )
        tiles = _TileProgress(progress, PROGRESS_LOADED, PROGRESS_SEGMENTED, still_ours)
        segmentation = predict_image(
            image,
            segmenter,
            options,
            on_tiles_planned=tiles.planned,
            on_progress=tiles.advance,
            on_pass=tiles.pass_started,
        )
        outputs: dict[TaskBlob, Path] = {
            TaskBlob.MASK: write_png(scratch_dir / TaskBlob.MASK.value, segmentation.mask)
        }
        if parameters.rows is not None and parameters.cols is not None:
            progress(PROGRESS_SEGMENTED, "registering")
            registration = register_marks(segmentation.mask, parameters.rows, parameters.cols)
            written = write_registration(scratch_dir / "registration", registration, image)
            outputs[TaskBlob.LABELS] = written["labels"]
            outputs[TaskBlob.AMS] = written["csv"]
            outputs[TaskBlob.QC] = written["qc"]
            outputs[TaskBlob.OVERLAY] = written["overlay"]
        else:
            outputs[TaskBlob.OVERLAY] = _mask_overlay(scratch_dir, image, segmentation.mask)
        del image, segmentation

        progress(PROGRESS_REGISTERED, "storing")
        result_keys = {}
        for blob, path in outputs.items():
            key = task_blob_key(task_id, blob)
            with path.open("rb") as handle:
                context.blobs.put_stream(key, handle, content_type=blob.content_type)
            result_keys[blob.value] = key
    return result_keys


def _mask_overlay(scratch_dir: Path, image: np.ndarray, mask: np.ndarray) -> Path:
    from model.register.overlay import render_overlay

    return write_png(scratch_dir / TaskBlob.OVERLAY.value, render_overlay(image, mask))


class _TileProgress:
    """Turns tile counts into throttled progress reports between two fractions."""

    def __init__(
        self,
        report: Callable[[float], None],
        start: float,
        end: float,
        still_ours: Callable[[], bool],
    ) -> None:
        self.report, self.start, self.end, self.still_ours = report, start, end, still_ours
        self.total, self.done, self.last, self.passes = 0, 0, start, 0

    def planned(self, total: int) -> None:
        self.total = max(total, 1)

    def pass_started(self, scale: float) -> None:
        """The stage names a resampled pass. predict_image looks again, enlarged, when a grid
        of small marks came out with uncertain outlines or a grid shows but no marks were
        found; its tiles are added to the total, so the bar (never moving back) waits until
        they are done."""
        self.passes += 1
        if self.passes > 1:
            self.report(self.last, f"segmenting again at scale {scale:g}")
        elif scale != 1.0:
            self.report(self.last, f"segmenting at scale {scale:g}")

    def advance(self, count: int) -> None:
        if not self.still_ours():
            raise TaskStopped("cancelled, deleted or taken over")
        self.done += count
        value = self.start + (self.end - self.start) * min(self.done / max(self.total, 1), 1.0)
        if value - self.last >= PROGRESS_MIN_STEP:
            self.last = value
            self.report(value)


@contextmanager
def _heartbeat(context: WorkerContext, task_id: UUID) -> Iterator[Callable[[], bool]]:
    """Beat every quarter of the stale period in a thread; yields "is the task still ours?".

    A step that runs longer than the stale period (one huge tile batch) must not let the sweep
    think the worker died.
    """
    stop = threading.Event()
    ours = threading.Event()
    ours.set()
    interval = max(context.settings.task_stale_after_s / 4.0, 0.2)

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with context.sessions() as session:
                    if not record_heartbeat(session, task_id):
                        ours.clear()
                        return
            except Exception:  # a database hiccup: try again at the next beat
                log.exception("heartbeat of task %s failed", task_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{task_id}", daemon=True)
    thread.start()
    try:
        yield ours.is_set
    finally:
        stop.set()
        thread.join(timeout=5.0)


def _discard_results_if_gone(context: WorkerContext, task_id: UUID) -> None:
    """Clean up after a run that lost its task: deleted rows lose every blob, cancelled tasks
    become FAILED and lose their results (the input stays, as for any failed task)."""
    with context.sessions() as session:
        task: Task | None = get_task(session, task_id)
        if task is not None and task.cancel_requested:
            fail_task(session, task_id, error=CANCELLED_ERROR)
    if task is None:
        context.blobs.delete_prefix(task_prefix(task_id))
    elif task.cancel_requested:
        for blob in TaskBlob:
            if blob is not TaskBlob.INPUT:
                context.blobs.delete_prefix(task_blob_key(task_id, blob))
