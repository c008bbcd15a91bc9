"""Fine-tuning the segmentation network on a user's own slide from a few labelled regions
(`amseg finetune`), in minutes on a CPU.

A label mask marks each pixel as mark (255), background (0) or not labelled (128, left out of
the loss; see `finetune_labels`). Training sees the slide exactly as prediction does (the
whole image's intensity window, the scale `amseg predict` picks), crops around labelled pixels
with strong augmentation, and a masked loss. How much is learnt is decided by steps, not by
the clock: a fixed number of steps, cut short when a held-out part of the labels (spatial
blocks) stops improving, then a short last pass on all labels, so that what the person said
comes back. The time budget only caps it all (a busy machine learns as much, more slowly).
See `benchmarks/finetune_dev.py` and BENCHMARKS.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from segmentation_models_pytorch.losses import DiceLoss, LovaszLoss, SoftBCEWithLogitsLoss

from model.errors import AmsegError
from model.metrics import dice_counts, dice_from_counts
from model.segment.card import DEFAULT_MODEL_DIR, ModelCard
from model.segment.network import load_model, save_model
from model.train.checkpoint import Learner
from model.train.finetune_job import DEFAULT_MINUTES, DEFAULT_STEPS
from model.train.finetune_labels import (
    CropSampler,
    HeldOutWindows,
    LabelledImage,
    check_labels,
    held_out_windows,
    labelled_windows,
    merge_held_out,
    read_pair,
    split_held_out,
)
from model.train.steps import (
    KeepBest,
    autocast,
    autocast_dtype,
    make_scheduler,
    optimizer_step,
    resolve_device,
    spare_cores,
    to_input,
)

ENCODER_MODES = ("frozen", "low-lr")
LOSS_NAMES = ("bce-lovasz", "bce-dice")
IGNORED = -1  # target value of pixels the loss leaves out (smp's ignore_index)


@dataclass(frozen=True)
class FinetuneOptions:
    """The knobs of a fine-tune; the defaults are the ones benchmarks/finetune_dev.py chose."""

    crop_size: int = 256
    batch_size: int = 4
    lr: float = 2e-3  # peak learning rate of the decoder (AdamW), cosine over `steps`
    # "frozen" (smp's freeze_encoder) or "low-lr" (the encoder learns at lr * factor): low-lr
    # scored the same on the real dev crops (0.958 vs 0.956 unseen, 0.958 vs 0.957 labelled)
    # at 2-3x the time a step (benchmarks/finetune_dev.py, BENCHMARKS.md).
    encoder: str = "frozen"
    encoder_lr_factor: float = 0.1
    freeze_batchnorm: bool = True  # running statistics kept: batches of 4 crops are too few
    loss: str = "bce-lovasz"
    scale_range: tuple[float, float] = (0.8, 1.25)  # log-uniform zoom of the training crops
    held_out_fraction: float = 0.2  # of the labelled pixels, in spatial blocks
    max_held_out_px: int = 1 << 20  # caps the cost of an evaluation on large labelled areas
    steps: int = DEFAULT_STEPS  # training steps: what decides how much is learnt
    eval_every: int = 20  # steps between evaluations of the held-out labels
    patience: int = 6  # evaluations without a better held-out Dice before stopping
    min_delta: float = 0.001
    final_fraction: float = 0.5  # the last pass on all labels: this share of the chosen steps
    # ... and at least this many: a few labelled marks stop the held-out search early (after
    # 20 steps on one 192² box), and what the person drew must still come back (0.941 -> 0.952
    # on the labelled box of notebook_crop_wide with 20 -> 100, unseen unchanged).
    min_final_steps: int = 100
    precision: str = "auto"  # bf16 autocast where the CPU has it natively (fp16 on a GPU)
    # CPU threads for torch; None: the cores other work leaves idle, looked at again at every
    # evaluation (steps.spare_cores: threads that share a busy core slow training down 2-5x).
    threads: int | None = None
    # Also quantize the tuned model to int8 and check it on the labels (model/train/tuned_ir.py;
    # NNCF, where installed): ~20 s more, for predictions at int8's speed where it passes.
    int8: bool = True

    def check(self) -> None:
        if self.encoder not in ENCODER_MODES:
            raise AmsegError(f"unknown encoder mode {self.encoder!r}; use frozen or low-lr")
        if self.loss not in LOSS_NAMES:
            raise AmsegError(f"unknown loss {self.loss!r}; use {' or '.join(LOSS_NAMES)}")
        if self.steps < 1 or self.eval_every < 1:
            raise AmsegError("a fine-tune needs at least one step and one evaluation")


@dataclass(frozen=True)
class FinetuneProgress:
    """What `on_progress` gets after every training step."""

    step: int
    total: int  # the steps planned (known beforehand; fewer when stopping early)
    elapsed_s: float
    remaining_s: float  # from the pace so far, within the time budget
    held_out_dice: float | None  # of the latest evaluation
    best_dice: float | None


@dataclass
class FinetuneResult:
    out_dir: Path
    card: ModelCard
    steps: int
    seconds: float
    stopped: str  # why training ended: "step count", "no better held-out Dice", "time budget"
    held_out_dice_base: float | None
    held_out_dice: float | None
    best_step: int
    labelled_dice: float | None = None  # on every labelled pixel, after the last pass
    labelled_dice_base: float | None = None
    history: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Loss and trainable part


def masked_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, loss: str = "bce-lovasz"
) -> torch.Tensor:
    """The loss over the pixels whose weight is set; the others get no gradient. BCE is the
    mean over the labelled pixels (smp's own mean counts the ignored ones too)."""
    logits = logits.float().reshape(-1, 1, *logits.shape[-2:])
    target = target.reshape(logits.shape).float()
    keep = weight.reshape(logits.shape) > 0
    if not keep.any():
        return logits.sum() * 0.0
    labels = torch.where(keep, target, torch.full_like(target, IGNORED))
    bce = SoftBCEWithLogitsLoss(ignore_index=IGNORED, reduction="sum")(logits, labels)
    bce = bce / keep.sum()
    if loss == "bce-dice":
        region = DiceLoss("binary", from_logits=True, smooth=1.0, ignore_index=IGNORED)
    else:
        region = LovaszLoss("binary", per_image=False, ignore_index=IGNORED)
    return bce + region(logits, labels)


def make_learner(
    network: torch.nn.Module, options: FinetuneOptions, device: torch.device, steps: int
) -> Learner:
    """AdamW over decoder and head at `lr`, the encoder frozen (smp's freeze_encoder: no
    gradient, BatchNorm statistics kept) or at lr * encoder_lr_factor; one schedule."""
    network.unfreeze_encoder()
    if options.encoder == "frozen":
        network.freeze_encoder()
    encoder_ids = {id(p) for p in network.encoder.parameters()}
    rest = [p for p in network.parameters() if id(p) not in encoder_ids]
    groups = [{"params": rest, "lr": options.lr}]
    if options.encoder == "low-lr":
        groups.append(
            {"params": list(network.encoder.parameters()),
             "lr": options.lr * options.encoder_lr_factor}
        )  # fmt: skip
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
    scheduler = make_scheduler(optimizer, steps, warmup_fraction=0.03, floor=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    return Learner(network, optimizer, scheduler, scaler)


def set_train_mode(network: torch.nn.Module, options: FinetuneOptions) -> None:
    network.train()
    if options.freeze_batchnorm:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def training_step(
    learner: Learner,
    card: ModelCard,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    options: FinetuneOptions,
    device: torch.device,
    dtype: torch.dtype | None,
) -> float:
    """One optimizer step on a batch of (crops, targets, weights); returns the loss."""
    set_train_mode(learner.network, options)
    crops, target, weight = batch
    with autocast(device, dtype):
        logits = learner.network(to_input(crops, card, device))[:, 0]
    loss = masked_loss(logits, target.to(device), weight.to(device), options.loss)
    return optimizer_step(learner, loss)


# --------------------------------------------------------------------------------------------
# Judging


def held_out_dice(
    network: torch.nn.Module,
    card: ModelCard,
    windows: HeldOutWindows,
    device: torch.device,
    batch_size: int = 8,
) -> float:
    """Pixel Dice of (probability > card.threshold) over the windows' scored pixels."""
    network.eval()
    counts = np.zeros(3, np.int64)
    with torch.inference_mode():
        for start in range(0, len(windows.images), batch_size):
            batch = torch.from_numpy(windows.images[start : start + batch_size])
            probs = torch.sigmoid(network(to_input(batch, card, device))[:, 0].float())
            pred = probs.cpu().numpy() > card.threshold
            part = slice(start, start + batch_size)
            counts += dice_counts(pred, windows.targets[part], windows.scored[part])
    return dice_from_counts(counts)


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Run:
    """What the loop leaves: how it went (the network holds the weights to keep)."""

    keeper: KeepBest
    base_dice: float | None
    steps: int = 0
    seconds: float = 0.0
    stopped: str = "step count"
    history: list[dict] = field(default_factory=list)


@dataclass
class _Clock:
    """The time budget: the main pass may use its share, the last pass the rest."""

    start: float
    seconds: float
    main_share: float

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def main_over(self) -> bool:
        return self.elapsed() >= self.seconds * self.main_share

    def all_over(self) -> bool:
        return self.elapsed() >= self.seconds


@dataclass
class _Tuner:
    """What every step needs: the network and how it is trained."""

    network: torch.nn.Module
    card: ModelCard
    options: FinetuneOptions
    device: torch.device
    dtype: torch.dtype | None

    def sampler(self, items: Sequence[LabelledImage], seed: int) -> CropSampler:
        o = self.options
        return CropSampler(items, o.crop_size, o.batch_size, o.scale_range, seed)

    def step(self, learner: Learner, sampler: CropSampler, options: FinetuneOptions) -> float:
        batch = sampler.batch()
        return training_step(learner, self.card, batch, options, self.device, self.dtype)

    def dice(self, windows: HeldOutWindows) -> float:
        return held_out_dice(self.network, self.card, windows, self.device)


def train_on_labels(
    network: torch.nn.Module,
    card: ModelCard,
    items: Sequence[LabelledImage],
    options: FinetuneOptions,
    device: torch.device,
    seconds: float,
    seed: int = 0,
    on_progress: Callable[[FinetuneProgress], None] | None = None,
) -> _Run:
    """Train `options.steps` steps (fewer when the held-out Dice stops improving, keeping the
    best weights), then a last pass on all labels, within `seconds`."""
    tuner = _Tuner(network, card, options, device, autocast_dtype(device, options.precision))
    windows = held_out_windows(items)
    base = tuner.dice(windows) if windows is not None else None
    keeper = KeepBest(options.patience, options.min_delta)
    if base is not None:
        keeper.offer(base, 0, network)
    run = _Run(keeper, base, history=[{"step": 0, "held_out_dice": base}])
    final = _final_steps(options, options.steps) if windows is not None else 0
    clock = _Clock(time.perf_counter(), seconds, options.steps / (options.steps + final))
    report = _Reporter(on_progress, clock, options.steps + final, run)
    sampler = tuner.sampler(items, seed)
    learner = make_learner(network, options, device, options.steps)
    latest = base
    for step in range(1, options.steps + 1):
        if clock.main_over():
            run.stopped = "time budget"
            break
        loss = tuner.step(learner, sampler, options)
        run.steps = step
        if windows is not None and (step % options.eval_every == 0 or step == options.steps):
            latest = tuner.dice(windows)
            keeper.offer(latest, step, network)
            _set_threads(options, device)
            run.history.append(
                {"step": step, "seconds": round(clock.elapsed(), 1), "loss": round(loss, 4),
                 "held_out_dice": round(latest, 4)}
            )  # fmt: skip
            if keeper.exhausted:
                run.stopped = "no better held-out Dice"
                break
        report(step, latest)
    if windows is None:
        keeper.at = run.steps
    else:
        network.load_state_dict(keeper.state)
        _last_pass(tuner, items, clock, run, seed + 1, report)
    run.seconds = clock.elapsed()
    return run


def _set_threads(options: FinetuneOptions, device: torch.device) -> None:
    if device.type == "cpu":
        torch.set_num_threads(options.threads or spare_cores())


def _final_steps(options: FinetuneOptions, chosen: int) -> int:
    return max(options.min_final_steps, round(options.final_fraction * chosen))


def _last_pass(
    tuner: _Tuner, items: Sequence[LabelledImage], clock: _Clock, run: _Run, seed: int, report
) -> None:
    """Learn the held-out labels too: a short pass from the chosen weights over all labels at
    a quarter of the learning rate, as long as the budget allows."""
    merge_held_out(items)
    steps = _final_steps(tuner.options, run.keeper.at)
    low = replace(tuner.options, lr=tuner.options.lr / 4)
    learner = make_learner(tuner.network, low, tuner.device, steps)
    sampler = tuner.sampler(items, seed)
    done = 0
    while done < steps:
        if clock.all_over():
            run.stopped += ", last pass cut short by the time budget"
            break
        tuner.step(learner, sampler, low)
        done += 1
        report(run.steps + done, run.keeper.score)
    run.history.append({"last_pass_steps": done, "seconds": round(clock.elapsed(), 1)})
    run.steps += done


@dataclass
class _Reporter:
    """Progress after each step: steps planned, time left from the pace so far."""

    on_progress: Callable[[FinetuneProgress], None] | None
    clock: _Clock
    total: int
    run: _Run

    def __call__(self, step: int, latest: float | None) -> None:
        if self.on_progress is None:
            return
        elapsed = self.clock.elapsed()
        remaining = min(max(0.0, self.clock.seconds - elapsed),
                        (self.total - step) * elapsed / max(step, 1))  # fmt: skip
        self.on_progress(FinetuneProgress(step, self.total, elapsed, remaining, latest,
                                          self.run.keeper.score))  # fmt: skip


# --------------------------------------------------------------------------------------------
# The entry point


def finetune(
    images: Sequence[np.ndarray | str | Path],
    masks: Sequence[np.ndarray | str | Path],
    out_dir: str | Path,
    base: str | Path | None = None,
    minutes: float = DEFAULT_MINUTES,
    device: str = "auto",
    seed: int = 0,
    on_progress: Callable[[FinetuneProgress], None] | None = None,
    options: FinetuneOptions = FinetuneOptions(),
) -> FinetuneResult:
    """Fine-tune the model in `base` (default: the shipped one) on labelled images and write
    the model directory `out_dir`. `images` and `masks` pair up: arrays or image files; mask
    pixels 0 = background, 255 = mark, 128 = not labelled. `minutes` caps the training."""
    if not images or len(images) != len(masks):
        raise AmsegError(
            f"give one label mask per image (got {len(images)} image(s), {len(masks)} mask(s))"
        )
    if not minutes > 0:
        raise AmsegError(f"the time budget must be positive, got {minutes} minutes")
    options.check()
    items = [read_pair(i, m, k) for k, (i, m) in enumerate(zip(images, masks, strict=True))]
    check_labels(items)
    rng = np.random.default_rng([seed, 0])
    judged = labelled_windows(items, options.max_held_out_px, rng)
    split_held_out(items, options.held_out_fraction, options.max_held_out_px, rng)
    torch.manual_seed(seed)
    target = resolve_device(device)
    network, card = load_model(base, device=target)
    network = network.to(memory_format=torch.channels_last)
    saved_threads = torch.get_num_threads()
    _set_threads(options, target)
    try:
        before = held_out_dice(network, card, judged, target)
        run = train_on_labels(
            network, card, items, options, target, minutes * 60.0, seed, on_progress
        )
        after = held_out_dice(network, card, judged, target)
    finally:
        torch.set_num_threads(saved_threads)
    base_dir = Path(base) if base else DEFAULT_MODEL_DIR
    card = finetuned_card(card, base_dir, items, options, run, target, minutes, (before, after))
    out_dir = save_model(out_dir, network, card)
    return FinetuneResult(
        out_dir=out_dir,
        card=card,
        steps=run.steps,
        seconds=run.seconds,
        stopped=run.stopped,
        held_out_dice_base=run.base_dice,
        held_out_dice=run.keeper.score if run.base_dice is not None else None,
        best_step=run.keeper.at,
        labelled_dice=after,
        labelled_dice_base=before,
        history=run.history,
    )


def finetuned_card(
    base: ModelCard,
    base_dir: Path,
    items: Sequence[LabelledImage],
    options: FinetuneOptions,
    run: _Run,
    device: torch.device,
    minutes: float,
    labelled: tuple[float, float],
) -> ModelCard:
    """The base's card (architecture, normalization, threshold) with what this fine-tune was
    trained on, how, and how it scored on the held-out labels and on all labels."""
    data = {
        "finetuned_on": [
            {
                "image": item.name,
                "size": [int(item.gray.shape[1]), int(item.gray.shape[0])],
                "scale": item.scale,
                "labelled_px": item.labelled_px,
                "mark_px": int(np.count_nonzero(item.target.astype(bool) & item.train)),
            }
            for item in items
        ],
        "base_model": {"path": str(base_dir), "created": base.created, "data": base.data},
    }
    metrics = {
        "held_out_dice": None if run.base_dice is None else round(run.keeper.score, 4),
        "held_out_dice_base": None if run.base_dice is None else round(run.base_dice, 4),
        "labelled_dice": round(labelled[1], 4),
        "labelled_dice_base": round(labelled[0], 4),
        "dice_definition": "pixel Dice of sigmoid > threshold; held_out: over the labelled "
        "pixels held back in spatial blocks while the step count was chosen (optimistic: the "
        "weights were chosen on them); labelled: over every labelled pixel, after the last pass "
        "that learnt them all (what the person said, coming back)",
        "base_model": base.metrics,
    }
    training = {
        "kind": "finetune",
        "base": str(base_dir),
        "minutes": minutes,
        "seconds": round(run.seconds, 1),
        "steps": run.steps,
        "planned_steps": options.steps,
        "best_step": run.keeper.at,
        "stopped": run.stopped,
        "device": str(device),
        "encoder": "frozen" if options.encoder == "frozen" else f"lr x{options.encoder_lr_factor}",
        "batchnorm": "statistics kept" if options.freeze_batchnorm else "train mode",
        "lr": options.lr,
        "batch_size": options.batch_size,
        "crop_size": options.crop_size,
        "loss": f"{options.loss} over the labelled pixels only",
        "augmentations": {
            "scale": f"log-uniform zoom {options.scale_range[0]}-{options.scale_range[1]}x",
            "flip_rot90": "all 8 symmetries",
            "intensity": "train.augment.augment_intensity (blur, CLAHE, contrast, gamma, noise)",
        },
        "held_out": f"{options.held_out_fraction:.0%} of the labelled pixels in square blocks, "
        + (
            f"then a last pass on all labels ({options.final_fraction:.0%} of the chosen steps, "
            f"at least {options.min_final_steps})"
            if options.final_fraction or options.min_final_steps
            else "no last pass"
        ),
        "history": run.history,
        "base_training": base.training,
    }
    return replace(
        base,
        data=data,
        metrics=metrics,
        training=training,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
