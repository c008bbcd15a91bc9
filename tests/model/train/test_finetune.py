"""`amseg finetune`: masked loss, label checks, held-out blocks, a tiny fine-tune end to end,
the grid's pseudo-labels and the command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import model.cli.finetune  # noqa: F401  registers the command
from model.cli.app import app
from model.errors import AmsegError
from model.image.io import read_image, write_png
from model.metrics import dice_counts, dice_from_counts
from model.segment.card import ModelCard, read_card
from model.segment.network import build_from_card, load_model, save_model
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.runtime import (
    INT8_DICE_DROP_METRIC,
    INT8_DICE_METRIC,
    RuntimeChoice,
    cpu_int8_faster,
    int8_check_passed,
    nncf_available,
    openvino_available,
)
from model.segment.shipped_ir import shipped_ir
from model.segment.single_pass import SegmentOptions
from model.train.finetune import FinetuneOptions, finetune, make_learner, masked_loss
from model.train.finetune_job import FinetuneJob
from model.train.finetune_labels import (
    BACKGROUND,
    MARK,
    UNLABELLED,
    prepare_image,
    split_held_out,
)
from model.train.grid_labels import finetune_from_grid, labels_from_grid
from model.train.run_finetune import run_job
from model.train.tuned_ir import record_int8_check
from store.blobs import MODEL_IR, MODEL_IR_INT8
from tests.model.scenes import disc_grid_scene
from tests.test_lean_install import amseg, run_lean

TINY = {"encoder": "resnet18", "decoder_channels": (16, 8, 8, 8, 8), "tile_size": 128}
# Steps, not the clock, decide how much a fine-tune learns: the same work on a busy machine.
FAST = FinetuneOptions(
    crop_size=64, batch_size=4, lr=3e-3, steps=30, eval_every=5, patience=1000, min_final_steps=6,
    threads=1,
)  # fmt: skip
TORCH = RuntimeChoice(backend="torch", precision="fp32", device="cpu", threads=1)
runner = CliRunner()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AMSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "amseg-cache"))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny U-Net with random weights: it knows nothing about marks."""
    torch.manual_seed(0)
    card = ModelCard(**TINY)
    return save_model(tmp_path_factory.mktemp("tiny-base"), build_from_card(card), card)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    """Bright discs on a textured background, 6 x 8 grid: (uint8 image, bool truth)."""
    image, ids = disc_grid_scene(rows=6, cols=8, pitch=50, radius=10, margin=30, seed=3)
    return image, ids > 0


def top_half_labels(truth: np.ndarray) -> np.ndarray:
    labels = np.full(truth.shape, UNLABELLED, np.uint8)
    half = truth.shape[0] // 2
    labels[:half] = np.where(truth[:half], MARK, BACKGROUND)
    return labels


def predicted_mask(model_dir: Path, image: np.ndarray) -> np.ndarray:
    segmenter = TorchSegmenter.from_model_dir(model_dir, runtime=TORCH)
    options = SegmentOptions(tile_size=128, overlap=32, batch_size=4, scale=1.0)
    return predict_image(image, segmenter, options).mask


@pytest.fixture(scope="module")
def tuned(base_dir, scene, tmp_path_factory):
    image, truth = scene
    out = tmp_path_factory.mktemp("tuned") / "model"
    events = []
    result = finetune(
        [image], [top_half_labels(truth)], out, base=base_dir, minutes=10, device="cpu",
        on_progress=events.append, options=FAST,
    )  # fmt: skip
    return result, events


# --------------------------------------------------------------------------------------------
# The loss sees labelled pixels only


def test_masked_loss_gives_unlabelled_pixels_no_gradient_and_no_say():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 16, 16, generator=generator, requires_grad=True)
    target = (torch.rand(2, 16, 16, generator=generator) > 0.7).to(torch.uint8)
    weight = torch.zeros(2, 16, 16, dtype=torch.uint8)
    weight[:, :8] = 1
    for loss_name in ("bce-lovasz", "bce-dice"):
        loss = masked_loss(logits, target, weight, loss_name)
        (gradient,) = torch.autograd.grad(loss, logits)
        assert gradient[:, 8:].abs().max() == 0
        assert gradient[:, :8].abs().max() > 0
        other_logits = logits.detach().clone()
        other_logits[:, 8:] = 50.0  # anything at all where nothing is labelled
        other_target = target.clone()
        other_target[:, 8:] = 1 - other_target[:, 8:]
        again = masked_loss(other_logits, other_target, weight, loss_name)
        assert again.item() == pytest.approx(loss.item(), abs=1e-6)


def test_masked_loss_of_nothing_labelled_is_zero_with_a_graph():
    logits = torch.randn(1, 8, 8, requires_grad=True)
    loss = masked_loss(logits, torch.ones(1, 8, 8), torch.zeros(1, 8, 8))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().max() == 0


# --------------------------------------------------------------------------------------------
# Bad labels are refused with a message that says what to do


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m[:-1], "a label mask must have the image's size"),
        (lambda m: np.where(m == MARK, 254, m).astype(np.uint8), "254 ("),
        (lambda m: np.where(m == MARK, 1, 0).astype(np.uint8), "a 0/1 mask? marks must be 255"),
        (lambda m: np.dstack([m, m, np.zeros_like(m)]), "in colour"),
        (lambda m: np.full_like(m, UNLABELLED), "nothing is labelled"),
        (lambda m: np.where(m == MARK, BACKGROUND, m).astype(np.uint8), "no mark is labelled"),
        (lambda m: np.where(m == BACKGROUND, MARK, m).astype(np.uint8), "no background"),
    ],
)
def test_bad_label_masks_are_refused_clearly(scene, tmp_path, change, message):
    image, truth = scene
    with pytest.raises(AmsegError, match=None) as caught:
        finetune([image], [change(top_half_labels(truth))], tmp_path / "out", minutes=0.1)
    assert message in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_images_and_masks_must_pair_up(scene, tmp_path):
    image, truth = scene
    with pytest.raises(AmsegError, match="one label mask per image"):
        finetune([image, image], [top_half_labels(truth)], tmp_path / "out")


# --------------------------------------------------------------------------------------------
# Held-out blocks


def test_held_out_blocks_take_a_fifth_of_the_labels_with_marks_and_background(scene):
    image, truth = scene
    items = [prepare_image(image, top_half_labels(truth), "scene")]
    labelled = items[0].train.copy()
    assert split_held_out(items, 0.2, 1 << 20, np.random.default_rng(0))
    train, held = items[0].train, items[0].held_out
    assert not (train & held).any() and ((train | held) == labelled).all()
    assert 0.1 <= held.sum() / labelled.sum() <= 0.35
    target = items[0].target.astype(bool)
    assert (held & target).any() and (held & ~target).any() and (train & target).any()


def test_nothing_is_held_out_when_the_only_mark_cannot_be_split(scene):
    image, _ = scene
    labels = np.full(image.shape, UNLABELLED, np.uint8)
    labels[:40, :40] = BACKGROUND
    labels[20:24, 20:24] = MARK
    items = [prepare_image(image, labels, "scene")]
    assert not split_held_out(items, 0.2, 1 << 20, np.random.default_rng(0))
    assert not items[0].held_out.any()


# --------------------------------------------------------------------------------------------
# A tiny fine-tune end to end


def test_finetune_beats_its_base_on_held_out_and_unseen_pixels(tuned, base_dir, scene):
    result, _ = tuned
    image, truth = scene
    assert result.held_out_dice > result.held_out_dice_base + 0.2
    unseen = np.zeros(truth.shape, bool)
    unseen[truth.shape[0] // 2 :] = True
    before = dice_from_counts(dice_counts(predicted_mask(base_dir, image), truth, unseen))
    after = dice_from_counts(dice_counts(predicted_mask(result.out_dir, image), truth, unseen))
    assert after > before + 0.2 and after > 0.6, (before, after)


def test_finetune_learns_what_it_was_shown_held_out_blocks_included(tuned, base_dir, scene):
    result, _ = tuned
    image, truth = scene
    labelled = top_half_labels(truth) != UNLABELLED
    shown = dice_from_counts(dice_counts(predicted_mask(result.out_dir, image), truth, labelled))
    assert result.labelled_dice > result.labelled_dice_base + 0.2
    assert shown > 0.8 and result.labelled_dice > 0.8, (shown, result.labelled_dice)


def test_steps_then_a_last_pass_on_all_labels_with_progress(tuned):
    result, events = tuned
    # 30 steps (none stops early: patience 1000), then a last pass of max(6, 30 / 2) steps.
    assert result.steps == 30 + 15 and result.stopped == "step count"
    assert [e.step for e in events] == list(range(1, 46))
    assert all(e.total == 45 for e in events)
    assert events[-1].remaining_s == 0.0 and events[0].remaining_s > 0.0
    assert result.history[-1]["last_pass_steps"] == 15


def test_the_same_labels_give_the_same_model_however_busy_the_machine(base_dir, scene, tmp_path):
    image, truth = scene
    options = replace(FAST, steps=8, eval_every=4, min_final_steps=2)
    states = []
    for name in ("a", "b"):
        finetune([image], [top_half_labels(truth)], tmp_path / name, base=base_dir, minutes=10,
                 device="cpu", options=options)  # fmt: skip
        states.append(load_model(tmp_path / name)[0].state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_the_time_budget_caps_the_steps(base_dir, scene, tmp_path):
    image, truth = scene
    result = finetune([image], [top_half_labels(truth)], tmp_path / "m", base=base_dir,
                      minutes=1e-6, device="cpu", options=FAST)  # fmt: skip
    assert result.steps < 30 and result.stopped.startswith("time budget")
    assert load_model(tmp_path / "m")[1].training["stopped"] == result.stopped


def test_finetuned_directory_is_a_model_with_a_card_that_says_how(tuned, base_dir):
    result, _ = tuned
    network, card = load_model(result.out_dir)
    base_network, base_card = load_model(base_dir)
    assert (card.encoder, card.tile_size, card.threshold) == ("resnet18", 128, base_card.threshold)
    assert card.training["kind"] == "finetune" and card.training["base"] == str(base_dir)
    assert card.training["steps"] == result.steps > 0
    assert card.training["stopped"] == "step count" and card.training["minutes"] == 10
    assert card.training["planned_steps"] == 30
    assert card.data["finetuned_on"][0]["image"] == "image 1"
    assert card.metrics["held_out_dice"] == round(result.held_out_dice, 4)
    assert card.metrics["labelled_dice"] == round(result.labelled_dice, 4)
    json.dumps(card.training)  # the card stays plain JSON
    # The encoder was frozen, and every BatchNorm kept its statistics.
    tuned_state, base_state = network.state_dict(), base_network.state_dict()
    encoder = [k for k in base_state if k.startswith("encoder.")]
    assert all(torch.equal(tuned_state[k], base_state[k]) for k in encoder)
    running = [k for k in base_state if "running_" in k and not k.startswith("encoder.")]
    assert running and all(torch.equal(tuned_state[k], base_state[k]) for k in running)
    assert not all(torch.equal(tuned_state[k], base_state[k]) for k in base_state)


def test_encoder_frozen_or_at_a_tenth_of_the_learning_rate(base_dir):
    network = load_model(base_dir)[0]
    cpu = torch.device("cpu")
    encoder = {id(p) for p in network.encoder.parameters()}
    frozen = make_learner(network, FinetuneOptions(encoder="frozen", lr=1e-3), cpu, 10).optimizer
    assert [g["initial_lr"] for g in frozen.param_groups] == [1e-3]
    assert not any(id(p) in encoder for p in frozen.param_groups[0]["params"])
    assert not any(p.requires_grad for p in network.encoder.parameters())
    low = make_learner(network, FinetuneOptions(encoder="low-lr", lr=1e-3), cpu, 10).optimizer
    assert [g["initial_lr"] for g in low.param_groups] == [1e-3, pytest.approx(1e-4)]
    assert {id(p) for p in low.param_groups[1]["params"]} == encoder
    assert all(p.requires_grad for p in network.encoder.parameters())
    with pytest.raises(AmsegError, match="unknown encoder mode"):
        FinetuneOptions(encoder="thawed").check()


# --------------------------------------------------------------------------------------------
# Label-free: the grid's pseudo-labels


def grid_probabilities() -> tuple[np.ndarray, dict]:
    """Probabilities of a 6 x 8 grid (pitch 40, discs of radius 7, origin (30, 30)) with a
    sure mark at every node but (2, 3) (empty) and (4, 5) (unsure: 0.6), a hole in the mark at
    (1, 6), plus a sure blob between nodes (dust) at the centre of cell (1, 1)-(2, 2)."""
    height, width = 30 * 2 + 5 * 40, 30 * 2 + 7 * 40
    probabilities = np.zeros((height, width), np.float32)
    places = {}
    for row in range(6):
        for col in range(8):
            centre = (30 + 40 * col, 30 + 40 * row)
            places[row, col] = centre
            if (row, col) == (2, 3):
                continue
            value = 0.6 if (row, col) == (4, 5) else 0.97
            cv2.circle(probabilities, centre, 7, value, -1)
            if (row, col) == (1, 6):
                cv2.circle(probabilities, centre, 2, 0.0, -1)  # a mark with a hole
    dust = (30 + 40 + 20, 30 + 40 + 20)
    cv2.circle(probabilities, dust, 5, 0.97, -1)
    places["dust"] = dust
    return probabilities, places


def test_labels_from_grid_marks_sure_nodes_and_the_matrix_between_them():
    probabilities, places = grid_probabilities()
    grid = labels_from_grid(probabilities, rows=6, cols=8, threshold=0.45)
    labels = grid.labels

    def at(key):
        x, y = places[key]
        return labels[y, x]

    assert grid.marks == 47 and grid.sure_marks == 46 and grid.off_grid == 1
    assert grid.pitch_px == pytest.approx(40, abs=0.5)
    assert at((0, 0)) == at((5, 7)) == at((3, 4)) == MARK
    assert at((1, 6)) == MARK  # marks are solid: the hole is filled
    assert at((4, 5)) == UNLABELLED  # unsure: left to the network
    assert at((2, 3)) == UNLABELLED  # an empty node may hold a mark the model missed
    assert at("dust") == BACKGROUND  # a blob off the grid is not a mark
    x, y = places[(3, 3)]
    assert labels[y + 20, x + 20] == BACKGROUND  # between nodes, far from everything
    assert labels[y, x + 8] == UNLABELLED  # the rim of a mark
    assert (cv2.dilate(probabilities, np.ones((5, 5)))[labels == MARK] > 0.9).all()  # on discs
    assert (labels == BACKGROUND).mean() > 0.4


def test_labels_from_grid_needs_marks_on_the_grid():
    with pytest.raises(AmsegError, match="no foreground"):
        labels_from_grid(np.zeros((100, 100), np.float32), 3, 3)


def test_label_free_rounds_tune_from_the_grid(tuned, scene, tmp_path, monkeypatch):
    # Eager torch: an OpenVINO export of each round's model would eat the small budget.
    monkeypatch.setattr("model.segment.runtime.openvino_available", lambda: False)
    result, _ = tuned
    image, _ = scene
    rounds = finetune_from_grid(
        image, 6, 8, tmp_path / "free", base=result.out_dir, minutes=10, rounds=2,
        device="cpu", options=replace(FAST, steps=10),
    )  # fmt: skip
    assert len(rounds) == 2 and all(r.result is not None for r in rounds)
    assert rounds[0].grid.sure_marks >= 30
    card = load_model(tmp_path / "free")[1]
    assert card.training["base"] == str(result.out_dir)
    assert card.training["label_free"]["grid"] == [6, 8]
    assert len(card.training["label_free"]["rounds"]) == 2


# --------------------------------------------------------------------------------------------
# The command


def test_cli_finetunes_and_reports(base_dir, scene, tmp_path):
    image, truth = scene
    write_png(tmp_path / "slide.png", image)
    write_png(tmp_path / "labels.png", top_half_labels(truth))
    out = tmp_path / "model"
    args = ["finetune", "--image", tmp_path / "slide.png", "--mask", tmp_path / "labels.png",
            "-o", out, "--model", base_dir, "--minutes", "0.1", "--device", "cpu",
            "--threads", "1"]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    text = " ".join(result.output.split())
    assert "done:" in text and "held-out Dice" in text and str(out) in text
    card = load_model(out)[1]
    assert card.data["finetuned_on"][0]["image"] == str(tmp_path / "slide.png")
    if nncf_available():  # the int8 check in words, as the card records it
        verdict = "passed" if int8_check_passed(card.metrics) else "did not pass"
        assert f"int8 {verdict} its check" in text
        assert f"Dice {card.metrics[INT8_DICE_METRIC]:.4f}" in text


def test_cli_makes_no_int8_network_when_told_not_to(base_dir, scene, tmp_path):
    image, truth = scene
    write_png(tmp_path / "slide.png", image)
    write_png(tmp_path / "labels.png", top_half_labels(truth))
    args = ["finetune", "--image", tmp_path / "slide.png", "--mask", tmp_path / "labels.png",
            "-o", tmp_path / "m", "--model", base_dir, "--minutes", "0.1", "--device", "cpu",
            "--threads", "1", "--no-int8"]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "int8 " not in result.output
    assert INT8_DICE_METRIC not in read_card(tmp_path / "m").metrics
    assert not (tmp_path / "m" / "openvino" / "int8").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask", "{small}"], "a label mask must have the image's size"),
        (["--rows", "6"], "give both the grid's rows and columns"),
        (["--mask", "{small}", "--rows", "6", "--cols", "8"], "not both"),
        ([], "give one --mask per --image"),
    ],
)
def test_cli_explains_bad_input(scene, tmp_path, extra, message):
    image, _ = scene
    write_png(tmp_path / "slide.png", image)
    write_png(tmp_path / "small.png", np.zeros((10, 10), np.uint8))
    extra = [e.format(small=tmp_path / "small.png") for e in extra]
    args = ["finetune", "--image", str(tmp_path / "slide.png"), "-o", str(tmp_path / "m"), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


# --------------------------------------------------------------------------------------------
# One job, asked for the same way by the command, POST /models and the worker


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (FinetuneJob(rows=6), "give both the grid's rows and columns"),
        (FinetuneJob(labelled=False), "learns from the grid: give its rows and columns"),
        (FinetuneJob(minutes=0), "the time budget must be positive"),
        (FinetuneJob(labelled=False, rows=2, cols=2, rounds=0), "rounds must be at least 1"),
    ],
)
def test_a_job_no_fine_tune_can_run_is_refused_in_words(job, message):
    with pytest.raises(AmsegError, match=message):
        job.check()


def test_a_grid_without_sure_marks_is_refused_in_words(base_dir, tmp_path):
    flat = np.full((256, 256), 90, np.uint8)  # no mark anywhere
    job = FinetuneJob(labelled=False, rows=3, cols=3, minutes=10)
    with pytest.raises(AmsegError, match="the grid gave no labels to learn from") as caught:
        run_job(job, [flat], [], tmp_path / "m", base_dir, "cpu", options=FAST)
    assert "label a few boxes by hand" in str(caught.value)


def test_a_labelled_job_summarises_what_it_learnt(base_dir, scene, tmp_path):
    image, truth = scene
    job = FinetuneJob(minutes=10)
    options = replace(FAST, steps=6, eval_every=3, min_final_steps=2, int8=False)
    result, summary = run_job(job, [image], [top_half_labels(truth)], tmp_path / "m", base_dir,
                              "cpu", options=options)  # fmt: skip
    assert summary["mode"] == "labelled" and summary["steps"] == result.steps == 6 + 3
    assert summary["int8_check"] is None  # not asked for
    assert shipped_ir(tmp_path / "m", "int8") is None and shipped_ir(tmp_path / "m", "fp32")
    assert summary["labelled_dice"] == round(result.labelled_dice, 4)
    assert summary["held_out_dice_base"] == round(result.held_out_dice_base, 4)


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed")
def test_a_finished_job_carries_its_ir_and_runs_where_torch_is_not(base_dir, scene, tmp_path):
    """A fine-tune's model directory holds its fp32 OpenVINO IR, so a lean install or slim
    worker (no PyTorch) runs it; its masks are the PyTorch network's. With NNCF it also holds
    the int8 IR, with the check on the labels in its card, as `auto` reads it."""
    image, truth = scene
    options = replace(FAST, steps=6, eval_every=3, min_final_steps=2)
    out = tmp_path / "m"
    _, summary = run_job(FinetuneJob(minutes=10), [image], [top_half_labels(truth)], out,
                         base_dir, "cpu", options=options)  # fmt: skip
    assert shipped_ir(out, "fp32") == out / "openvino" / "fp32" / "model.xml"
    stored = MODEL_IR + (MODEL_IR_INT8 if nncf_available() else ())
    assert all((out / blob.value).is_file() for blob in stored)  # what a fine-tune task stores
    if nncf_available():
        assert shipped_ir(out, "int8") == out / "openvino" / "int8" / "model.xml"
        metrics, check = read_card(out).metrics, summary["int8_check"]
        for key in (INT8_DICE_METRIC, INT8_DICE_DROP_METRIC):  # the card says what was checked
            assert check[key] == metrics[key]
        assert check["passed"] == int8_check_passed(metrics)
        assert 0.0 <= metrics[INT8_DICE_METRIC] <= 1.0 and "labelled" in metrics["int8_check"]
    write_png(tmp_path / "slide.png", image)
    args = ["predict", str(tmp_path / "slide.png"), "-o", str(tmp_path / "lean"), "--model",
            str(out), "--precision", "fp32", "--scale", "1"]  # fmt: skip
    result = run_lean(amseg(*args), tmp_path)
    assert result.returncode == 0, result.stderr
    eager = runner.invoke(app, [*args[:3], str(tmp_path / "eager"), *args[4:], "--backend",
                                "torch"])  # fmt: skip
    assert eager.exit_code == 0, eager.output
    lean, eager = (read_image(tmp_path / run / "slide_mask.png") > 0 for run in ("lean", "eager"))
    assert eager.any() and dice_from_counts(dice_counts(lean, eager)) > 0.99
    if nncf_available() and cpu_int8_faster():
        # A passed check (written here: this tiny net's own may fail) makes `auto` take the
        # model's int8 IR, also where NNCF is not installed.
        record_int8_check(out, {INT8_DICE_METRIC: 0.999, INT8_DICE_DROP_METRIC: 0.0})
        auto = run_lean(amseg(*args[:3], str(tmp_path / "auto"), *args[4:6], "--scale", "1"),
                        tmp_path)  # fmt: skip
        assert auto.returncode == 0, auto.stderr
        said = " ".join((auto.stdout + auto.stderr).split())
        assert "via openvino int8" in said and "shipped IR" in said  # (rich folds long paths)
