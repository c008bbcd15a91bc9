"""Training data: clear errors, missing masks, held-out validation, epoch plans, zoom ranges."""

from __future__ import annotations

import numpy as np
import pytest

from model.errors import AmsegError
from model.image.io import write_png
from model.train.config import TrainConfig
from model.train.data import load_training_data, plan_epoch, zoom_range


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
