"""Console output of `amseg train`: a progress bar per epoch, a line per validation, and the
closing summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from model.train.loop import TrainEvent, TrainResult


class RichReporter:
    """`on_event` handler: a rich progress bar per epoch, validation lines, a summary line."""

    def __init__(self, console=None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.progress = None
        self.task = None
        self.last = ""

    def __call__(self, event: TrainEvent) -> None:
        if event.kind == "note" or event.kind == "start":
            self.console.print(event.message, soft_wrap=True)  # keep paths whole in logs
        elif event.kind == "step":
            self._show_step(event)
        elif event.kind == "validate" and self.progress is not None:
            self.progress.update(self.task, last="validating…")
        elif event.kind == "epoch_end":
            self._stop()
            self._show_epoch(event)
        elif event.kind == "done":
            self._stop()

    def _show_step(self, event: TrainEvent) -> None:
        """Advance the epoch's bar, starting it at the epoch's first step (terminals only)."""
        if not self.console.is_terminal:
            return  # logs get the per-epoch lines only, no bar redraws
        if self.progress is None:
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[last]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "",
                total=event.steps,
                epoch=f"{event.epoch}/{event.epochs}",
                loss=0.0,
                last=self.last,
            )
        self.progress.update(self.task, completed=event.step, loss=event.loss or 0.0)

    def _show_epoch(self, event: TrainEvent) -> None:
        """One line per epoch: losses, validation scores, speed, and whether it is the best."""
        r = event.record or {}
        self.last = f"last val Dice {r['val_dice']:.3f} F1 {r['val_f1']:.3f}"
        mark = " [green]best[/]" if event.message == "best" else ""
        self.console.print(
            f"epoch {r['epoch']}/{event.epochs}: train loss {r['train_loss']:.4f}, "
            f"val loss {r['val_loss']:.4f}, val Dice {r['val_dice']:.4f}, "
            f"val F1 {r['val_f1']:.4f}, {r['train_crops_per_s']:.1f} crops/s, "
            f"{r['seconds']:.0f} s{mark}",
            soft_wrap=True,
        )

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress, self.task = None, None


def summary_line(result: TrainResult) -> str:
    """The run in one line: best scores, epochs, time, device and where the model went."""
    return (
        f"best val Dice {result.best_dice:.4f}, object F1 {result.best_f1:.4f} at epoch "
        f"{result.best_epoch} of {result.epochs_run}; {result.wall_time_s:.0f} s on "
        f"{result.device}; model written to {result.model_dir}"
    )
