"""A moving average of the weights (--ema), validated and saved instead of the raw weights."""

from __future__ import annotations

import copy

import torch

from model.errors import AmsegError


class WeightAverage:
    """An exponential moving average of a network's weights and buffers (BatchNorm statistics
    included), updated after every optimizer step.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the average
    follows the weights closely early on and a short run does not end near its start.
    """

    def __init__(self, network: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise AmsegError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.network = copy.deepcopy(network).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = network.state_dict()
        for name, average in self.network.state_dict().items():
            if average.dtype.is_floating_point:
                average.lerp_(live[name], 1.0 - decay)
            else:  # e.g. BatchNorm's num_batches_tracked
                average.copy_(live[name])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": self.network.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.network.load_state_dict(state["weights"])
