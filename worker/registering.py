"""Numbering marks on the acquisition grid, for both kinds of task that do it: a segment task
registers the mask it just made, a register task the mask an earlier task stored (other rows
and cols, or one mark's known place), without segmenting again. Both write the same outputs,
and both join the marks to the spectra of an imzML sent with the task."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.errors import AmsegError
from model.image.io import read_image
from model.image.tilepack import write_image_pack
from model.register.acquisition import Acquisition, Orientation, read_imzml
from model.register.records import KnownNode
from model.register.request import GridRequest
from store.blobs import SHARED_RESULTS, BlobNotFoundError, TaskBlob, task_blob_key
from store.tasks import RegisterParameters, Task, TaskParameters
from worker.jobs import WorkerContext, download_image, progress_reporter, store_results
from worker.viewing import mark_table, mask_views, shared_views

log = logging.getLogger(__name__)

# Share of the progress bar each stage of a register task ends at.
PROGRESS_LOADED = 0.3
PROGRESS_REGISTERED = 0.9


def run_register(
    context: WorkerContext, task: Task, still_ours: Callable[[], bool]
) -> tuple[dict[str, str], dict]:
    """Register the stored mask on the task's grid; the results' keys (the mask is the source's,
    shared) and a summary."""
    parameters = task.task_parameters
    assert isinstance(parameters, RegisterParameters)
    progress = progress_reporter(context, task.id)
    progress(0.0, "loading")
    mask_key = task.result_keys[TaskBlob.MASK.value]
    with tempfile.TemporaryDirectory(prefix="amseg-register-") as scratch:
        scratch_dir = Path(scratch)
        mask = _download_mask(context, mask_key, scratch_dir / "mask.png")
        image = download_image(context, task.input_key, scratch_dir / "input", "the image")
        request = grid_request(context, task, scratch_dir)
        progress(PROGRESS_LOADED, "registering")
        log.info(
            "task %s: registering the stored mask of task %s on a %s x %s grid, no segmentation",
            task.id,
            task.source_task,
            parameters.rows or "imzML",
            parameters.cols or "imzML",
        )
        outputs, summary = register_and_write(scratch_dir, mask, image, request)
        shared = shared_views(task)
        if len(shared) < len(SHARED_RESULTS):  # the source has no tiles (made before workers
            # made them): this task makes its own
            outputs[TaskBlob.VIEW_IMAGE] = write_image_pack(image, scratch_dir / "image.tiles")
            outputs.update(mask_views(scratch_dir, mask))
            shared = {}
        del mask, image
        progress(PROGRESS_REGISTERED, "storing")
        result_keys = store_results(context, task.id, outputs)
    return {TaskBlob.MASK.value: mask_key, **shared, **result_keys}, summary


def grid_request(context: WorkerContext, task: Task, scratch_dir: Path) -> GridRequest:
    """What a task asks to number its marks on: its grid (or its imzML's), a known mark, its
    imzML's positions oriented as it says."""
    parameters = task.task_parameters
    known = _known_node(parameters) if isinstance(parameters, RegisterParameters) else None
    acquisition = _acquisition(context, task, parameters, scratch_dir)
    return GridRequest(parameters.rows, parameters.cols, known_node=known, acquisition=acquisition)


def register_and_write(
    scratch_dir: Path, mask: np.ndarray, image: np.ndarray, request: GridRequest
) -> tuple[dict[TaskBlob, Path], dict]:
    """Number the mask's marks as `request` says and write the id image (labels.png, or
    labels.tiff for a grid beyond 65 535 nodes), ams.csv, the QC record, the overlay (over
    `image`) and the viewer's mark table under `scratch_dir`; those paths and the summary a
    task's JSON shows."""
    # Imported here: only a worker needs the registration stack.
    from model.register.request import register_into

    registration, written = register_into(scratch_dir / "registration", mask, request, image)
    labels = TaskBlob.LABELS if written["labels"].suffix == ".png" else TaskBlob.LABELS_TIFF
    outputs = {
        labels: written["labels"],
        TaskBlob.AMS: written["csv"],
        TaskBlob.QC: written["qc"],
        TaskBlob.OVERLAY: written["overlay"],
    }
    ams = written["csv"].read_text()
    outputs.update(mark_table(scratch_dir, ams, registration.qc, mask, registration.labels))
    return outputs, registration_summary(registration.qc)


SUMMARY_COUNTS = ("found", "expected", "missing", "extra", "small_objects", "specks")
"""The QC counts a task's JSON repeats, under qc.json's names and meanings (docs/model.md)."""


ACQUISITION_COUNTS = ("spectra", "marks_with_spectrum", "marks_without_spectrum")
"""What the summary repeats of qc.json's acquisition record, when an imzML was joined."""


def registration_summary(qc: dict) -> dict:
    """What a task's JSON shows of its QC: enough to see a doubtful result at a glance, the
    same numbers as qc.json."""
    summary = {**{key: qc[key] for key in SUMMARY_COUNTS}, "warnings": list(qc["warnings"])}
    if "acquisition" in qc:
        joined = qc["acquisition"]
        summary["acquisition"] = {
            "rows": qc["rows"],
            "cols": qc["cols"],
            **{key: joined[key] for key in ACQUISITION_COUNTS},
        }
    return summary


def _known_node(parameters: RegisterParameters) -> KnownNode | None:
    if not parameters.has_known_mark:
        return None
    return KnownNode(
        x=parameters.mark_x, y=parameters.mark_y, row=parameters.mark_row, col=parameters.mark_col
    )


def _acquisition(
    context: WorkerContext, task: Task, parameters: TaskParameters, scratch_dir: Path
) -> Acquisition | None:
    """The task's imzML positions, oriented as it says; None when it has none. An imzML that
    is missing or unreadable fails the task in words (AmsegError)."""
    if not parameters.imzml:
        return None
    path = scratch_dir / TaskBlob.IMZML.value
    try:
        with path.open("wb") as handle:
            for chunk in context.blobs.iter_chunks(task_blob_key(task.id, TaskBlob.IMZML)):
                handle.write(chunk)
    except BlobNotFoundError:
        raise AmsegError("the imzML sent with this task is missing from storage") from None
    orientation = Orientation(parameters.flip_x, parameters.flip_y, parameters.transpose)
    return read_imzml(path, orientation)


def _download_mask(context: WorkerContext, key: str, path: Path) -> np.ndarray:
    """The source's stored mask; a deleted one fails the task in words (the API keeps a shared
    mask while a task uses it, so this is a mask lost from storage)."""
    try:
        with path.open("wb") as handle:
            for chunk in context.blobs.iter_chunks(key):
                handle.write(chunk)
    except BlobNotFoundError:
        raise AmsegError(
            "the mask this task registers is missing from storage; segment the image again"
        ) from None
    return read_image(path, max_pixels=context.settings.max_pixels)
