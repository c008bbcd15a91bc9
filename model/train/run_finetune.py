"""Running a fine-tune job (`finetune_job.FinetuneJob`): from labels or from the grid, with
one summary of what it learnt, for the command line and the worker alike."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from model.errors import AmsegError, RegistrationError
from model.train.finetune import FinetuneOptions, FinetuneProgress, FinetuneResult, finetune
from model.train.finetune_job import FinetuneJob
from model.train.grid_labels import finetune_from_grid
from model.train.tuned_ir import makes_int8, ship_tuned_irs

log = logging.getLogger(__name__)
IR_STAGE = "making the OpenVINO network"
INT8_STAGE = "making the OpenVINO networks, int8 checked on the labels"


def run_job(
    job: FinetuneJob,
    images: Sequence[np.ndarray | str | Path],
    masks: Sequence[np.ndarray | str | Path],
    out_dir: str | Path,
    base: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    on_progress: Callable[[FinetuneProgress], None] | None = None,
    on_round: Callable | None = None,
    options: FinetuneOptions | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[FinetuneResult, dict]:
    """Run the job; the last result and the summary a person reads (see `job_summary`). The
    model directory written carries its OpenVINO IRs (model/train/tuned_ir.py): it runs
    without PyTorch too, and in int8 where its check on the labels passed. `on_stage` hears
    when training is over and the IRs are being made (with int8, ~25 s)."""
    options = options or FinetuneOptions()
    result, summary = _tune(
        job, images, masks, out_dir, base, device, seed, on_progress, on_round, options
    )
    if on_stage is not None:
        on_stage(INT8_STAGE if makes_int8(options.int8, masks) else IR_STAGE)
    irs = ship_tuned_irs(result.out_dir, images, masks, int8=options.int8, threads=options.threads)
    for note in irs.notes:
        log.warning("%s: %s", result.out_dir, note)
    summary["int8_check"] = irs.int8_check
    return result, summary


def _tune(
    job: FinetuneJob,
    images: Sequence[np.ndarray | str | Path],
    masks: Sequence[np.ndarray | str | Path],
    out_dir: str | Path,
    base: str | Path | None,
    device: str,
    seed: int,
    on_progress: Callable[[FinetuneProgress], None] | None,
    on_round: Callable | None,
    options: FinetuneOptions,
) -> tuple[FinetuneResult, dict]:
    job.check()
    if job.labelled:
        result = finetune(
            images, masks, out_dir, base, job.minutes, device, seed, on_progress, options
        )
        return result, job_summary(job, result)
    if len(images) != 1:
        raise AmsegError("the label-free mode tunes on one image")
    no_labels = "the grid gave no labels to learn from ({}); label a few boxes by hand instead"
    try:
        rounds = finetune_from_grid(
            images[0], job.rows, job.cols, out_dir, base, job.minutes, job.rounds, device, seed,
            on_progress=on_progress, on_round=on_round, options=options,
        )  # fmt: skip
    except RegistrationError as error:
        raise AmsegError(no_labels.format(f"the model's marks fit no grid: {error}")) from None
    tuned = [r.result for r in rounds if r.result is not None]
    if not tuned:
        if not rounds or rounds[0].grid.sure_marks == 0:
            raise AmsegError(no_labels.format("no sure mark at its nodes"))
        raise AmsegError(
            f"predicting took the whole budget of {job.minutes:g} min before any training; "
            "give the fine-tune more minutes"
        )
    summary = job_summary(job, tuned[-1])
    summary["rounds"] = [
        {"sure_marks": r.grid.sure_marks, "off_grid": r.grid.off_grid} for r in rounds
    ]
    return tuned[-1], summary


def job_summary(job: FinetuneJob, result: FinetuneResult) -> dict:
    """What the fine-tune did and how it scored, as the task's summary stores it."""
    return {
        "mode": "labelled" if job.labelled else "grid",
        "seconds": round(result.seconds, 1),
        "steps": result.steps,
        "stopped": result.stopped,
        "held_out_dice_base": _rounded(result.held_out_dice_base),
        "held_out_dice": _rounded(result.held_out_dice),
        "labelled_dice_base": _rounded(result.labelled_dice_base),
        "labelled_dice": _rounded(result.labelled_dice),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
