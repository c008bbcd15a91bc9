"""What `amseg train` and `amseg finetune` share: threads, precision, schedule, keeping the best."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from model.errors import AmsegError
from model.train import steps
from model.train.steps import KeepBest, autocast_dtype, make_scheduler, spare_cores


def fake_stat(monkeypatch, cores: int, busy_share: float) -> None:
    """/proc/stat readings 0.1 s apart with `busy_share` of the CPU time busy."""
    readings = iter(
        [[0] * 8, [int(100 * busy_share), 0, 0, int(100 * (1 - busy_share)), 0, 0, 0, 0]]
    )
    monkeypatch.setattr(steps, "_cpu_times", lambda: next(readings))
    monkeypatch.setattr(steps.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(steps.time, "sleep", lambda _: None)


@pytest.mark.parametrize(
    ("cores", "busy_share", "expected"),
    [(2, 0.0, 2), (2, 0.5, 1), (2, 0.45, 1), (2, 1.0, 1), (8, 0.25, 6), (1, 0.0, 1)],
)
def test_training_threads_are_the_cores_other_work_leaves_idle(
    monkeypatch, cores, busy_share, expected
):
    fake_stat(monkeypatch, cores, busy_share)
    assert spare_cores() == expected


def test_without_proc_stat_the_load_average_says_how_busy(monkeypatch):
    def missing():
        raise OSError("no /proc/stat")

    monkeypatch.setattr(steps, "_cpu_times", missing)
    monkeypatch.setattr(steps.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(steps.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    assert spare_cores() == 1


def test_a_real_reading_is_a_thread_count_this_machine_has():
    assert 1 <= spare_cores() <= (os.cpu_count() or 1)


def test_fp32_is_asked_for_and_unknown_precisions_are_refused(monkeypatch):
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    monkeypatch.setattr(steps, "cpu_supports_bf16", lambda: True)
    assert autocast_dtype(cpu) is torch.bfloat16
    monkeypatch.setattr(steps, "cpu_supports_bf16", lambda: False)
    assert autocast_dtype(cpu) is None  # emulated bf16 is slower than fp32
    with pytest.raises(AmsegError, match="unknown training precision"):
        autocast_dtype(cpu, "fp8")


def test_schedule_warms_up_then_decays_to_its_floor():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = make_scheduler(optimizer, total_steps=100, warmup_fraction=0.1, floor=0.05)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[-1] == pytest.approx(0.05, abs=0.01)


def test_keep_best_copies_the_best_weights_and_runs_out_of_patience():
    network = torch.nn.Linear(2, 1)
    keeper = KeepBest(patience=2, min_delta=0.01)
    assert keeper.offer(0.5, 0, network)
    with torch.no_grad():
        network.weight.add_(1.0)
    assert keeper.offer(0.6, 10, network)
    best_weight = network.weight.detach().clone()
    with torch.no_grad():
        network.weight.add_(1.0)
    assert not keeper.offer(0.605, 20, network)  # within min_delta: no better
    assert not keeper.exhausted
    assert not keeper.offer(0.4, 30, network)
    assert keeper.exhausted and (keeper.score, keeper.at) == (0.6, 10)
    assert torch.equal(keeper.state["weight"], best_weight)
