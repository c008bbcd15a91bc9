"""The moving average of the weights (--ema)."""

from __future__ import annotations

import pytest
import torch

from model.errors import AmsegError
from model.train.average import WeightAverage


def test_weight_average_follows_the_weights_with_a_warm_up():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    average = WeightAverage(network, decay=0.9)
    start = {k: v.clone() for k, v in network.state_dict().items()}
    with torch.no_grad():
        network[0].weight.add_(1.0)
        network[1].running_mean.add_(2.0)
    average.update(network)  # warm-up decay min(0.9, 2/11): moves 9/11 of the way
    kept = average.network.state_dict()
    assert torch.allclose(kept["0.weight"], start["0.weight"] + 9 / 11)
    assert torch.allclose(kept["1.running_mean"], start["1.running_mean"] + 2 * 9 / 11)
    assert not any(p.requires_grad for p in average.network.parameters())
    for _ in range(200):  # long after the warm-up the decay is 0.9 and the average converges
        average.update(network)
    assert torch.allclose(average.network[0].weight, network[0].weight)
    with pytest.raises(AmsegError, match="decay"):
        WeightAverage(network, decay=1.0)
