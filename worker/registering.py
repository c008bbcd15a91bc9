"""Numbering marks on the acquisition grid, for both kinds of task that do it: a segment task
registers the mask it just made, a register task the mask an earlier task stored (other rows
and cols, or one mark's known place), without segmenting again. Both write the same outputs."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.errors import AmsegError
from model.image.io import read_image
from model.register.records import KnownNode
from store.blobs import BlobNotFoundError, TaskBlob
from store.tasks import RegisterParameters, Task
from worker.jobs import WorkerContext, download_image, progress_reporter, store_results

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
        progress(PROGRESS_LOADED, "registering")
        log.info(
            "task %s: registering the stored mask of task %s on a %d x %d grid, no segmentation",
            task.id,
            task.source_task,
            parameters.rows,
            parameters.cols,
        )
        outputs, summary = register_and_write(
            scratch_dir, mask, image, parameters.rows, parameters.cols, _known_node(parameters)
        )
        del mask, image
        progress(PROGRESS_REGISTERED, "storing")
        result_keys = store_results(context, task.id, outputs)
    return {TaskBlob.MASK.value: mask_key, **result_keys}, summary


def register_and_write(
    scratch_dir: Path,
    mask: np.ndarray,
    image: np.ndarray,
    rows: int,
    cols: int,
    known_node: KnownNode | None = None,
) -> tuple[dict[TaskBlob, Path], dict]:
    """Number the mask's marks on a rows x cols grid and write the id image, ams.csv, the QC
    record and the overlay (over `image`) under `scratch_dir`; those paths and the summary a
    task's JSON shows. `known_node` pins one mark's grid place."""
    # Imported here: only a worker needs the registration stack.
    from model.register.registration import register_marks
    from model.register.writers import write_registration

    registration = register_marks(mask, rows, cols, known_node=known_node)
    written = write_registration(scratch_dir / "registration", registration, image)
    outputs = {
        TaskBlob.LABELS: written["labels"],
        TaskBlob.AMS: written["csv"],
        TaskBlob.QC: written["qc"],
        TaskBlob.OVERLAY: written["overlay"],
    }
    return outputs, registration_summary(registration.qc)


SUMMARY_COUNTS = ("found", "expected", "missing", "extra", "small_objects", "specks")
"""The QC counts a task's JSON repeats, under qc.json's names and meanings (docs/model.md)."""


def registration_summary(qc: dict) -> dict:
    """What a task's JSON shows of its QC: enough to see a doubtful result at a glance, the
    same numbers as qc.json."""
    return {**{key: qc[key] for key in SUMMARY_COUNTS}, "warnings": list(qc["warnings"])}


def _known_node(parameters: RegisterParameters) -> KnownNode | None:
    if not parameters.has_known_mark:
        return None
    return KnownNode(
        x=parameters.mark_x, y=parameters.mark_y, row=parameters.mark_row, col=parameters.mark_col
    )


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
