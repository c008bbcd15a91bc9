"""What `amseg train` and `amseg finetune` share: the device and its threads, the mixed
precision, the network's input as prediction makes it, the learning rate schedule, one
optimizer step, and keeping the best weights with a patience to stop."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import torch

from model.errors import AmsegError
from model.segment.card import ModelCard
from model.segment.runtime import cpu_supports_bf16
from model.train.checkpoint import Learner


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AmsegError("--device cuda was asked for but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise AmsegError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def spare_cores(sample_s: float = 0.1) -> int:
    """The cores other work leaves idle (at least 1): CPU threads for training. On a 2-core
    machine 2 torch threads train 1.5-1.7x faster than 1 when it is quiet, but 2-5x slower
    than 1 while another process keeps a core busy (the threads wait on each other)."""
    cores = os.cpu_count() or 1
    busy = _busy_cores(sample_s, cores)
    return max(1, min(cores, round(cores - busy)))


def _busy_cores(sample_s: float, cores: int) -> float:
    """How many cores are busy: from /proc/stat over `sample_s` (this process sleeping
    meanwhile), else the 1-minute load average."""
    try:
        first = _cpu_times()
        time.sleep(sample_s)
        second = _cpu_times()
    except OSError:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    total = sum(second) - sum(first)
    idle = (second[3] + second[4]) - (first[3] + first[4])
    return cores * (1 - idle / total) if total > 0 else 0.0


def _cpu_times() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:9]]


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The reduced precision forward passes run in: fp16 on a GPU; bf16 on a CPU that computes
    it natively (emulated bf16 is slower than fp32); None = fp32. `precision` fp32 forces it."""
    if precision not in ("auto", "fp32"):
        raise AmsegError(f"unknown training precision {precision!r}; use auto or fp32")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_input(crops: torch.Tensor, card: ModelCard, device: torch.device) -> torch.Tensor:
    """(B, T, T) [0, 1] -> (B, C, T, T) normalized the way prediction normalizes."""
    x = crops.to(device, non_blocking=True).unsqueeze(1)
    if card.in_channels > 1:
        x = x.expand(-1, card.in_channels, -1, -1)
    mean = torch.tensor(card.input_mean, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(card.input_std, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_fraction: float,
    floor: float = 0.01,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to `floor` of the peak learning rate, per step."""
    warmup = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(learner: Learner, loss: torch.Tensor) -> float:
    """Backward, step, schedule and average; returns the loss."""
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    learner.scheduler.step()
    if learner.average is not None:
        learner.average.update(learner.network)
    return float(loss.detach())


@dataclass
class KeepBest:
    """The best score so far, where it was reached and (with `keep_weights`) a copy of the
    weights then; `exhausted` once `patience` scores in a row brought nothing better."""

    patience: int | None = None  # None: never exhausted
    min_delta: float = 0.0
    keep_weights: bool = True
    score: float | None = None
    at: int = 0  # step or epoch of the best score
    state: dict | None = None
    misses: int = 0
    history: list[dict] = field(default_factory=list)

    def offer(self, score: float, at: int, network: torch.nn.Module | None = None) -> bool:
        """Note a score; True (and the weights copied) when it beats the best by min_delta."""
        improved = self.score is None or score > self.score + self.min_delta
        if improved:
            self.score, self.at, self.misses = score, at, 0
            if self.keep_weights and network is not None:
                self.state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        else:
            self.misses += 1
        return improved

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.misses >= self.patience
