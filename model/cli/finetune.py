"""`amseg finetune`: adapt the model to one's own slide from a few labelled regions, or from the
acquisition grid alone, in minutes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from model.cli.app import app
from model.cli.console import console
from model.errors import AmsegError
from model.train.finetune_job import DEFAULT_MINUTES, DEFAULT_ROUNDS, DEFAULT_STEPS


@app.command()
def finetune(
    images: list[Path] = typer.Option(
        ..., "--image", help="Slide image (PNG, TIFF, JPEG; 8/16-bit). Repeat for several."
    ),
    masks: list[Path] = typer.Option(
        [],
        "--mask",
        help="Label mask of the --image at the same position, the image's size: 0 = "
        "background, 255 = mark, 128 = not labelled (left out). Label a few boxes, each with "
        "its marks and the matrix around them; a whole-image 0/255 mask also works.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    model_dir: Path | None = typer.Option(
        None, "--model", help="Model to start from (default: the model shipped with amseg)."
    ),
    minutes: float = typer.Option(
        DEFAULT_MINUTES,
        "--minutes",
        min=0.1,
        help="Upper bound of the time; how much is learnt is decided by --steps.",
    ),
    steps: int = typer.Option(
        DEFAULT_STEPS,
        "--steps",
        min=1,
        help="Training steps; fewer when the held-out labels stop improving.",
    ),
    rows: int | None = typer.Option(
        None, "--rows", min=1, help="Label-free mode: grid rows of the acquisition."
    ),
    cols: int | None = typer.Option(
        None, "--cols", min=1, help="Label-free mode: grid columns of the acquisition."
    ),
    rounds: int = typer.Option(
        DEFAULT_ROUNDS, "--rounds", min=1, help="Label-free mode: predict -> select -> tune rounds."
    ),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads for torch (default: the cores other work leaves idle, looked at "
        "again while it trains).",
    ),
    int8: bool = typer.Option(
        True,
        "--int8/--no-int8",
        help="With --mask: also make the int8 network and check it on your labels (NNCF, "
        "~25 s); where it passes, --precision auto runs the model at int8's speed.",
    ),
) -> None:
    """Fine-tune the segmentation model on your own slide and write a model directory.

    With --mask: learns the labelled pixels for --steps steps; a fifth of them,
    held back in blocks, decides when to stop early and which weights to keep,
    then a short last pass learns them all. With --rows/--cols (label-free):
    the model's sure marks at grid nodes and the matrix between nodes become
    the labels (experimental: on real crops it helped one in three, see
    BENCHMARKS.md; compare before you use it). Use the result with --model OUT,
    e.g. `amseg predict --model OUT`.
    """
    from model.segment.runtime import require_torch

    require_torch("amseg finetune")
    from model.train.finetune import FinetuneOptions
    from model.train.run_finetune import run_job

    job = _job(images, masks, rows, cols, rounds, minutes)
    options = FinetuneOptions(threads=threads, steps=steps, int8=int8)
    with FinetuneBar() as bar:
        result, summary = run_job(
            job, images, masks, out, model_dir, device, seed, on_progress=bar.update,
            on_round=bar.new_round, options=options, on_stage=bar.stage,
        )  # fmt: skip
    console.print(f"[bold green]done:[/] {summary_line(result)}", soft_wrap=True)
    if summary["int8_check"] is not None:
        console.print(int8_line(summary["int8_check"]), soft_wrap=True)


def _job(images: list, masks: list, rows: int | None, cols: int | None, rounds: int,
         minutes: float):  # fmt: skip
    """The job the options ask for: labelled (a --mask per --image) or label-free (--rows and
    --cols), or a clear error."""
    from model.train.finetune_job import FinetuneJob

    label_free = rows is not None or cols is not None
    if label_free and masks:
        raise AmsegError(
            "give either --mask (labelled mode) or --rows/--cols (label-free), not both"
        )
    if not label_free and len(masks) != len(images):
        raise AmsegError(
            f"give one --mask per --image (got {len(images)} image(s), {len(masks)} mask(s)), "
            "or --rows and --cols for the label-free mode"
        )
    return FinetuneJob(not label_free, rows, cols, rounds, minutes)


def int8_line(check: dict) -> str:
    """The int8 check in words (model/train/tuned_ir.py)."""
    from model.segment.runtime import INT8_DICE_DROP_METRIC, INT8_DICE_METRIC

    figures = (
        f"masks agree with fp32 at Dice {check[INT8_DICE_METRIC]:.4f}, Dice on your labels "
        f"{-check[INT8_DICE_DROP_METRIC]:+.4f} from fp32's"
    )
    if check["passed"]:
        return f"int8 passed its check ({figures}): --precision auto runs it in int8"
    return f"int8 did not pass its check ({figures}): the model runs in bf16 or fp32"


def summary_line(result) -> str:
    """One line: where the model went, how long, and the held-out Dice before and after."""
    text = (
        f"{result.out_dir} after {result.steps} steps in {result.seconds:.0f} s ({result.stopped})"
    )
    if result.held_out_dice is not None:
        text += (
            f"; held-out Dice {result.held_out_dice_base:.3f} (start) -> {result.held_out_dice:.3f}"
        )
        if result.best_step == 0:
            text += " (no step beat the model it started from; the last pass began there)"
    if result.labelled_dice is not None:
        text += (
            f"; on the labelled pixels {result.labelled_dice_base:.3f} -> "
            f"{result.labelled_dice:.3f}"
        )
    return text


class FinetuneBar:
    """A rich progress bar: step of the estimated total, time left, held-out Dice."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[left]} left, held-out Dice {task.fields[dice]}"),
            console=console,
            transient=True,
        )
        self.task = None
        self.round = 0

    def __enter__(self) -> FinetuneBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def new_round(self, number: int, grid) -> None:
        self.round = number
        console.print(
            f"round {number}: {grid.marks} marks at grid nodes, {grid.sure_marks} sure ones "
            f"labelled as marks, {grid.off_grid} blobs off the grid labelled as background"
        )
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None

    def update(self, event) -> None:
        dice = "-" if event.best_dice is None else f"{event.best_dice:.3f}"
        left = f"{int(event.remaining_s) // 60}:{int(event.remaining_s) % 60:02d}"
        if self.task is None:
            name = f"fine-tuning (round {self.round})" if self.round else "fine-tuning"
            self.task = self.progress.add_task(name, total=event.total, left=left, dice=dice)
        self.progress.update(
            self.task, completed=event.step, total=event.total, left=left, dice=dice
        )

    def stage(self, name: str) -> None:
        """Training is over: what comes next (the bar stays, full)."""
        for task in self.progress.tasks:
            self.progress.update(task.id, completed=task.total, left="0:00")
        console.print(f"{name} ...")
