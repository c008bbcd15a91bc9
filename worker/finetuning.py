"""A fine-tune task's run: labels from the user's mask, or from the acquisition grid and the base
model's sure marks (label-free), a few minutes of training from the base model, and the model
directory stored as the result."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from store.blobs import MODEL_IR, MODEL_IR_INT8, MODEL_RESULTS, TaskBlob, task_blob_key
from store.tasks import Task
from worker.jobs import TaskStopped, WorkerContext, download_image, progress_reporter, store_results

# The progress bar's shares: the inputs, then training (45-80 s), then the model's OpenVINO
# networks (with int8 and its check, ~25 s), then storing.
PROGRESS_LOADED = 0.05
PROGRESS_TRAINED = 0.75
PROGRESS_NETWORKS = 0.95
PROGRESS_MIN_STEP = 0.02


def run_finetune(
    context: WorkerContext, task: Task, still_ours: Callable[[], bool]
) -> tuple[dict[str, str], dict]:
    """Fine-tune the base model on the task's image; the model's files and a summary."""
    from model.segment.runtime import require_torch

    require_torch("fine-tuning (a worker of the lean install or slim image)")
    from model.train.finetune_labels import check_label_mask
    from model.train.run_finetune import run_job  # torch only where fine-tunes run

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
        masks = []
        if parameters.labelled:
            key = task_blob_key(task.id, TaskBlob.TRAIN_MASK)
            labels = download_image(context, key, scratch_dir / "labels", "the labels")
            masks = [check_label_mask(labels, image.shape, "the labels")]
        device = context.settings.worker_device
        _, summary = run_job(
            parameters.job, [image], masks, out_dir, base, device, on_progress=report,
            on_stage=lambda stage: progress(PROGRESS_TRAINED, stage),
        )  # fmt: skip
        progress(PROGRESS_NETWORKS, "storing")
        outputs = {blob: out_dir / blob.value for blob in MODEL_RESULTS}
        for optional in (MODEL_IR, MODEL_IR_INT8):  # made where OpenVINO (and NNCF) is installed
            ir = {blob: out_dir / blob.value for blob in optional}
            if all(path.is_file() for path in ir.values()):
                outputs |= ir
        return store_results(context, task.id, outputs), summary
