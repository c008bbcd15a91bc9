"""A segment task's run: the same `model/` functions as `amseg predict` and `amseg register`,
so the service and the CLI give the same masks and ids for the same image."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.image.io import write_png
from model.register.records import check_grid_fits
from model.register.request import GridRequest
from model.segment.segmenter import Segmenter
from model.segment.single_pass import SegmentOptions
from store.blobs import TaskBlob
from store.tasks import Task
from worker.comparing import compare_with_source
from worker.jobs import TaskStopped, WorkerContext, download_image, progress_reporter, store_results
from worker.registering import grid_request, register_and_write
from worker.viewing import image_views_meanwhile, mask_views

log = logging.getLogger(__name__)

# Share of the progress bar each stage ends at.
PROGRESS_LOADED = 0.05
PROGRESS_SEGMENTED = 0.85
PROGRESS_REGISTERED = 0.95
# Tile progress is written at most this often, to keep the database quiet on big slides.
PROGRESS_MIN_STEP = 0.02


def run_segment(
    context: WorkerContext, task: Task, still_ours: Callable[[], bool]
) -> tuple[dict[str, str], dict]:
    """Segment the task's image (and register its marks when it has a grid); the results'
    keys and a summary (marks found, and with a grid: expected, missing, warnings)."""
    # Imported here: the inference stack is heavy and only a worker needs it.
    from model.segment.predict import predict_image

    parameters = task.task_parameters
    progress = progress_reporter(context, task.id)
    progress(0.0, "loading")
    segmenter = context.load_segmenter(parameters.model)
    with tempfile.TemporaryDirectory(prefix="amseg-task-") as scratch:
        scratch_dir = Path(scratch)
        image = download_image(context, task.input_key, scratch_dir / "input", "the uploaded image")
        grid = _grid_before_segmenting(context, task, scratch_dir, image.shape)
        progress(PROGRESS_LOADED, "segmenting")
        log.info("task %s: segmenting a %d x %d px image with %s", task.id, image.shape[1],
                 image.shape[0], describe_segmenter(segmenter))  # fmt: skip
        # The viewer's image tiles are made and stored while the network runs.
        with image_views_meanwhile(context, task.id, image, scratch_dir) as image_views:
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
                keep_probabilities=False,  # a task keeps the mask: a GPU sends back only it
            )
            mask = segmentation.mask
            del segmentation
            outputs: dict[TaskBlob, Path] = {
                TaskBlob.MASK: write_png(scratch_dir / TaskBlob.MASK.value, mask)
            }
            if grid is not None:
                progress(PROGRESS_SEGMENTED, "registering")
                registered, summary = register_and_write(scratch_dir, mask, image, grid)
                outputs.update(registered)
            else:
                outputs[TaskBlob.OVERLAY] = _mask_overlay(scratch_dir, image, mask)
                summary = {**count_objects(mask), "warnings": []}
            outputs.update(mask_views(scratch_dir, mask))
            # A re-run says what changed against the task it was made from (none: nothing).
            diff, changes = compare_with_source(context, task, mask, scratch_dir)
            outputs.update(diff)
            if changes is not None:
                summary["changes"] = changes
            del mask
            image_keys = image_views()
        del image

        progress(PROGRESS_REGISTERED, "storing")
        return {**image_keys, **store_results(context, task.id, outputs)}, summary


def _grid_before_segmenting(
    context: WorkerContext, task: Task, scratch_dir: Path, shape: tuple[int, ...]
) -> GridRequest | None:
    """The task's grid request (None: no grid, no imzML), read and checked against the image
    before the network runs, so a bad imzML or a grid too large fails the task at once."""
    if not task.task_parameters.registers:
        return None
    grid = grid_request(context, task, scratch_dir)
    check_grid_fits(*grid.grid(), width=shape[1], height=shape[0])
    return grid


def describe_segmenter(segmenter: Segmenter) -> str:
    """Which model and runtime a task runs (a log line's end): the model's own words."""
    describe = getattr(segmenter, "describe", None)
    return describe() if describe is not None else type(segmenter).__name__


def warm_up_segmenter(segmenter: Segmenter) -> bool:
    """Run a segmenter that works on a GPU once at the shape of its network batches, so that
    the first task does not wait seconds while cuDNN tunes its kernels. Called once a pool
    process has loaded the default model (worker.tasks); does nothing off the GPU. True when
    it ran now."""
    from model.segment.predict import device_pipeline

    pipeline = device_pipeline(segmenter)
    if pipeline is None:
        return False
    return pipeline.warm_up(segmenter.tile_size)


def count_objects(mask: np.ndarray) -> dict[str, int]:
    """Without a grid: mark-sized objects found, smaller ones and specks, counted as the
    registration counts them (model.register.marks.count_objects)."""
    from model.register.marks import count_objects as count

    return count(mask)


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
