"""A fine-tune task's run: labels from the user's mask or from the acquisition grid, a few
minutes of training from the base model, and the model directory stored as the result."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from store.blobs import MODEL_RESULTS, TaskBlob
from store.tasks import FinetuneParameters, Task
from worker.jobs import TaskStopped, WorkerContext, download_image, progress_reporter, store_results

# Share of the progress bar each stage ends at; training takes the rest.
PROGRESS_LOADED = 0.05
PROGRESS_LABELLED = 0.15
PROGRESS_TRAINED = 0.95


def run_finetune(
    context: WorkerContext, task: Task, still_ours: Callable[[], bool]
) -> tuple[dict[str, str], dict]:
    """Fine-tune the base model on the task's image; the model's files and a summary."""
    # Imported here: torch is heavy and only a worker that trains needs it.
    from model.train.finetune import check_labels, finetune

    parameters = task.finetune_parameters
    progress = progress_reporter(context, task.id)
    progress(0.0, "loading")
    with tempfile.TemporaryDirectory(prefix="amseg-finetune-") as scratch:
        scratch_dir = Path(scratch)
        image = download_image(context, task.input_key, scratch_dir / "input", "the image")
        progress(PROGRESS_LOADED, "labelling")
        if parameters.labelled:
            key = task.input_key.rpartition("/")[0] + "/" + TaskBlob.TRAIN_MASK.value
            labels = check_labels(
                download_image(context, key, scratch_dir / "labels", "the labels"), image.shape
            )
        else:
            labels = _labels_from_grid(context, image, parameters)
        progress(PROGRESS_LABELLED, "training")

        def report(done: float) -> None:
            if not still_ours():
                raise TaskStopped("cancelled, deleted or taken over")
            share = PROGRESS_LABELLED + (PROGRESS_TRAINED - PROGRESS_LABELLED) * done
            progress(min(share, PROGRESS_TRAINED))

        result = finetune(
            [image],
            [labels],
            scratch_dir / "model",
            base=context.model_dir_for(parameters.base),
            minutes=parameters.minutes,
            device=context.settings.worker_device,
            on_progress=lambda state: report(state.fraction),
        )
        progress(PROGRESS_TRAINED, "storing")
        outputs = {blob: result.model_dir / blob.value for blob in MODEL_RESULTS}
        return store_results(context, task.id, outputs), result.summary


def _labels_from_grid(
    context: WorkerContext, image: np.ndarray, parameters: FinetuneParameters
) -> np.ndarray:
    from model.train.finetune import labels_from_grid

    segmenter = context.load_segmenter(parameters.base)
    return labels_from_grid(image, parameters.rows, parameters.cols, segmenter)
