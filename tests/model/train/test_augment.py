"""Disturbances of training crops: dust beside the marks, uneven light, any mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from model.image.io import write_png
from model.train.augment import _add_dust, _uneven_light, disturb_crop
from model.train.data import load_sample, marks_are_dark
from tests.model.train.discs import disc_crop


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


def test_uneven_light_is_a_ramp_within_the_stated_bounds():
    flat = np.full((64, 64), 0.5, np.float32)
    for seed in range(10):
        out = _uneven_light(flat, np.random.default_rng(seed))
        assert out.min() >= 0.5 * 0.35 - 1e-6 and out.max() <= 0.5 + 0.3 + 1e-6
        # A plane: second differences along both axes vanish.
        assert np.abs(np.diff(out, 2, axis=0)).max() < 1e-4
        assert np.abs(np.diff(out, 2, axis=1)).max() < 1e-4


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
