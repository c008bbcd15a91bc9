"""Pseudo-labels: confident crops of a predicted group image become training data."""

from __future__ import annotations

import numpy as np
import pytest

from model.image.io import read_image
from model.segment.pitch import SMALL_MARK_SCALE
from model.segment.predict import MISSED_GRID_RETRY_SCALE, count_tiles
from model.segment.single_pass import SegmentOptions
from model.train.pseudo_label import pseudo_label_group, uncertain_fraction


def test_uncertain_fraction_is_exclusive():
    probabilities = np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float32)
    assert uncertain_fraction(probabilities, 0.9) == pytest.approx(0.2)


def test_marks_found_only_on_the_second_look_are_labelled(tmp_path):
    """Pseudo-labels come from predict_image: marks too small for the segmenter at full
    resolution are found enlarged, not written as confident background."""
    from model.dataset.layout import DatasetLayout
    from model.image.io import write_png
    from tests.model.scenes import SmallMarkBlindSegmenter, disc_grid_scene

    image, labels = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    (tmp_path / "ds" / "source" / "g1").mkdir(parents=True)
    write_png(tmp_path / "ds" / "source" / "g1" / "slide.png", image)
    blind = SmallMarkBlindSegmenter()

    result = pseudo_label_group(
        DatasetLayout(tmp_path / "ds"),
        "g1",
        blind,
        tmp_path / "train",
        crop_size=128,
        tile_size=128,
        min_confidence=0.6,
        max_uncertain=1.0,
        accurate=False,  # the second look, not the accurate policy, must find them here
    )

    assert result.kept == result.crops and result.kept_with_marks > 0
    masks = [read_image(p) > 0 for p in sorted((result.directory / "mask").glob("*.png"))]
    assert sum(int(m.sum()) for m in masks) > 0.5 * int((labels > 0).sum())


def test_a_group_is_segmented_with_the_policy_asked_for(tmp_path):
    from model.dataset.layout import DatasetLayout
    from model.image.io import write_png
    from tests.model.scenes import SmallMarkBlindSegmenter, disc_grid_scene

    image, _ = disc_grid_scene(rows=8, cols=9, pitch=36, radius=7)
    (tmp_path / "ds" / "source" / "g1").mkdir(parents=True)
    write_png(tmp_path / "ds" / "source" / "g1" / "slide.png", image)
    passes = []

    class Recording(SmallMarkBlindSegmenter):
        def predict_batch(self, tiles):
            passes.append(tiles.shape[0])
            return super().predict_batch(tiles)

    tiles = {}
    for accurate in (True, False):
        passes.clear()
        pseudo_label_group(
            DatasetLayout(tmp_path / "ds"), "g1", Recording(), tmp_path / "train",
            crop_size=128, tile_size=128, accurate=accurate,
        )  # fmt: skip
        tiles[accurate] = sum(passes)
    # accurate: one pass enlarged; fast: 1x, then the second look (nothing found at 1x)
    options = SegmentOptions(tile_size=128)
    assert tiles[True] == count_tiles(image.shape, options, SMALL_MARK_SCALE)
    assert tiles[False] == count_tiles(image.shape, options) + count_tiles(
        image.shape, options, MISSED_GRID_RETRY_SCALE
    )
