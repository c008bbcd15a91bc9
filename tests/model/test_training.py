"""Training loop: all parameters learn, seeded and resumable runs, metrics at the card threshold."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.errors import AmsegError
from model.image.io import write_png
from model.metrics import dice_counts, dice_from_counts, object_counts
from model.segment.card import ModelCard
from model.segment.network import build_unet, legacy_card, load_model, save_model
from model.training import (
    ADDED_LAYERS_LR_FACTOR,
    Sample,
    TrainConfig,
    WeightAverage,
    _add_dust,
    _uneven_light,
    _value_range,
    added_layer_prefixes,
    bce_dice_loss,
    bce_lovasz_loss,
    build_network,
    choose_base_model,
    disturb_crop,
    evaluate,
    load_sample,
    load_training_data,
    marks_are_dark,
    parameter_groups,
    plan_epoch,
    requested_card,
    sample_crop,
    train_model,
    typical_mark_px,
    validation_crops,
    zoom_range,
)

TINY = {"encoder": "resnet18", "decoder_channels": (16, 8, 8, 8, 8)}


def disc_image(rng: np.random.Generator, size: int = 96, marks: int = 4) -> tuple:
    """Bright discs (radius 5-9 px) on a noisy background, as uint8 image and 0/255 mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for _ in range(marks):
        cy, cx = rng.uniform(10, size - 10, 2)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(5, 9) ** 2
    image = 60 + 120 * mask + rng.normal(0, 20, mask.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def make_disc_data(root: Path, *, train: int = 3, valid: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("valid", valid)):
        for i in range(count):
            image, mask = disc_image(rng)
            group = root / split / "discs" / f"g{i % 2}"
            write_png(group / "source" / f"{i:02d}.png", image)
            write_png(group / "mask" / f"{i:02d}.png", mask)
    return root


@pytest.fixture
def disc_data(tmp_path: Path) -> Path:
    return make_disc_data(tmp_path / "data")


@pytest.fixture(autouse=True)
def no_shipped_model(monkeypatch, tmp_path: Path):
    """Tests never fine-tune from a model that happens to be shipped in model/weights/."""
    monkeypatch.setattr("model.training.DEFAULT_MODEL_DIR", tmp_path / "weights" / "default")


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        data=data,
        out=out,
        epochs=1,
        batch_size=4,
        tile_size=64,
        crops_per_epoch=4,
        max_val_crops=8,
        lr=3e-3,
        device="cpu",
        threads=1,  # steady timings while other work shares the cores
        **TINY,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_every_parameter_is_trained_including_the_head(disc_data, tmp_path):
    config = tiny_config(disc_data, tmp_path / "out")
    initial, _ = build_network(config, None)  # the same seeded initialisation train_model uses
    before = {k: v.detach().clone() for k, v in initial.named_parameters()}
    train_model(config)
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters never updated: {unchanged}"
    assert any(k.startswith("segmentation_head") for k in before)


def test_curve_axes_zoom_on_the_data_within_their_bounds():
    # A fine-tune's Dice moves by thousandths: the axis must zoom in, not span 0..1.
    low, high = _value_range([0.9165, 0.9193, 0.9170], 0.0, 1.0)
    assert 0.9 < low < 0.9165 and 0.9193 < high < 0.93
    # Padding never leaves the metric's bounds, and a flat series still gets a range.
    assert _value_range([0.1, 0.999], 0.0, 1.0) == (pytest.approx(0.0101), 1.0)
    assert _value_range([0.5, 0.5], 0.0, 1.0) == (pytest.approx(0.495), pytest.approx(0.505))
    assert _value_range([1.0, 1.0], 0.0, 1.0)[1] == 1.0


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


def test_data_errors_are_clear(tmp_path):
    with pytest.raises(AmsegError, match="no such training data folder"):
        load_training_data(TrainConfig(data=tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AmsegError, match="no train/ folder"):
        load_training_data(TrainConfig(data=tmp_path / "empty"))
    (tmp_path / "empty" / "train" / "ds" / "g" / "source").mkdir(parents=True)
    with pytest.raises(AmsegError, match="no training images"):
        load_training_data(TrainConfig(data=tmp_path / "empty"))
    bad = tmp_path / "bad" / "train" / "ds" / "g"
    write_png(bad / "source" / "a.png", np.zeros((20, 30), np.uint8))
    write_png(bad / "mask" / "a.png", np.zeros((30, 20), np.uint8))
    with pytest.raises(AmsegError, match="mask is 20x30"):
        load_training_data(TrainConfig(data=tmp_path / "bad"))


def test_missing_masks_are_background_and_valid_is_held_out(tmp_path):
    group = tmp_path / "data" / "train" / "ds" / "g"
    for i in range(4):
        image = np.full((40, 50), 10 * i, np.uint16)
        write_png(group / "source" / f"{i}.png", image)
    write_png(group / "mask" / "0.png", np.eye(40, 50, dtype=np.uint8))  # a 0/1 mask
    train, valid, notes = load_training_data(TrainConfig(data=tmp_path / "data"))
    assert len(train) == 3 and len(valid) == 1 and "holding out" in notes[0]
    by_name = {s.path.name: s for s in train + valid}
    assert by_name["0.png"].mask.sum() == 40
    assert by_name["1.png"].mask.sum() == 0


def test_epoch_plan_sees_every_image_weighted_by_area():
    rng = np.random.default_rng(0)
    plan = plan_epoch([100, 100, 10_000], 200, rng)
    counts = np.bincount(plan, minlength=3)
    assert len(plan) == 200 and counts.min() >= 1 and counts[2] > 150
    few = plan_epoch([1, 1, 1, 1], 2, rng)
    assert len(set(few.tolist())) == 2


def test_crops_of_small_images_are_padded_and_masks_stay_binary():
    rng = np.random.default_rng(0)
    image, mask = disc_image(rng, size=40)
    sample = Sample(
        Path("x.png"), "ds", "g", image.astype(np.float32) / 255, (mask > 0).astype(np.uint8)
    )
    for i in range(20):
        crop, crop_mask = sample_crop(sample, np.random.default_rng(i), 64, augment=True)
        assert crop.shape == crop_mask.shape == (64, 64) and crop.dtype == np.float32
        assert crop.min() >= 0.0 and crop.max() <= 1.0
        assert set(np.unique(crop_mask)) <= {0, 1}
    again = sample_crop(sample, np.random.default_rng(3), 64, augment=True)
    first = sample_crop(sample, np.random.default_rng(3), 64, augment=True)
    assert np.array_equal(again[0], first[0])
    images, _, valids = validation_crops([sample], 64, 10)
    assert images.shape == (1, 64, 64) and valids.sum() == 40 * 40


def disc_crop(size: int = 128, polarity: str = "bright") -> tuple[np.ndarray, np.ndarray]:
    """Discs of 11 px on a grey, noisy background, as a [0, 1] crop and its 0/1 mask."""
    rng = np.random.default_rng(1)
    mask = np.zeros((size, size), np.uint8)
    for y in range(16, size, 48):
        for x in range(16, size, 48):
            cv2.circle(mask, (x, y), 5, 1, -1)
    level = 0.8 if polarity == "bright" else 0.1
    crop = np.where(mask > 0, level, 0.4) + rng.normal(0.0, 0.03, mask.shape)
    return np.clip(crop, 0.0, 1.0).astype(np.float32), mask


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_dust_lands_beside_the_marks_as_bright_or_dark_as_they_are(polarity):
    crop, mask = disc_crop(polarity=polarity)
    near_marks = cv2.dilate(mask, np.ones((3, 3), np.uint8)) > 0
    marks = crop[mask > 0]
    dusted = 0
    for seed in range(10):
        out = _add_dust(crop, mask, np.random.default_rng(seed), 11.0)
        # The marks and the pixel around them keep their values (a blob's rim stays 3 sigma off).
        assert np.abs(out[near_marks] - crop[near_marks]).max() < 0.01
        changed = np.abs(out - crop) > 0.2
        if changed.any():
            dusted += 1
            if polarity == "bright":
                assert out[changed].mean() >= np.percentile(marks, 75) - 0.1
            else:
                assert out[changed].mean() <= np.percentile(marks, 25) + 0.1
    assert dusted >= 5  # most draws find room for a blob


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_crops_without_marks_get_dust_of_the_images_polarity(polarity, tmp_path):
    crop, mask = disc_crop(polarity=polarity)
    source, mask_path = tmp_path / "s.png", tmp_path / "m.png"
    write_png(source, np.rint(crop * 255).astype(np.uint8))
    write_png(mask_path, mask * 255)
    sample = load_sample(source, mask_path, "ds", "g")
    assert sample.dark_marks is None  # judged only when a disturbed crop needs it
    assert sample.has_dark_marks() == (polarity == "dark") == marks_are_dark(crop, mask)
    empty = np.zeros_like(mask)
    background = crop[16 + 24 : 16 + 40, 16 + 8 : 16 + 40].copy()  # no disc in this patch
    background_mask = empty[: background.shape[0], : background.shape[1]]
    dusted = 0
    for seed in range(10):
        out = _add_dust(
            background, background_mask, np.random.default_rng(seed), 6.0,
            dark_marks=sample.dark_marks,
        )  # fmt: skip
        changed = np.abs(out - background) > 0.2
        if changed.any():
            dusted += 1
            step = (out - background)[changed]
            assert (step > 0).all() if polarity == "bright" else (step < 0).all()
    assert dusted >= 3
    # Unset, a crop without marks is taken for bright marks, as before.
    assert not marks_are_dark(background, background_mask)


def test_sample_crop_passes_the_images_polarity_to_the_dust(monkeypatch):
    seen = []

    def spy(crop, mask, rng, chance, *, dark_marks=None):
        seen.append(dark_marks)
        return crop

    monkeypatch.setattr("model.training.disturb_crop", spy)
    crop, mask = disc_crop(size=96, polarity="dark")
    sample = Sample(Path("x.png"), "ds", "g", crop, mask, dark_marks=True)
    sample_crop(sample, np.random.default_rng(0), 64, augment=True, disturb=0.5)
    assert seen == [True]
    # Left unset, the polarity is judged from the whole image, once, and kept.
    unset = Sample(Path("y.png"), "ds", "g", crop, mask)
    sample_crop(unset, np.random.default_rng(0), 64, augment=True, disturb=0.5)
    assert seen == [True, True] and unset.dark_marks is True
    # Without disturbances it is never judged.
    fresh = Sample(Path("z.png"), "ds", "g", crop, mask)
    sample_crop(fresh, np.random.default_rng(0), 64, augment=True, disturb=0.0)
    assert fresh.dark_marks is None


def test_uneven_light_is_a_ramp_within_the_stated_bounds():
    flat = np.full((64, 64), 0.5, np.float32)
    for seed in range(10):
        out = _uneven_light(flat, np.random.default_rng(seed))
        assert out.min() >= 0.5 * 0.35 - 1e-6 and out.max() <= 0.5 + 0.3 + 1e-6
        # A plane: second differences along both axes vanish.
        assert np.abs(np.diff(out, 2, axis=0)).max() < 1e-4
        assert np.abs(np.diff(out, 2, axis=1)).max() < 1e-4


# sample_crop of disc_crop(96) as the commit before --disturb drew it: (crop sum, mask sum,
# crop[10, 20]) for seeds 0-2. A changed random stream changes all three.
CROPS_BEFORE_DISTURB = [(1765.729, 231, 0.41591), (1630.787, 81, 0.37843), (1544.806, 232, 0.36432)]


def test_disturbances_are_off_by_default_and_crops_are_drawn_as_before():
    crop, mask = disc_crop(size=96)
    sample = Sample(Path("x.png"), "ds", "g", crop, mask)
    for seed, (crop_sum, mask_sum, pixel) in enumerate(CROPS_BEFORE_DISTURB):
        for extra in ({}, {"disturb": 0.0}):
            got, got_mask = sample_crop(
                sample, np.random.default_rng(seed), 64, augment=True, scale_range=(0.7, 1.4),
                **extra,
            )  # fmt: skip
            assert float(got.astype(np.float64).sum()) == pytest.approx(crop_sum, abs=2e-3)
            assert int(got_mask.sum()) == mask_sum
            assert float(got[10, 20]) == pytest.approx(pixel, abs=1e-5)


def test_disturbed_crops_change_and_repeat_with_the_seed(monkeypatch):
    monkeypatch.setattr("model.training.augment_intensity", lambda crop, rng: crop)
    crop, mask = disc_crop(size=96)
    sample = Sample(Path("x.png"), "ds", "g", crop, mask)
    for seed in range(5):
        plain = sample_crop(sample, np.random.default_rng(seed), 64, augment=True)
        on = sample_crop(sample, np.random.default_rng(seed), 64, augment=True, disturb=1.0)
        again = sample_crop(sample, np.random.default_rng(seed), 64, augment=True, disturb=1.0)
        assert np.array_equal(on[0], again[0]) and np.array_equal(on[1], again[1])
        assert on[0].min() >= 0.0 and on[0].max() <= 1.0 and on[0].dtype == np.float32
        # Without the photometric augmentation only the disturbances can tell them apart.
        assert np.abs(on[0] - plain[0]).mean() > 0.005


@pytest.mark.parametrize("case", ["empty", "all marks", "tiny", "specks"])
def test_disturbances_cope_with_any_mask(case):
    crop, mask = disc_crop(size=64)
    if case == "empty":
        mask[:] = 0
    elif case == "all marks":
        mask[:] = 1
    elif case == "tiny":
        crop, mask = crop[:8, :8], mask[:8, :8]
    else:  # marks smaller than the object-size floor: measured as none
        mask[:] = 0
        mask[10:12, 10:12] = 1
    for seed in range(5):
        out = disturb_crop(crop, mask, np.random.default_rng(seed), 1.0)
        assert out.shape == crop.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        dusted = _add_dust(crop, mask, np.random.default_rng(seed), 12.0)
        if case == "all marks":
            assert np.array_equal(dusted, crop)  # no room: no dust


def test_zoom_range_keeps_marks_within_the_mark_range():
    # 9 px marks: no zoom below 8/9; 60 px marks: none above 1; in-range sizes keep the range.
    assert zoom_range((0.7, 1.4), 9.0, (8.0, 60.0)) == pytest.approx((8 / 9, 1.4))
    assert zoom_range((0.7, 1.4), 60.0, (8.0, 60.0)) == pytest.approx((0.7, 1.0))
    assert zoom_range((0.7, 1.4), 25.0, (8.0, 60.0)) == (0.7, 1.4)
    # Outside the range already: the nearest end of the scale range, never beyond it.
    assert zoom_range((0.7, 1.4), 4.0, (8.0, 60.0)) == (1.4, 1.4)
    assert zoom_range((0.7, 1.4), 120.0, (8.0, 60.0)) == (0.7, 0.7)
    # Off, or no marks to measure: the scale range unchanged.
    assert zoom_range((0.5, 2.0), 9.0, None) == (0.5, 2.0)
    assert zoom_range((0.5, 2.0), None, (8.0, 60.0)) == (0.5, 2.0)


def test_crops_of_small_marks_are_not_shrunk_below_the_mark_range():
    mask = np.zeros((256, 256), np.uint8)
    for y in range(16, 256, 32):
        for x in range(16, 256, 32):
            cv2.circle(mask, (x, y), 5, 1, -1)  # 11 px discs
    sample = Sample(Path("x.png"), "ds", "g", mask.astype(np.float32), mask)
    assert typical_mark_px(sample) == 11.0
    low, high = zoom_range((0.5, 1.0), typical_mark_px(sample), (8.0, 60.0))
    assert low == pytest.approx(8 / 11) and high == 1.0

    def disc_widths(scale_range: tuple[float, float]) -> list[int]:
        widths = []
        for i in range(30):
            _, crop_mask = sample_crop(
                sample, np.random.default_rng(i), 64, augment=True, scale_range=scale_range
            )
            _, _, stats, _ = cv2.connectedComponentsWithStats(crop_mask)
            inner = stats[1:][(stats[1:, 0] > 0) & (stats[1:, 1] > 0)]  # not cut by the crop
            inner = inner[(inner[:, 0] + inner[:, 2] < 64) & (inner[:, 1] + inner[:, 3] < 64)]
            widths.extend(inner[:, 2].tolist())
        return widths

    # Unrestricted, the 0.5x end shrinks the discs to 5-6 px; restricted, to 8 px give or take
    # the pixel that resampling the mask costs.
    assert min(disc_widths((0.5, 1.0))) <= 6
    assert min(disc_widths((low, high))) >= 7
    assert typical_mark_px(Sample(Path("y.png"), "ds", "g", mask * 0.0, mask * 0)) is None


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


def test_loss_is_small_for_confident_correct_logits():
    target = torch.zeros(2, 16, 16)
    target[:, 4:8, 4:8] = 1
    good = bce_dice_loss((target * 2 - 1) * 20, target)
    bad = bce_dice_loss(-(target * 2 - 1) * 20, target)
    assert float(good) < 0.01 < float(bad)


def test_lovasz_term_is_the_jaccard_loss_on_binary_errors():
    """With hinge errors exactly 0 (right, margin 1) or 1 (wrong, logit 0) the Lovasz
    extension equals 1 - IoU with the wrong pixels counted as errors."""
    target = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    wrong = torch.tensor([[False, True, False, False], [True, True, False, False]])
    logits = torch.where(wrong, torch.zeros_like(target), 2 * target - 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    missed, extra, positives = 1, 2, 4  # wrong positives, wrong negatives, all positives
    iou = (positives - missed) / (positives + extra)
    assert float(bce_lovasz_loss(logits, target) - bce) == pytest.approx(1 - iou, abs=1e-6)
    confident = (2 * target - 1) * 5  # right with a wide margin: no Lovasz term left
    expected = torch.nn.functional.binary_cross_entropy_with_logits(confident, target)
    assert float(bce_lovasz_loss(confident, target)) == pytest.approx(float(expected), abs=1e-6)


def test_training_with_the_lovasz_loss_runs_and_is_recorded(disc_data, tmp_path):
    result = train_model(tiny_config(disc_data, tmp_path / "out", loss="bce-lovasz"))
    assert "Lovasz" in result.card.training["loss"]
    with pytest.raises(AmsegError, match="unknown loss"):
        train_model(tiny_config(disc_data, tmp_path / "bad", loss="focal"))


def test_base_model_choice(tmp_path, monkeypatch):
    weights = tmp_path / "w"
    monkeypatch.setattr("model.training.DEFAULT_MODEL_DIR", weights / "default")
    config = TrainConfig(data=tmp_path, matrix="DHB")
    assert choose_base_model(config)[0] is None
    save_model(weights / "default", build_unet(**TINY), ModelCard(**TINY))
    assert choose_base_model(config)[0] == weights / "default"
    save_model(weights / "dhb", build_unet(**TINY), ModelCard(**TINY))
    assert choose_base_model(config)[0] == weights / "dhb"
    assert choose_base_model(TrainConfig(data=tmp_path, matrix="DAN"))[0] == weights / "default"
    # An architecture the shipped model does not have: start from scratch, and say why.
    base, note = choose_base_model(TrainConfig(data=tmp_path, matrix="DHB", encoder="resnet34"))
    assert base is None and "different architecture" in note
    assert choose_base_model(TrainConfig(data=tmp_path, matrix="DHB", from_scratch=True))[0] is None
    with pytest.raises(AmsegError, match="contradict"):
        choose_base_model(TrainConfig(data=tmp_path, init_from=weights / "dhb", from_scratch=True))


def test_legacy_and_three_channel_configurations(disc_data, tmp_path):
    card, legacy = requested_card(TrainConfig(data=tmp_path, legacy=True)), legacy_card()
    fields = ("encoder", "decoder_channels", "in_channels", "input_mean", "input_std")
    assert [getattr(card, f) for f in fields] == [getattr(legacy, f) for f in fields]
    with pytest.raises(AmsegError, match="--legacy"):
        requested_card(TrainConfig(data=tmp_path, legacy=True, in_channels=1))
    train_model(tiny_config(disc_data, tmp_path / "rgb", in_channels=3))
    network, card = load_model(tmp_path / "rgb")
    assert card.in_channels == 3 and len(card.input_mean) == 3
    assert network.encoder.conv1.in_channels == 3


def test_fine_tuning_can_add_a_full_resolution_skip(disc_data, tmp_path):
    base = tmp_path / "base"
    save_model(base, build_unet(**TINY).eval(), ModelCard(**TINY))
    plain, _ = load_model(base)
    config = tiny_config(disc_data, tmp_path / "out", init_from=base, full_res_skip=4)
    wider, card = build_network(config, base)
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(wider.eval()(x), plain(x), rtol=0, atol=1e-6)  # as the base
    assert card.full_res_skip == 4
    # The added layers learn faster than the rest (they start from zero).
    fresh = added_layer_prefixes(card, base)
    groups = parameter_groups(wider, fresh, 1e-3)
    assert [g.get("lr") for g in groups] == [None, 1e-3 * ADDED_LAYERS_LR_FACTOR]
    assert sum(len(g["params"]) for g in groups) == len(list(wider.parameters()))
    assert added_layer_prefixes(card, None) == []
    result = train_model(config)
    assert (
        result.card.full_res_skip == 4
        and "added or widened for the base" in result.card.training["optimizer"]
    )
    assert load_model(tmp_path / "out")[1].full_res_skip == 4
    # --resume after the base model itself gained the skip: its optimizer no longer fits.
    save_model(base, *load_model(tmp_path / "out"))
    with pytest.raises(AmsegError, match="changed since the interrupted run"):
        train_model(
            tiny_config(
                disc_data, tmp_path / "out", init_from=base, full_res_skip=4, epochs=2, resume=True
            )
        )
    # A base that has a skip of another width is refused; not asking keeps the base's own.
    with pytest.raises(AmsegError, match="full-resolution skip of 4"):
        build_network(tiny_config(disc_data, tmp_path / "x", full_res_skip=8), tmp_path / "out")
    assert (
        build_network(tiny_config(disc_data, tmp_path / "x"), tmp_path / "out")[1].full_res_skip
        == 4
    )


def test_dropping_the_shipped_models_skip_trains_from_random_weights(tmp_path, monkeypatch):
    shipped = tmp_path / "weights" / "default"
    save_model(shipped, build_unet(**TINY, full_res_skip=4), ModelCard(**TINY, full_res_skip=4))
    monkeypatch.setattr("model.training.DEFAULT_MODEL_DIR", shipped)
    for asked, expected in [(None, shipped), (4, shipped), (0, None), (8, None)]:
        base, note = choose_base_model(TrainConfig(data=tmp_path, full_res_skip=asked))
        assert base == expected, (asked, note)
    # A plain shipped model can be widened.
    save_model(shipped, build_unet(**TINY), ModelCard(**TINY))
    assert choose_base_model(TrainConfig(data=tmp_path, full_res_skip=8))[0] == shipped
