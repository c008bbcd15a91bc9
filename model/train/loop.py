"""The training loop: train (or fine-tune, or resume) on DATA/{train,valid}/ and write a model
directory (`model.safetensors` + `model_card.json`) that prediction loads directly.

Seeded end to end (same seed, same weights on CPU) and resumable from `checkpoint.pt`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.errors import AmsegError
from model.metrics import dice_counts, dice_from_counts, f1_from_counts, object_counts
from model.segment.card import ModelCard, write_card
from model.segment.network import save_model
from model.train.average import WeightAverage
from model.train.base import (
    added_layer_prefixes,
    build_network,
    choose_base_model,
    parameter_groups,
)
from model.train.checkpoint import CHECKPOINT_FILE, Learner, restore_checkpoint, save_checkpoint
from model.train.config import MATRICES, TrainConfig
from model.train.crops import CropDataset, validation_crops
from model.train.curves import CURVES_FILE, write_curves, write_history
from model.train.data import (
    Sample,
    auto_crops_per_epoch,
    load_training_data,
    mark_sizes,
    plan_epoch,
    zoom_ranges,
)
from model.train.losses import LOSSES, bce_dice_loss
from model.train.steps import (
    KeepBest,
    autocast,
    make_scheduler,
    optimizer_step,
    resolve_device,
    to_input,
)
from model.train.summary import data_summary, metrics_summary, training_summary


@dataclass
class TrainEvent:
    """Progress report handed to `on_event`; kind is one of note, start, step, validate,
    epoch_end (message "best" when the model directory was updated) and done."""

    kind: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None  # running mean over the epoch so far
    batch_loss: float | None = None
    record: dict | None = None
    message: str | None = None


@dataclass
class TrainResult:
    model_dir: Path
    best_dice: float
    best_f1: float
    best_epoch: int
    epochs_run: int
    history: list[dict]
    wall_time_s: float
    device: str
    card: ModelCard
    base_model: str


def evaluate(
    network: torch.nn.Module,
    card: ModelCard,
    crops: tuple[np.ndarray, np.ndarray, np.ndarray],
    device: torch.device,
    batch_size: int,
    *,
    use_amp: bool = False,
) -> dict:
    """Validation loss, pixel Dice and object F1 of (sigmoid > card.threshold), the threshold
    prediction uses."""
    images, masks, valids = crops
    network.eval()
    loss_sum, pixel, objects = 0.0, np.zeros(3, np.int64), np.zeros(3, np.int64)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size])
            target = torch.from_numpy(masks[start : start + batch_size]).to(device).float()
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = network(to_input(batch, card, device))[:, 0]
            loss_sum += float(bce_dice_loss(logits, target)) * len(batch)
            probs = torch.sigmoid(logits.float()).cpu().numpy()
            for i, p in enumerate(probs):
                k = start + i
                pred = p > card.threshold
                truth, valid = masks[k].astype(bool), valids[k].astype(bool)
                pixel += dice_counts(pred, truth, valid)
                objects += object_counts(pred & valid, truth & valid)
    return {
        "val_loss": loss_sum / len(images),
        "val_dice": dice_from_counts(pixel),
        "val_f1": f1_from_counts(objects),
        "val_objects": {"tp": int(objects[0]), "fp": int(objects[1]), "fn": int(objects[2])},
    }


def train_model(
    config: TrainConfig, on_event: Callable[[TrainEvent], None] | None = None
) -> TrainResult:
    """Train (or fine-tune, or resume) and write the model directory `config.out`."""
    saved_threads = torch.get_num_threads()
    try:
        return _train_model(config, on_event or (lambda event: None))
    finally:
        torch.set_num_threads(saved_threads)  # no lasting side effect on the caller's torch


@dataclass
class _Run:
    """One run between its steps: what it trains on, what learns, and how far it has come."""

    config: TrainConfig
    emit: Callable[[TrainEvent], None]
    device: torch.device
    use_amp: bool  # fp16 autocast pays off only on GPUs
    train: list[Sample]
    valid: list[Sample]
    notes: list[str]  # how validation was chosen
    base: Path | None  # the model fine-tuned from, None from random initialisation
    base_note: str
    learner: Learner
    card: ModelCard
    fresh: list[str]  # parameter prefixes of layers added to the base model
    crops_per_epoch: int
    steps_per_epoch: int
    workers: int
    val_crops: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    scale_ranges: list[tuple[float, float]] = field(default_factory=list)  # zoom per image
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"dice": -1.0, "f1": 0.0, "epoch": 0})
    first_epoch: int = 1
    keeper: KeepBest = field(default_factory=lambda: KeepBest(keep_weights=False))

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def _train_model(config: TrainConfig, emit: Callable[[TrainEvent], None]) -> TrainResult:
    started = time.perf_counter()
    _check_config(config)
    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
    out = Path(config.out)
    checkpoint_path = out / CHECKPOINT_FILE
    if config.resume and not checkpoint_path.is_file():
        raise AmsegError(f"--resume: no {CHECKPOINT_FILE} in {out}")
    run = _prepare(config, device, emit)
    if checkpoint_path.is_file() and not config.resume:
        emit(TrainEvent("note", message=f"{out} holds an earlier run; starting afresh"))
    if config.resume:
        _resume(run, checkpoint_path)
    _describe_data(run)
    emit(_start_event(run))
    for epoch in range(run.first_epoch, config.epochs + 1):
        _run_epoch(run, epoch)
    return _finish(run, started)


def _check_config(config: TrainConfig) -> None:
    """Refuse settings no run can use, before any data is read."""
    if config.matrix is not None and config.matrix.upper() not in MATRICES:
        raise AmsegError(f"unknown matrix {config.matrix!r}; use DHB or DAN")
    if config.loss not in LOSSES:
        raise AmsegError(f"unknown loss {config.loss!r}; use one of {', '.join(LOSSES)}")
    if config.epochs < 1 or config.batch_size < 1:
        raise AmsegError("epochs and batch size must be at least 1")
    if config.tile_size < 32 or config.tile_size % 32:
        raise AmsegError(f"--tile-size must be a multiple of 32 (>= 32), got {config.tile_size}")


def _prepare(config: TrainConfig, device: torch.device, emit: Callable[[TrainEvent], None]) -> _Run:
    """Load the data, choose the base model, build the network, its card and its optimizer."""
    train, valid, notes = load_training_data(config)
    for note in notes:
        emit(TrainEvent("note", message=note))
    base, base_note = choose_base_model(config)
    emit(TrainEvent("note", message=base_note))
    network, card = build_network(config, base)
    # channels_last: 1.7x faster training steps on a 2-core AVX-512 CPU (measured), and
    # the layout tensor cores want with AMP on a GPU.
    network.to(device, memory_format=torch.channels_last)
    card.matrix = config.matrix.upper() if config.matrix else None
    card.tile_size = config.predict_tile_size
    card.threshold = config.threshold
    crops_per_epoch = config.crops_per_epoch or auto_crops_per_epoch(
        train, config.tile_size, config.batch_size
    )
    steps_per_epoch = math.ceil(crops_per_epoch / config.batch_size)
    fresh = added_layer_prefixes(card, base)
    use_amp = device.type == "cuda"
    return _Run(
        config=config,
        emit=emit,
        device=device,
        use_amp=use_amp,
        train=train,
        valid=valid,
        notes=notes,
        base=base,
        base_note=base_note,
        learner=_make_learner(
            network, fresh, config, steps_per_epoch * config.epochs, device, use_amp
        ),
        card=card,
        fresh=fresh,
        crops_per_epoch=crops_per_epoch,
        steps_per_epoch=steps_per_epoch,
        workers=_loader_workers(config, device),
    )


def _make_learner(
    network: torch.nn.Module,
    fresh: list[str],
    config: TrainConfig,
    steps: int,
    device: torch.device,
    use_amp: bool,
) -> Learner:
    """AdamW over every parameter (the `fresh` ones faster), its schedule over `steps`, the
    gradient scaler of AMP, and the weight average when --ema asks for one."""
    optimizer = torch.optim.AdamW(
        parameter_groups(network, fresh, config.lr), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = make_scheduler(optimizer, steps, config.warmup_fraction)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    average = WeightAverage(network, config.ema_decay) if config.ema_decay > 0 else None
    return Learner(network, optimizer, scheduler, scaler, average)


def _loader_workers(config: TrainConfig, device: torch.device) -> int:
    # Workers would only fight the 2 intra-op threads for the same cores on a small CPU box;
    # with a GPU, a few workers keep it fed.
    if config.num_workers is not None:
        return config.num_workers
    return 0 if device.type == "cpu" else min(4, max(0, (os.cpu_count() or 1) - 1))


def _resume(run: _Run, checkpoint_path: Path) -> None:
    state = restore_checkpoint(checkpoint_path, run.learner, run.config, run.base)
    run.history, run.best = state["history"], state["best"]
    run.keeper.score, run.keeper.at = run.best["dice"], run.best["epoch"]
    run.first_epoch = state["epoch"] + 1
    run.emit(TrainEvent("note", message=f"resuming after epoch {state['epoch']}"))
    if run.first_epoch > run.config.epochs:
        run.emit(TrainEvent("note", message="the checkpoint already covers every epoch"))


def _describe_data(run: _Run) -> None:
    """The validation crops, the card's data summary and each training image's zoom range."""
    config = run.config
    run.val_crops = validation_crops(run.valid, config.tile_size, config.max_val_crops)
    # Marks measured once per image: for the card's summary and the per-image zoom ranges.
    sizes_per_image = [mark_sizes([s]) for s in run.train]
    sizes = np.concatenate(sizes_per_image) if sizes_per_image else np.zeros(0)
    run.card.data = data_summary(
        config, run.train, run.valid, run.notes, len(run.val_crops[0]), sizes
    )
    if "mark_px" in run.card.data:
        run.card.mark_px = run.card.data["mark_px"]["median"]
    run.scale_ranges = zoom_ranges(sizes_per_image, config.scale_range, config.mark_range)


def _start_event(run: _Run) -> TrainEvent:
    config = run.config
    return TrainEvent(
        "start",
        epochs=config.epochs,
        steps=run.steps_per_epoch,
        message=(
            f"{len(run.train)} train / {len(run.valid)} valid images, {run.crops_per_epoch} "
            f"crops of {config.tile_size}² per epoch, {run.card.encoder} U-Net on "
            f"{run.device.type}" + (" (AMP fp16)" if run.use_amp else "")
        ),
    )


def _run_epoch(run: _Run, epoch: int) -> None:
    """Train one epoch, validate, keep the model when it is the best so far, save progress."""
    epoch_started = time.perf_counter()
    loss_sum, seen = _train_epoch(run, epoch)
    train_seconds = time.perf_counter() - epoch_started
    run.emit(TrainEvent("validate", epoch=epoch, epochs=run.config.epochs))
    metrics = evaluate(
        run.learner.kept,
        run.card,
        run.val_crops,
        run.device,
        run.config.batch_size * 2,
        use_amp=run.use_amp,
    )
    record = {
        "epoch": epoch,
        "train_loss": loss_sum / max(seen, 1),
        **metrics,
        "lr": run.learner.optimizer.param_groups[0]["lr"],
        "crops": seen,
        "train_crops_per_s": seen / max(train_seconds, 1e-9),
        "seconds": time.perf_counter() - epoch_started,
    }
    run.history.append(record)
    improved = _keep_if_best(run, record)
    save_checkpoint(
        run.out / CHECKPOINT_FILE, run.learner, epoch, run.best, run.history, run.config
    )
    write_history(run.out, run.history)
    write_curves(run.out / CURVES_FILE, run.history)  # per epoch: long runs can be watched
    run.emit(
        TrainEvent(
            "epoch_end",
            epoch=epoch,
            epochs=run.config.epochs,
            record=record,
            message="best" if improved else None,
        )
    )


def _train_epoch(run: _Run, epoch: int) -> tuple[float, int]:
    """One pass over the epoch's crops; returns the summed loss and the number of crops."""
    config = run.config
    # Everything random in an epoch derives from (seed, epoch): resuming reproduces it.
    torch.manual_seed(_epoch_seed(config.seed, epoch))
    loader = _epoch_loader(run, epoch)
    loss_fn = LOSSES[config.loss][0]
    run.learner.network.train()
    loss_sum, seen = 0.0, 0
    for step, (crops, masks) in enumerate(loader, start=1):
        batch_loss = _train_step(run, crops, masks, loss_fn)
        loss_sum += batch_loss * len(crops)
        seen += len(crops)
        run.emit(
            TrainEvent(
                "step",
                epoch=epoch,
                epochs=config.epochs,
                step=step,
                steps=len(loader),
                loss=loss_sum / seen,
                batch_loss=batch_loss,
            )
        )
    return loss_sum, seen


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1)[0])


def _epoch_loader(run: _Run, epoch: int) -> torch.utils.data.DataLoader:
    """The epoch's crops in batches, in the order of its (seeded, shuffled) plan."""
    config = run.config
    areas = [s.area for s in run.train]
    plan = plan_epoch(areas, run.crops_per_epoch, np.random.default_rng([config.seed, epoch]))
    return torch.utils.data.DataLoader(
        CropDataset(
            run.train,
            plan,
            seed=config.seed,
            epoch=epoch,
            tile=config.tile_size,
            augment=config.augment,
            scale_ranges=run.scale_ranges,
            disturb=config.disturb,
        ),
        batch_size=config.batch_size,
        shuffle=False,  # the plan is already shuffled, reproducibly
        num_workers=run.workers,
        pin_memory=run.device.type == "cuda",
        persistent_workers=False,
    )


def _train_step(
    run: _Run,
    crops: torch.Tensor,
    masks: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> float:
    """One optimizer step on a batch; returns the batch's loss."""
    learner, device = run.learner, run.device
    target = masks.to(device, non_blocking=True).float()
    with autocast(device, torch.float16 if run.use_amp else None):
        logits = learner.network(to_input(crops, run.card, device))[:, 0]
    return optimizer_step(learner, loss_fn(logits, target))


def _keep_if_best(run: _Run, record: dict) -> bool:
    """Write the model directory when this epoch has the best validation Dice so far."""
    improved = run.keeper.offer(record["val_dice"], record["epoch"])
    if improved:
        run.best = {"dice": record["val_dice"], "f1": record["val_f1"], "epoch": record["epoch"]}
        run.card.metrics = metrics_summary(run.best, record)
        run.card.training = _training_summary(run)
        save_model(run.out, run.learner.kept, run.card)
    return improved


def _training_summary(run: _Run) -> dict:
    return training_summary(
        run.config,
        run.device,
        run.use_amp,
        run.base,
        run.crops_per_epoch,
        run.history,
        run.fresh,
    )


def _finish(run: _Run, started: float) -> TrainResult:
    """Complete the best model's card with the whole run, and say how the run went."""
    wall = time.perf_counter() - started
    if run.history:
        # Rewrite the best model's card with the finished run's summary (weights unchanged).
        best_record = next(r for r in run.history if r["epoch"] == run.best["epoch"])
        run.card.metrics = metrics_summary(run.best, best_record)
        run.card.training = _training_summary(run)
        earlier = sum(r["seconds"] for r in run.history if r["epoch"] < run.first_epoch)
        run.card.training["wall_time_s"] = round(wall + earlier, 1)
        write_card(run.out, run.card)
        write_curves(run.out / CURVES_FILE, run.history)
    result = TrainResult(
        model_dir=run.out,
        best_dice=run.best["dice"],
        best_f1=run.best["f1"],
        best_epoch=run.best["epoch"],
        epochs_run=len(run.history),
        history=run.history,
        wall_time_s=wall,
        device=str(run.device),
        card=run.card,
        base_model=run.base_note,
    )
    epochs = run.config.epochs
    run.emit(TrainEvent("done", epoch=epochs, epochs=epochs, message=run.base_note))
    return result
