"""Fine-tuning the segmentation network on a user's own slide from a few labelled regions
(`amseg finetune`), in minutes on a CPU.

A label mask marks each pixel as mark (255), background (0) or not labelled (128, left out of
the loss). Training sees the slide exactly as prediction does (the whole image's intensity
window, the scale `amseg predict` picks), crops around labelled pixels with strong
augmentation, a masked loss, and a frozen encoder; a held-out part of the labels (spatial
blocks) decides when to stop and which weights to keep. See `benchmarks/finetune_gain.py`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch

from model.errors import AmsegError
from model.image.io import read_image, to_grayscale
from model.image.normalize import IntensityWindow, find_padding, intensity_window
from model.metrics import dice_counts, dice_from_counts
from model.segment.card import DEFAULT_MODEL_DIR, ModelCard
from model.segment.network import load_model, save_model
from model.segment.pitch import auto_scale, estimate_mark_pitch
from model.segment.predict import resample
from model.segment.tiles import reflect_indices
from model.train.augment import augment_intensity
from model.train.loop import resolve_device, to_input
from model.train.losses import bce_dice_loss, bce_lovasz_loss

MARK, BACKGROUND, UNLABELLED = 255, 0, 128
LABEL_VALUES = (BACKGROUND, UNLABELLED, MARK)
LOSSES = {"bce-lovasz": bce_lovasz_loss, "bce-dice": bce_dice_loss}
ENCODER_MODES = ("frozen", "low-lr")


@dataclass(frozen=True)
class FinetuneOptions:
    """The knobs of a fine-tune; the defaults are the ones benchmarks/finetune_gain.py chose."""

    crop_size: int = 256
    batch_size: int = 4
    lr: float = 1e-3  # peak learning rate of the decoder (AdamW), cosine over the time budget
    encoder: str = "frozen"  # or "low-lr": the encoder learns at lr * encoder_lr_factor
    encoder_lr_factor: float = 0.1
    loss: str = "bce-lovasz"
    scale_range: tuple[float, float] = (0.8, 1.25)  # log-uniform zoom of the training crops
    held_out_fraction: float = 0.2  # of the labelled pixels, in spatial blocks
    max_held_out_px: int = 1 << 20  # caps the cost of an evaluation on large labelled areas
    eval_every_s: float = 15.0  # evaluation of the held-out labels about this often
    eval_every_steps: int | None = None  # ... or every so many steps (load-independent runs)
    min_eval_steps: int = 5
    patience: int = 6  # evaluations without a better held-out Dice before stopping
    min_delta: float = 0.001
    max_steps: int | None = None  # a step limit besides the time budget (tests, benchmarks)
    # CPU threads for torch (None: every core). Fewer when other jobs share the cores: torch's
    # threads spin on each other, and on a busy 2-core machine 1 thread ran 2-5x faster.
    threads: int | None = None


@dataclass
class LabelledImage:
    """One slide at the scale prediction runs it at, with its labels split for training."""

    name: str
    gray: np.ndarray  # raw intensities (native dtype), as prediction reads them
    window: IntensityWindow  # the whole image's, as prediction normalizes it
    target: np.ndarray  # uint8 0/1: mark
    train: np.ndarray  # bool: labelled pixels the loss sees
    held_out: np.ndarray  # bool: labelled pixels kept back to judge the training
    scale: float = 1.0

    @property
    def labelled_px(self) -> int:
        return int(np.count_nonzero(self.train) + np.count_nonzero(self.held_out))


@dataclass(frozen=True)
class FinetuneProgress:
    """What `on_progress` gets after every training step."""

    step: int
    total: int  # estimated from the time per step so far and the time left
    elapsed_s: float
    remaining_s: float
    held_out_dice: float | None  # of the latest evaluation
    best_dice: float | None


@dataclass
class FinetuneResult:
    out_dir: Path
    card: ModelCard
    steps: int
    seconds: float
    stopped: str  # why training ended: "time budget", "no better held-out Dice", ...
    held_out_dice_base: float | None
    held_out_dice: float | None
    best_step: int
    history: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Labels in


def check_label_mask(mask: np.ndarray, image_shape: tuple[int, ...], name: str) -> np.ndarray:
    """A user's label mask as uint8 0/128/255 (H, W), or a clear error about what is wrong."""
    if mask.dtype == bool:
        mask = np.where(mask, MARK, BACKGROUND).astype(np.uint8)
    if mask.ndim == 3:
        channels = mask[..., :3]
        if not (channels == channels[..., :1]).all():
            raise AmsegError(
                f"{name}: the label mask is in colour; save it as a gray image with 0 = "
                "background, 255 = mark, 128 = not labelled"
            )
        mask = channels[..., 0]
    if mask.shape != tuple(image_shape[:2]):
        raise AmsegError(
            f"{name}: the mask is {mask.shape[1]}x{mask.shape[0]} px but its image is "
            f"{image_shape[1]}x{image_shape[0]}; a label mask must have the image's size"
        )
    values, counts = np.unique(mask, return_counts=True)
    wrong = [(int(v), int(c)) for v, c in zip(values, counts, strict=True) if v not in LABEL_VALUES]
    if wrong:
        shown = ", ".join(f"{v} ({c} px)" for v, c in wrong[:5])
        hint = " (a 0/1 mask? marks must be 255)" if {v for v, _ in wrong} == {1} else ""
        raise AmsegError(
            f"{name}: the mask holds values other than 0 (background), 128 (not labelled) and "
            f"255 (mark): {shown}{hint}; paint with hard edges, without anti-aliasing"
        )
    return mask.astype(np.uint8, copy=False)


def prepare_image(
    image: np.ndarray, labels: np.ndarray, name: str, mask_name: str | None = None
) -> LabelledImage:
    """The image resampled to the scale `amseg predict` runs it at (1 unless its marks are
    very large), its intensity window, and its checked labels (padding left out)."""
    gray = to_grayscale(image)
    labels = check_label_mask(labels, gray.shape, mask_name or f"{name}'s mask")
    padding = find_padding(gray)
    if padding is not None:
        labels = np.where(padding, UNLABELLED, labels).astype(np.uint8)
    scale = auto_scale(estimate_mark_pitch(gray))
    if scale != 1.0:
        gray = resample(gray, scale)
        height, width = gray.shape
        labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    labelled = labels != UNLABELLED
    return LabelledImage(
        name=name,
        gray=gray,
        window=intensity_window(gray),
        target=(labels == MARK).astype(np.uint8),
        train=labelled,
        held_out=np.zeros_like(labelled),
        scale=scale,
    )


def check_labels(items: Sequence[LabelledImage]) -> None:
    """Enough labels to learn from: some marks and some background, somewhere."""
    marks = sum(int(np.count_nonzero(i.target.astype(bool) & i.train)) for i in items)
    labelled = sum(i.labelled_px for i in items)
    if labelled == 0:
        raise AmsegError(
            "nothing is labelled: every mask pixel is 128; paint marks 255 and background 0 "
            "in at least one region"
        )
    if marks == 0:
        raise AmsegError(
            "no mark is labelled (255) in any mask; label a few marks, not only background"
        )
    if marks == labelled:
        raise AmsegError(
            "no background is labelled (0) in any mask; label the matrix around the marks too"
        )


# --------------------------------------------------------------------------------------------
# Held-out blocks


def held_out_block_size(labelled_px: int) -> int:
    """Edge of the held-out blocks: about 16 blocks over the labels, 48-128 px."""
    return int(np.clip(round(math.sqrt(labelled_px / 16) / 16) * 16, 48, 128))


def split_held_out(
    items: Sequence[LabelledImage], options: FinetuneOptions, rng: np.random.Generator
) -> bool:
    """Move about `held_out_fraction` of the labelled pixels, in square blocks, from `train`
    to `held_out` (in place). The held-out part must hold marks and background, and training
    must keep marks; False (nothing held out) when no draw of blocks gives that."""
    total = sum(i.labelled_px for i in items)
    block = held_out_block_size(total)
    goal = min(options.held_out_fraction * total, options.max_held_out_px)
    blocks = []  # (item, y, x, labelled, marks)
    for k, item in enumerate(items):
        height, width = item.train.shape
        for y in range(0, height, block):
            for x in range(0, width, block):
                cell = (slice(y, y + block), slice(x, x + block))
                labelled = int(np.count_nonzero(item.train[cell]))
                if labelled:
                    marks = int(np.count_nonzero(item.target[cell].astype(bool) & item.train[cell]))
                    blocks.append((k, y, x, labelled, marks))
    all_marks = sum(b[4] for b in blocks)
    for _ in range(50):
        chosen, taken = [], 0
        for index in rng.permutation(len(blocks)):
            if taken >= goal:
                break
            chosen.append(blocks[index])
            taken += blocks[index][3]
        marks = sum(b[4] for b in chosen)
        if len(chosen) < len(blocks) and 0 < marks < taken and marks < all_marks:
            for k, y, x, _, _ in chosen:
                cell = (slice(y, y + block), slice(x, x + block))
                items[k].held_out[cell] = items[k].train[cell]
                items[k].train[cell] = False
            return True
    return False


# --------------------------------------------------------------------------------------------
# Training crops


def _window_pixels(gray: np.ndarray, y0: int, x0: int, size: int) -> tuple[np.ndarray, ...]:
    """Row and column indices of a size x size window at (y0, x0), mirrored outside the image,
    and whether each index is inside."""
    height, width = gray.shape[:2]
    ys, xs = np.arange(y0, y0 + size), np.arange(x0, x0 + size)
    inside_y, inside_x = (ys >= 0) & (ys < height), (xs >= 0) & (xs < width)
    return (
        reflect_indices(y0, y0 + size, height),
        reflect_indices(x0, x0 + size, width),
        inside_y[:, None] & inside_x[None, :],
    )


def training_crop(
    item: LabelledImage,
    rng: np.random.Generator,
    size: int,
    scale_range: tuple[float, float],
    centres: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An augmented (size, size) crop around one of `centres` (training pixels): float32 image
    in [0, 1], uint8 target and uint8 loss weight (1 on training labels only)."""
    scale = float(np.exp(rng.uniform(*np.log(scale_range))))
    region = max(8, round(size / scale))
    cy, cx = centres[rng.integers(len(centres))]
    y0 = int(cy) - region // 2 + int(rng.integers(-region // 4, region // 4 + 1))
    x0 = int(cx) - region // 2 + int(rng.integers(-region // 4, region // 4 + 1))
    rows, cols, inside = _window_pixels(item.gray, y0, x0, region)
    crop = item.window.apply(item.gray[np.ix_(rows, cols)])
    target = item.target[np.ix_(rows, cols)].astype(np.float32)
    weight = (item.train[np.ix_(rows, cols)] & inside).astype(np.float32)
    if region != size:
        shrink = region > size
        method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (size, size), interpolation=method)
        target = cv2.resize(target, (size, size), interpolation=method)
        weight = cv2.resize(weight, (size, size), interpolation=method)
    turns = int(rng.integers(4))
    crop, target, weight = (np.rot90(a, turns) for a in (crop, target, weight))
    if rng.random() < 0.5:
        crop, target, weight = crop[:, ::-1], target[:, ::-1], weight[:, ::-1]
    crop = augment_intensity(np.ascontiguousarray(crop, np.float32), rng)
    return (
        crop,
        np.ascontiguousarray(target >= 0.5, np.uint8),
        np.ascontiguousarray(weight >= 0.5, np.uint8),
    )


class CropSampler:
    """Batches of training crops, each from an image picked by its share of training labels."""

    MAX_CENTRES = 200_000  # training pixels remembered per image as crop centres
    SEARCH_PX = 1 << 22  # larger label masks are searched on a sparser grid of pixels

    def __init__(self, items: Sequence[LabelledImage], options: FinetuneOptions, seed: int):
        self.items, self.options = items, options
        self.rng = np.random.default_rng([seed, 1])
        self.centres = []
        for item in items:
            step = max(1, math.ceil(math.sqrt(item.train.size / self.SEARCH_PX)))
            ys, xs = np.nonzero(item.train[::step, ::step])
            if step > 1 and len(ys) < 1000:  # a few small labels on a huge image: all of them
                step = 1
                ys, xs = np.nonzero(item.train)
            keep = self.rng.permutation(len(ys))[: self.MAX_CENTRES]
            self.centres.append(np.column_stack([ys[keep], xs[keep]]) * step)
        counts = np.array([np.count_nonzero(i.train) for i in items], np.float64)
        self.share = counts / counts.sum()

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        crops, targets, weights = [], [], []
        for _ in range(self.options.batch_size):
            k = int(self.rng.choice(len(self.items), p=self.share))
            crop, target, weight = training_crop(
                self.items[k],
                self.rng,
                self.options.crop_size,
                self.options.scale_range,
                self.centres[k],
            )
            crops.append(crop)
            targets.append(target)
            weights.append(weight)
        return tuple(torch.from_numpy(np.stack(a)) for a in (crops, targets, weights))


def masked_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, loss: str = "bce-lovasz"
) -> torch.Tensor:
    """The loss over the pixels whose weight is set; the others get no gradient."""
    keep = weight.reshape(logits.shape) > 0
    if not keep.any():
        return logits.sum() * 0.0
    return LOSSES[loss](logits[keep], target.reshape(logits.shape)[keep].float())


# --------------------------------------------------------------------------------------------
# Held-out evaluation


@dataclass
class HeldOutWindows:
    """Windows around the held-out blocks, normalized, with their labels."""

    images: np.ndarray  # (N, S, S) float32 in [0, 1]
    targets: np.ndarray  # (N, S, S) bool
    scored: np.ndarray  # (N, S, S) bool: held-out pixels, each scored once

    @property
    def pixels(self) -> int:
        return int(np.count_nonzero(self.scored))


def held_out_windows(items: Sequence[LabelledImage], margin: int = 48) -> HeldOutWindows | None:
    """A window of block + 2 * margin px (a multiple of 32) around every held-out block, so
    the network sees the blocks with context; None when nothing is held out."""
    total = sum(i.labelled_px for i in items)
    block = held_out_block_size(total)
    size = math.ceil((block + 2 * margin) / 32) * 32
    images, targets, scored = [], [], []
    for item in items:
        height, width = item.held_out.shape
        for y in range(0, height, block):
            for x in range(0, width, block):
                cell = item.held_out[y : y + block, x : x + block]
                if not cell.any():
                    continue
                y0, x0 = y - (size - block) // 2, x - (size - block) // 2
                rows, cols, inside = _window_pixels(item.gray, y0, x0, size)
                keep = np.zeros((size, size), bool)
                inner = (slice(y - y0, y - y0 + block), slice(x - x0, x - x0 + block))
                keep[inner] = True
                images.append(item.window.apply(item.gray[np.ix_(rows, cols)]))
                targets.append(item.target[np.ix_(rows, cols)].astype(bool))
                scored.append(keep & inside & item.held_out[np.ix_(rows, cols)])
    if not images:
        return None
    return HeldOutWindows(np.stack(images), np.stack(targets), np.stack(scored))


def held_out_dice(
    network: torch.nn.Module,
    card: ModelCard,
    windows: HeldOutWindows,
    device: torch.device,
    batch_size: int = 8,
) -> float:
    """Pixel Dice of (probability > card.threshold) over the held-out pixels."""
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
# The network's trainable part


def configure_training(network: torch.nn.Module, options: FinetuneOptions) -> torch.optim.Optimizer:
    """AdamW over the decoder and head at `lr`; the encoder frozen (no gradient, BatchNorm
    statistics kept) or learning at lr * encoder_lr_factor."""
    if options.encoder not in ENCODER_MODES:
        raise AmsegError(f"unknown encoder mode {options.encoder!r}; use frozen or low-lr")
    encoder = list(network.encoder.parameters())
    encoder_ids = {id(p) for p in encoder}
    rest = [p for p in network.parameters() if id(p) not in encoder_ids]
    groups = [{"params": rest, "lr": options.lr, "peak_lr": options.lr}]
    frozen = options.encoder == "frozen"
    for parameter in encoder:
        parameter.requires_grad_(not frozen)
    if not frozen:
        encoder_lr = options.lr * options.encoder_lr_factor
        groups.append({"params": encoder, "lr": encoder_lr, "peak_lr": encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=1e-4)


def set_train_mode(network: torch.nn.Module, options: FinetuneOptions) -> None:
    network.train()
    if options.encoder == "frozen":
        network.encoder.eval()  # its BatchNorm keeps the base model's statistics


def forward(network: torch.nn.Module, x: torch.Tensor, options: FinetuneOptions) -> torch.Tensor:
    """Logits (B, S, S); a frozen encoder runs without building a graph (half the time)."""
    if options.encoder == "frozen":
        with torch.no_grad():
            features = network.encoder(x)
        return network.segmentation_head(network.decoder(features))[:, 0]
    return network(x)[:, 0]


def learning_rate_factor(step: int, time_fraction: float, warmup_steps: int = 10) -> float:
    """Linear warm-up over the first steps, then cosine decay to 5 % over the time budget."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, time_fraction)))


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Run:
    """What the loop leaves: the weights to keep and how it went."""

    best_state: dict
    best_dice: float | None
    best_step: int
    base_dice: float | None
    steps: int = 0
    seconds: float = 0.0
    stopped: str = "time budget"
    history: list[dict] = field(default_factory=list)
    misses: int = 0  # evaluations in a row without a better held-out Dice

    def record(self, network: torch.nn.Module, dice: float, entry: dict, options) -> bool:
        """Note an evaluation (keeping the weights when they are the best so far); True when
        the held-out Dice has stopped improving."""
        self.history.append(entry)
        if dice > self.best_dice + options.min_delta:
            self.best_state, self.best_dice, self.best_step = _state_copy(network), dice, self.steps
            self.misses = 0
        else:
            self.misses += 1
        if self.misses >= options.patience:
            self.stopped = "no better held-out Dice"
            return True
        return False


def _state_copy(network: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def training_step(
    network: torch.nn.Module,
    card: ModelCard,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    options: FinetuneOptions,
    device: torch.device,
    lr_factor: float,
) -> float:
    """One optimizer step on a batch of (crops, targets, weights); returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * lr_factor
    set_train_mode(network, options)
    crops, target, weight = batch
    logits = forward(network, to_input(crops, card, device), options)
    loss = masked_loss(logits, target.to(device), weight.to(device), options.loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_on_labels(
    network: torch.nn.Module,
    card: ModelCard,
    sampler: CropSampler,
    windows: HeldOutWindows | None,
    options: FinetuneOptions,
    device: torch.device,
    seconds: float,
    on_progress: Callable[[FinetuneProgress], None] | None = None,
) -> _Run:
    """Train until `seconds` have passed (or `options.max_steps`) or the held-out Dice stopped
    improving; the run keeps the weights with the best held-out Dice (the base's when nothing
    beat it), or the last ones when nothing is held out."""
    start = time.perf_counter()
    optimizer = configure_training(network, options)
    base = held_out_dice(network, card, windows, device) if windows is not None else None
    run = _Run(_state_copy(network), base, 0, base, history=[{"step": 0, "held_out_dice": base}])
    last_eval, latest, limit = start, base, options.max_steps
    while (elapsed := time.perf_counter() - start) < seconds:
        if limit is not None and run.steps >= limit:
            run.stopped = "step limit"
            break
        progress = elapsed / seconds if limit is None else max(elapsed / seconds, run.steps / limit)
        factor = learning_rate_factor(run.steps, progress)
        loss = training_step(network, card, sampler.batch(), optimizer, options, device, factor)
        run.steps += 1
        now = time.perf_counter()
        last = now - start >= seconds or run.steps == limit
        if options.eval_every_steps is None:
            due = now - last_eval >= options.eval_every_s or last
        else:
            due = run.steps % options.eval_every_steps == 0 or last
        if windows is not None and run.steps >= options.min_eval_steps and due:
            latest = held_out_dice(network, card, windows, device)
            last_eval = time.perf_counter()
            entry = {"step": run.steps, "seconds": round(last_eval - start, 1),
                     "loss": round(loss, 4), "held_out_dice": round(latest, 4)}  # fmt: skip
            if run.record(network, latest, entry, options):
                break
        if on_progress is not None:
            on_progress(
                _progress(run.steps, limit, time.perf_counter() - start, seconds, latest, run)
            )
    run.seconds = time.perf_counter() - start
    if windows is None:
        run.best_state, run.best_step = _state_copy(network), run.steps
    return run


def _progress(
    step: int, limit: int | None, elapsed: float, seconds: float, latest: float | None, run: _Run
) -> FinetuneProgress:
    """The event after `step`: total steps and time left estimated from the pace so far."""
    remaining = max(0.0, seconds - elapsed)
    total = step + int(remaining / (elapsed / step))
    if limit is not None and total > limit:
        total = limit
        remaining = min(remaining, (limit - step) * elapsed / step)
    return FinetuneProgress(step, total, elapsed, remaining, latest, run.best_dice)


def read_pair(
    image: np.ndarray | str | Path, mask: np.ndarray | str | Path, index: int
) -> LabelledImage:
    """One image and its label mask (arrays or files), prepared as `prepare_image` does."""
    name = str(image) if isinstance(image, str | Path) else f"image {index + 1}"
    mask_name = str(mask) if isinstance(mask, str | Path) else f"mask {index + 1}"
    image = read_image(image) if isinstance(image, str | Path) else np.asarray(image)
    mask = read_image(mask) if isinstance(mask, str | Path) else np.asarray(mask)
    return prepare_image(image, mask, name, mask_name)


def finetune(
    images: Sequence[np.ndarray | str | Path],
    masks: Sequence[np.ndarray | str | Path],
    out_dir: str | Path,
    base: str | Path | None = None,
    minutes: float = 5.0,
    device: str = "auto",
    seed: int = 0,
    on_progress: Callable[[FinetuneProgress], None] | None = None,
    options: FinetuneOptions = FinetuneOptions(),
) -> FinetuneResult:
    """Fine-tune the model in `base` (default: the shipped one) on labelled images and write
    the model directory `out_dir`. `images` and `masks` pair up: arrays or image files; mask
    pixels 0 = background, 255 = mark, 128 = not labelled. Trains for at most `minutes`."""
    if not images or len(images) != len(masks):
        raise AmsegError(
            f"give one label mask per image (got {len(images)} image(s), {len(masks)} mask(s))"
        )
    if not minutes > 0:
        raise AmsegError(f"the time budget must be positive, got {minutes} minutes")
    if options.loss not in LOSSES:
        raise AmsegError(f"unknown loss {options.loss!r}; use {' or '.join(LOSSES)}")
    items = [read_pair(i, m, k) for k, (i, m) in enumerate(zip(images, masks, strict=True))]
    check_labels(items)
    split_held_out(items, options, np.random.default_rng([seed, 0]))
    windows = held_out_windows(items)
    torch.manual_seed(seed)
    target = resolve_device(device)
    network, card = load_model(base, device=target)
    network = network.to(memory_format=torch.channels_last)
    sampler = CropSampler(items, options, seed)
    saved_threads = torch.get_num_threads()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        run = train_on_labels(
            network, card, sampler, windows, options, target, minutes * 60.0, on_progress
        )
    finally:
        torch.set_num_threads(saved_threads)
    network.load_state_dict(run.best_state)
    card = finetuned_card(
        card,
        Path(base) if base else DEFAULT_MODEL_DIR,
        items,
        windows,
        options,
        run,
        target,
        minutes,
    )
    out_dir = save_model(out_dir, network, card)
    return FinetuneResult(
        out_dir=out_dir,
        card=card,
        steps=run.steps,
        seconds=run.seconds,
        stopped=run.stopped,
        held_out_dice_base=run.base_dice,
        held_out_dice=run.best_dice,
        best_step=run.best_step,
        history=run.history,
    )


def finetuned_card(
    base: ModelCard,
    base_dir: Path,
    items: Sequence[LabelledImage],
    windows: HeldOutWindows | None,
    options: FinetuneOptions,
    run: _Run,
    device: torch.device,
    minutes: float,
) -> ModelCard:
    """The base's card (architecture, normalization, threshold) with what this fine-tune was
    trained on, how, and how it scored on the held-out labels."""
    data = {
        "finetuned_on": [
            {
                "image": item.name,
                "size": [int(item.gray.shape[1]), int(item.gray.shape[0])],
                "scale": item.scale,
                "labelled_px": item.labelled_px,
                "mark_px": int(
                    np.count_nonzero(item.target.astype(bool) & (item.train | item.held_out))
                ),
                "held_out_px": int(np.count_nonzero(item.held_out)),
            }
            for item in items
        ],
        "base_model": {"path": str(base_dir), "created": base.created, "data": base.data},
    }
    metrics = {
        "held_out_dice": None if run.best_dice is None else round(run.best_dice, 4),
        "held_out_dice_base": None if run.base_dice is None else round(run.base_dice, 4),
        "held_out_px": windows.pixels if windows is not None else 0,
        "dice_definition": "pixel Dice of sigmoid > threshold over the held-out labelled pixels "
        "(spatial blocks no training crop was scored on); the weights were chosen on them, so "
        "the figure is optimistic",
        "base_model": base.metrics,
    }
    training = {
        "kind": "finetune",
        "base": str(base_dir),
        "minutes": minutes,
        "seconds": round(run.seconds, 1),
        "steps": run.steps,
        "best_step": run.best_step,
        "stopped": run.stopped,
        "device": str(device),
        "encoder": options.encoder
        if options.encoder == "frozen"
        else f"lr x{options.encoder_lr_factor}",
        "lr": options.lr,
        "batch_size": options.batch_size,
        "crop_size": options.crop_size,
        "loss": f"{options.loss} over the labelled pixels only",
        "augmentations": {
            "scale": f"log-uniform zoom {options.scale_range[0]}-{options.scale_range[1]}x",
            "flip_rot90": "all 8 symmetries",
            "intensity": "train.augment.augment_intensity (blur, CLAHE, contrast, gamma, noise)",
        },
        "held_out": f"{options.held_out_fraction:.0%} of the labelled pixels in square blocks",
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
