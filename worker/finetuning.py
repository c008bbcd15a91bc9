"""A fine-tune task's run: labels from the user's mask, or from the acquisition grid and the base
model's sure marks (label-free), a few minutes of training from the base model, and the model
directory stored as the result."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.errors import AmsegError
from store.blobs import MODEL_RESULTS, TaskBlob, task_blob_key
from store.tasks import FinetuneParameters, Task
from worker.jobs import TaskStopped, WorkerContext, download_image, progress_reporter, store_results

if TYPE_CHECKING:
    from model.train.finetune import FinetuneResult

# Share of the progress bar the inputs take; training takes the rest but the last step.
PROGRESS_LOADED = 0.05
PROGRESS_TRAINED = 0.95
PROGRESS_MIN_STEP = 0.02


def run_finetune(
    context: WorkerContext, task: Task, still_ours: Callable[[], bool]
) -> tuple[dict[str, str], dict]:
    """Fine-tune the base model on the task's image; the model's files and a summary."""
    parameters = task.finetune_parameters
    progress = progress_reporter(context, task.id)
    progress(0.0, "loading")
    with tempfile.TemporaryDirectory(prefix="amseg-finetune-") as scratch:
        scratch_dir = Path(scratch)
        image = download_image(context, task.input_key, scratch_dir / "input", "the image")
        progress(PROGRESS_LOADED, "training")

        reported = [PROGRESS_LOADED]

        def report(state) -> None:  # model.train.finetune.FinetuneProgress, every step
            if not still_ours():
                raise TaskStopped("cancelled, deleted or taken over")
            done = state.elapsed_s / max(state.elapsed_s + state.remaining_s, 1e-9)
            value = PROGRESS_LOADED + (PROGRESS_TRAINED - PROGRESS_LOADED) * done
            if value - reported[0] >= PROGRESS_MIN_STEP:  # keep the database quiet
                reported[0] = value
                progress(value)

        out_dir = scratch_dir / "model"
        base = context.model_dir_for(parameters.base)
        if parameters.labelled:
            key = task_blob_key(task.id, TaskBlob.TRAIN_MASK)
            labels = download_image(context, key, scratch_dir / "labels", "the labels")
            summary = _tune_on_labels(context, image, labels, out_dir, base, parameters, report)
        else:
            summary = _tune_on_grid(context, image, out_dir, base, parameters, report)
        progress(PROGRESS_TRAINED, "storing")
        outputs = {blob: out_dir / blob.value for blob in MODEL_RESULTS}
        return store_results(context, task.id, outputs), summary


def _tune_on_labels(
    context: WorkerContext,
    image: np.ndarray,
    labels: np.ndarray,
    out_dir: Path,
    base: Path | None,
    parameters: FinetuneParameters,
    report: Callable[..., None],
) -> dict:
    from model.train.finetune import check_label_mask, finetune

    labels = check_label_mask(labels, image.shape, "the labels")
    result = finetune(
        [image],
        [labels],
        out_dir,
        base=base,
        minutes=parameters.minutes,
        device=context.settings.worker_device,
        on_progress=report,
    )
    return {"mode": "labelled", **_result_summary(result)}


def _tune_on_grid(
    context: WorkerContext,
    image: np.ndarray,
    out_dir: Path,
    base: Path | None,
    parameters: FinetuneParameters,
    report: Callable[..., None],
) -> dict:
    from model.train.grid_labels import finetune_from_grid

    rounds = finetune_from_grid(
        image,
        parameters.rows,
        parameters.cols,
        out_dir,
        base=base,
        minutes=parameters.minutes,
        device=context.settings.worker_device,
        on_progress=report,
    )
    tuned = [r for r in rounds if r.result is not None]
    if not tuned:
        sure = rounds[0].grid.sure_marks if rounds else 0
        if sure == 0:
            raise AmsegError(
                "the grid gave no labels to learn from (no sure mark at its nodes); label a "
                "few boxes by hand instead"
            )
        raise AmsegError(
            f"predicting took the whole budget of {parameters.minutes:g} min before any "
            "training; give the fine-tune more minutes"
        )
    summary = {"mode": "grid", **_result_summary(tuned[-1].result)}
    summary["rounds"] = [
        {"sure_marks": r.grid.sure_marks, "off_grid": r.grid.off_grid} for r in rounds
    ]
    return summary


def _result_summary(result: FinetuneResult) -> dict:
    return {
        "seconds": round(result.seconds, 1),
        "steps": result.steps,
        "stopped": result.stopped,
        "held_out_dice_base": result.held_out_dice_base,
        "held_out_dice": result.held_out_dice,
    }
