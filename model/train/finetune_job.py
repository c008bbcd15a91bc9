"""One fine-tune job as `amseg finetune`, `POST /models` and the worker all ask for it: from a
person's labels or from the acquisition grid (label-free), for at most so many minutes. The
choice between the two, its errors and its defaults live here once, free of torch (the API
checks jobs); `model.train.run_finetune` runs them."""

from __future__ import annotations

from dataclasses import dataclass

from model.errors import AmsegError

DEFAULT_MINUTES = 5.0  # the time budget: an upper bound, steps decide how much is learnt
DEFAULT_STEPS = 300  # what decides how much a fine-tune learns (benchmarks/finetune_dev.py)
DEFAULT_ROUNDS = 2


@dataclass(frozen=True)
class FinetuneJob:
    """What to learn from and for how long. `labelled`: from label masks (0 background, 255
    mark, 128 not labelled); else from the rows x cols grid and the model's sure marks."""

    labelled: bool = True
    rows: int | None = None
    cols: int | None = None
    rounds: int = DEFAULT_ROUNDS  # label-free: predict -> select -> tune, this many times
    minutes: float = DEFAULT_MINUTES

    def check(self) -> None:
        """A clear error for a job no fine-tune can run."""
        if (self.rows is None) != (self.cols is None):
            raise AmsegError(
                "give both the grid's rows and columns (e.g. rows=30 and cols=30), or neither"
            )
        if not self.labelled and self.rows is None:
            raise AmsegError(
                "without labels the fine-tune learns from the grid: give its rows and columns"
            )
        if not self.minutes > 0:
            raise AmsegError(f"the time budget must be positive, got {self.minutes:g} minutes")
        if self.rounds < 1:
            raise AmsegError(f"rounds must be at least 1, got {self.rounds}")
