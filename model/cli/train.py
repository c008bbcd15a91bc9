"""`amseg train`: train or fine-tune the mark segmentation U-Net on a training-data folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model.cli.app import app
from model.cli.console import console
from model.cli.train_report import RichReporter, summary_line
from model.errors import AmsegError

DataArg = Annotated[
    Path,
    typer.Argument(
        help=(
            "Training data: DATA/train/<dataset>/<group>/{source,mask}/ and DATA/valid/ alike "
            "(without it, 10 % of train is held out)."
        ),
    ),
]

MatrixOption = Annotated[
    str,
    typer.Option(
        "--matrix",
        help=(
            "MALDI matrix, DHB or DAN: recorded in the card; base model model/weights/<matrix>/, "
            "else model/weights/default/."
        ),
    ),
]

EncoderOption = Annotated[
    str | None,
    typer.Option(
        "--encoder",
        help="smp encoder name (default: the base model's, else efficientnet-b0).",
    ),
]

DecoderOption = Annotated[
    str | None,
    typer.Option(
        "--decoder",
        help="Decoder width: light (128,64,32,16,8) or standard (256,128,64,32,16).",
    ),
]

InChannelsOption = Annotated[
    int | None,
    typer.Option("--in-channels", help="Network input channels: 1 (gray) or 3 (gray replicated)."),
]

FullResSkipOption = Annotated[
    int | None,
    typer.Option(
        "--full-res-skip",
        min=0,
        help="Channels of a full-resolution skip into the last decoder block; 0 = plain U-Net "
        "(default: the base model's, else 0).",
    ),
]

LegacyOption = Annotated[
    bool,
    typer.Option(
        "--legacy",
        help="The old configuration: ResNeXt-50 32x4d, standard decoder, 3 channels, ImageNet "
        "mean/std.",
    ),
]

EpochsOption = Annotated[
    int,
    typer.Option("--epochs", min=1, help="Training epochs."),
]

BatchSizeOption = Annotated[
    int,
    typer.Option("--batch-size", min=1, help="Crops per step."),
]

TileSizeOption = Annotated[
    int,
    typer.Option("--tile-size", min=32, help="Training crop edge in px (multiple of 32)."),
]

LrOption = Annotated[
    float,
    typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW, cosine)."),
]

CropsPerEpochOption = Annotated[
    int | None,
    typer.Option(
        "--crops-per-epoch",
        min=1,
        help="Crops per epoch (default: training area / crop area, at least one per image, "
        "at most 1024).",
    ),
]

OutOption = Annotated[
    Path,
    typer.Option("--out", "-o", help="Output model directory (also holds checkpoint.pt)."),
]

ResumeOption = Annotated[
    bool,
    typer.Option("--resume", help="Continue an interrupted run from OUT/checkpoint.pt."),
]

SeedOption = Annotated[
    int,
    typer.Option("--seed", help="Random seed (same seed, same weights on CPU)."),
]

DeviceOption = Annotated[
    str,
    typer.Option("--device", help="auto (cuda if available), cpu or cuda."),
]

ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch (default: every core; use fewer when other jobs share them).",
    ),
]

InitFromOption = Annotated[
    Path | None,
    typer.Option("--init-from", help="Fine-tune from this model directory."),
]

FromScratchOption = Annotated[
    bool,
    typer.Option("--from-scratch", help="Random initialisation even when a shipped model exists."),
]

ScaleRangeOption = Annotated[
    str,
    typer.Option(
        "--scale-range",
        help="MIN,MAX zoom of the scale augmentation (log-uniform); e.g. 0.7,1.4 for a last "
        "fine-tuning pass.",
    ),
]

MarkRangeOption = Annotated[
    str,
    typer.Option(
        "--mark-range",
        help="MIN,MAX mark size in px the zoom may show, e.g. 8,60 (per image, by its median "
        "mark); none = zoom every image alike.",
    ),
]

LossOption = Annotated[
    str,
    typer.Option(
        "--loss",
        help="Training loss: bce-dice (BCE + soft Dice) or bce-lovasz (BCE + Lovasz hinge, "
        "for fine-tuning outlines).",
    ),
]

DisturbOption = Annotated[
    float,
    typer.Option(
        "--disturb",
        min=0.0,
        max=1.0,
        help="Chance per crop of each real-slide disturbance (dust beside the marks, uneven "
        "light, defocus), e.g. 0.2; 0 = off.",
    ),
]

EmaOption = Annotated[
    float,
    typer.Option(
        "--ema",
        min=0.0,
        max=0.99999,
        help="Validate and save an exponential moving average of the weights with this decay, "
        "e.g. 0.999; 0 = off.",
    ),
]


@app.command()
def train(
    data: DataArg,
    matrix: MatrixOption,
    encoder: EncoderOption = None,
    decoder: DecoderOption = None,
    in_channels: InChannelsOption = None,
    full_res_skip: FullResSkipOption = None,
    legacy: LegacyOption = False,
    epochs: EpochsOption = 30,
    batch_size: BatchSizeOption = 8,
    tile_size: TileSizeOption = 256,
    lr: LrOption = 1e-3,
    crops_per_epoch: CropsPerEpochOption = None,
    out: OutOption = Path("model-out"),
    resume: ResumeOption = False,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    init_from: InitFromOption = None,
    from_scratch: FromScratchOption = False,
    scale_range: ScaleRangeOption = "0.5,2",
    mark_range: MarkRangeOption = "none",
    loss: LossOption = "bce-dice",
    disturb: DisturbOption = 0.0,
    ema: EmaOption = 0.0,
) -> None:
    """Train the ablation-mark U-Net and write a model directory.

    OUT gets model.safetensors (the epoch with the best validation Dice), model_card.json,
    training_curves.png, history.json and checkpoint.pt (for --resume).
    """
    from model.segment.runtime import require_torch

    require_torch("amseg train")
    from model.train.config import TrainConfig  # imported here: torch is heavy
    from model.train.loop import train_model

    if matrix.upper() not in ("DHB", "DAN"):
        raise AmsegError(f"--matrix must be DHB or DAN, got {matrix!r}")
    if in_channels is not None and in_channels not in (1, 3):
        raise AmsegError(f"--in-channels must be 1 or 3, got {in_channels}")
    config = TrainConfig(
        data=data,
        out=out,
        matrix=matrix.upper(),
        encoder=encoder,
        decoder=decoder,
        in_channels=in_channels,
        full_res_skip=full_res_skip,
        legacy=legacy,
        init_from=init_from,
        from_scratch=from_scratch,
        epochs=epochs,
        batch_size=batch_size,
        tile_size=tile_size,
        lr=lr,
        seed=seed,
        device=device,
        resume=resume,
        crops_per_epoch=crops_per_epoch,
        threads=threads,
        scale_range=parse_scale_range(scale_range),
        mark_range=parse_mark_range(mark_range),
        ema_decay=ema,
        loss=loss,
        disturb=disturb,
    )
    result = train_model(config, on_event=RichReporter(console))
    console.print(f"[bold green]done:[/] {summary_line(result)}", soft_wrap=True)


def parse_scale_range(text: str) -> tuple[float, float]:
    """ "MIN,MAX" -> (MIN, MAX) with 0 < MIN <= MAX, or a clear error."""
    return _parse_range(text, "--scale-range", "0.5,2")


def parse_mark_range(text: str) -> tuple[float, float] | None:
    """ "none" -> None, "MIN,MAX" -> (MIN, MAX) with 0 < MIN <= MAX, or a clear error."""
    if text.strip().lower() == "none":
        return None
    return _parse_range(text, "--mark-range", "8,60")


def _parse_range(text: str, option: str, example: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise AmsegError(f"{option} must be MIN,MAX (e.g. {example}), got {text!r}") from None
    if not 0.0 < low <= high:
        raise AmsegError(f"{option} needs 0 < MIN <= MAX, got {text!r}")
    return low, high
