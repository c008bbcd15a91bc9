"""checkpoint.pt: what an interrupted run needs to continue (--resume) as if it never stopped."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.errors import AmsegError
from model.train.average import WeightAverage
from model.train.config import TrainConfig

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Learner:
    """What a training step changes: the network, its optimizer, learning-rate schedule and
    gradient scaler, and (with --ema) the weight average. All of it goes into the checkpoint."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    average: WeightAverage | None = None

    @property
    def kept(self) -> torch.nn.Module:
        """Validated and saved: the averaged weights when averaging, else the trained ones."""
        return self.average.network if self.average is not None else self.network


def save_checkpoint(
    path: Path,
    learner: Learner,
    epoch: int,
    best: dict,
    history: list[dict],
    config: TrainConfig,
) -> None:
    """Write the checkpoint after `epoch` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    average = learner.average
    state = {
        "model": learner.network.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(),
        "scaler": learner.scaler.state_dict(),
        "average": average.state_dict() if average is not None else None,
        "epoch": epoch,
        "best": best,
        "history": history,
        "identity": _json_roundtrip(config.identity()),
        # Each epoch re-seeds from (seed, epoch); the states are kept for inspection/debugging.
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.default_rng([config.seed, epoch]).bit_generator.state,
        },
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def restore_checkpoint(
    path: Path, learner: Learner, config: TrainConfig, base: Path | None
) -> dict:
    """Load the checkpoint into `learner` (and torch's RNG); returns it for its epoch, history
    and best epoch. Refuses one written with other settings or for another base model."""
    # CPU first: the RNG state must stay a CPU tensor; load_state_dict moves the rest.
    state = torch.load(path, map_location="cpu", weights_only=True)
    # A setting added after the checkpoint was written is absent there: that run behaved
    # as the setting's default does (every new setting's default keeps the old behaviour).
    identity = _json_roundtrip(config.identity())
    defaults = _json_roundtrip(TrainConfig(data=config.data).identity())
    changed = [k for k, v in identity.items() if state["identity"].get(k, defaults[k]) != v]
    if changed:
        raise AmsegError(
            f"--resume: settings differ from the interrupted run ({', '.join(changed)})"
        )
    if len(state["optimizer"]["param_groups"]) != len(learner.optimizer.param_groups):
        raise AmsegError(
            f"--resume: the base model {base} changed since the interrupted run (its "
            "full-resolution skip differs); start a new run instead"
        )
    learner.network.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.scheduler.load_state_dict(state["scheduler"])
    learner.scaler.load_state_dict(state["scaler"])
    if learner.average is not None:
        learner.average.load_state_dict(state["average"])
    torch.set_rng_state(state["rng"]["torch"])
    return state


def _json_roundtrip(value: dict) -> dict:
    return json.loads(json.dumps(value))
