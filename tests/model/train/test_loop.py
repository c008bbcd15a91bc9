"""Training loop: all parameters learn, seeded and resumable runs, metrics at the card threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.errors import AmsegError
from model.metrics import dice_counts, dice_from_counts, object_counts
from model.segment.card import ModelCard
from model.train.base import build_network
from model.train.loop import evaluate, train_model
from tests.model.train.discs import tiny_config


def test_every_parameter_is_trained_including_the_head(disc_data, tmp_path):
    config = tiny_config(disc_data, tmp_path / "out")
    initial, _ = build_network(config, None)  # the same seeded initialisation train_model uses
    before = {k: v.detach().clone() for k, v in initial.named_parameters()}
    train_model(config)
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters never updated: {unchanged}"
    assert any(k.startswith("segmentation_head") for k in before)


def test_training_writes_model_card_curves_and_history(disc_data, tmp_path):
    out = tmp_path / "out"
    result = train_model(tiny_config(disc_data, out, epochs=2, threshold=0.4, matrix="dan"))
    for name in ("model.safetensors", "model_card.json", "training_curves.png", "history.json"):
        assert (out / name).is_file(), name
    card = ModelCard.from_json((out / "model_card.json").read_text())
    assert card.threshold == 0.4 and card.matrix == "DAN" and card.tile_size == 512
    assert card.encoder == "resnet18" and card.mark_px is not None
    assert card.data["train"]["images"] == 3 and card.data["valid"]["images"] == 1
    assert card.metrics["epoch"] == result.best_epoch
    assert card.metrics["val_dice"] == pytest.approx(result.best_dice, abs=1e-4)
    assert card.training["seed"] == 0 and card.training["epochs"] == 2
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert {"train_loss", "val_loss", "val_dice", "val_f1"} <= set(history[0])
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    # The best epoch over the whole run is the one kept.
    assert result.best_dice == max(r["val_dice"] for r in history)


class ProbabilityIsInput(torch.nn.Module):
    """Fake network whose sigmoid output equals the (de-normalized) input tile."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        self.card = card

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x * self.card.input_std[0] + self.card.input_mean[0]
        return torch.logit(p.clamp(1e-4, 1 - 1e-4))


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_validation_dice_uses_the_card_threshold(threshold):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (3, 32, 32)).astype(np.float32)
    masks = (rng.uniform(0, 1, (3, 32, 32)) > 0.5).astype(np.uint8)
    valids = np.ones_like(masks)
    card = ModelCard(threshold=threshold)
    metrics = evaluate(
        ProbabilityIsInput(card), card, (images, masks, valids), torch.device("cpu"), 2
    )
    expected = dice_from_counts(dice_counts(images > threshold, masks.astype(bool)))
    assert metrics["val_dice"] == pytest.approx(expected, abs=1e-6)


def test_object_counts_match_at_iou_one_half():
    truth = np.zeros((40, 40), bool)
    truth[2:10, 2:10] = True  # matched well
    truth[20:28, 20:28] = True  # predicted too small: IoU 0.25, counts as missed
    pred = np.zeros_like(truth)
    pred[3:10, 2:10] = True
    pred[20:24, 20:24] = True
    pred[30:36, 2:8] = True  # spurious
    pred[0, 39] = True  # below the 12 px noise floor, ignored
    tp, fp, fn = object_counts(pred, truth)
    assert (tp, fp, fn) == (1, 2, 1)


def test_same_seed_same_weights_and_different_seed_differs(disc_data, tmp_path):
    weights = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train_model(tiny_config(disc_data, tmp_path / name, seed=seed))
        weights.append(load_file(str(tmp_path / name / "model.safetensors")))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


class Interrupt(Exception):
    pass


def test_resume_gives_the_same_result_as_an_uninterrupted_run(disc_data, tmp_path):
    train_model(tiny_config(disc_data, tmp_path / "whole", epochs=2))

    def stop_after_first_epoch(event):
        if event.kind == "epoch_end" and event.epoch == 1:
            raise Interrupt

    split = tiny_config(disc_data, tmp_path / "split", epochs=2)
    with pytest.raises(Interrupt):
        train_model(split, on_event=stop_after_first_epoch)
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    split.resume = True
    result = train_model(split)
    assert result.epochs_run == 2
    for name in ("model.safetensors",):
        whole = load_file(str(tmp_path / "whole" / name))
        resumed = load_file(str(tmp_path / "split" / name))
        assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    last_whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]
    last_split = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(last_whole[k], last_split[k]) for k in last_whole)


def test_averaged_weights_are_saved_and_resume_exactly(disc_data, tmp_path):
    one = train_model(tiny_config(disc_data, tmp_path / "one", ema_decay=0.99))
    saved = load_file(str(tmp_path / "one" / "model.safetensors"))
    state = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(saved[k], state["average"]["weights"][k]) for k in saved)
    assert not all(torch.equal(saved[k], state["model"][k]) for k in saved)
    assert "EMA decay 0.99" in one.card.training["weight_average"]

    train_model(tiny_config(disc_data, tmp_path / "whole", epochs=2, ema_decay=0.99))
    saved = load_file(str(tmp_path / "whole" / "model.safetensors"))

    def stop_after_first_epoch(event):
        if event.kind == "epoch_end" and event.epoch == 1:
            raise Interrupt

    split = tiny_config(disc_data, tmp_path / "split", epochs=2, ema_decay=0.99)
    with pytest.raises(Interrupt):
        train_model(split, on_event=stop_after_first_epoch)
    split.resume = True
    train_model(split)
    resumed = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert all(torch.equal(saved[k], resumed[k]) for k in saved)


def test_resume_refuses_changed_settings_and_missing_checkpoint(disc_data, tmp_path):
    with pytest.raises(AmsegError, match=r"no checkpoint\.pt"):
        train_model(tiny_config(disc_data, tmp_path / "none", resume=True))
    train_model(tiny_config(disc_data, tmp_path / "out"))
    with pytest.raises(AmsegError, match="lr"):
        train_model(tiny_config(disc_data, tmp_path / "out", resume=True, lr=1e-2))
    with pytest.raises(AmsegError, match="mark_range"):
        train_model(tiny_config(disc_data, tmp_path / "out", resume=True, mark_range=(8, 60)))


def test_resume_accepts_a_checkpoint_from_before_a_setting_existed(disc_data, tmp_path):
    train_model(tiny_config(disc_data, tmp_path / "out"))
    path = tmp_path / "out" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    del state["identity"]["mark_range"]  # written before --mark-range existed
    del state["identity"]["disturb"]  # ... and --disturb
    torch.save(state, path)
    result = train_model(tiny_config(disc_data, tmp_path / "out", resume=True, epochs=2))
    assert result.epochs_run == 2


def test_resume_refuses_a_new_setting_the_old_checkpoint_ran_without(disc_data, tmp_path):
    train_model(tiny_config(disc_data, tmp_path / "out"))
    path = tmp_path / "out" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    del state["identity"]["disturb"]  # written before --disturb existed: it ran without
    torch.save(state, path)
    with pytest.raises(AmsegError, match="disturb"):
        train_model(tiny_config(disc_data, tmp_path / "out", resume=True, epochs=2, disturb=0.3))


def test_loss_decreases_on_bright_discs(disc_data, tmp_path):
    losses = []

    def record(event):
        if event.kind == "step":
            losses.append(event.batch_loss)

    config = tiny_config(
        disc_data, tmp_path / "out", batch_size=2, crops_per_epoch=31 * 2, augment=False
    )
    train_model(config, on_event=record)
    assert len(losses) == 31
    assert np.mean(losses[-3:]) < losses[0]


def test_training_with_the_lovasz_loss_runs_and_is_recorded(disc_data, tmp_path):
    result = train_model(tiny_config(disc_data, tmp_path / "out", loss="bce-lovasz"))
    assert "Lovasz" in result.card.training["loss"]
    with pytest.raises(AmsegError, match="unknown loss"):
        train_model(tiny_config(disc_data, tmp_path / "bad", loss="focal"))
