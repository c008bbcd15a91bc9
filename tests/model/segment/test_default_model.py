"""The shipped default model: loads offline, segments synthetic and real marks."""

import dataclasses

import cv2
import numpy as np
import pytest

from model.image.io import read_image
from model.metrics import dice
from model.segment.card import DEFAULT_MODEL_DIR, WEIGHTS_FILE
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.single_pass import SegmentOptions
from model.synth.slide import generate_slide
from model.synth.styles import random_spec

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / WEIGHTS_FILE).is_file(), reason="no default model shipped"
)


@pytest.fixture(scope="module")
def segmenter() -> TorchSegmenter:
    return TorchSegmenter.from_model_dir()


def test_weights_are_small_enough_to_ship():
    assert (DEFAULT_MODEL_DIR / WEIGHTS_FILE).stat().st_size <= 25 * 1024 * 1024


@pytest.mark.parametrize("seed", [910_001, 910_002])
def test_segments_an_unseen_synthetic_slide(segmenter, seed):
    spec = random_spec(seed, height=768, width=768, mark_size=24.0, bit_depth=16)
    slide = generate_slide(spec, seed)
    mask = predict_image(slide.image, segmenter, SegmentOptions(tile_size=512, scale=1.0)).mask
    assert mask.shape == slide.mask.shape
    assert dice(mask, slide.mask) > 0.8


def test_finds_the_marks_of_the_real_crop_and_nothing_where_there_are_none(segmenter, real_crops):
    path = next(p for p in real_crops if p.name == "source_small.png")
    image = read_image(path)
    mask = predict_image(image, segmenter, SegmentOptions(tile_size=512)).mask
    _, _, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    marks = [c for c, s in zip(centroids[1:], stats[1:], strict=True) if s[cv2.CC_STAT_AREA] > 60]
    # About 20 crescents, all in the right half (x > ~290 px); the left half has none.
    assert 17 <= len(marks) <= 26
    assert all(x > 260 for x, _ in marks)
    assert mask[:, :250].sum() < 50


@pytest.mark.slow
@pytest.mark.parametrize("level", ["black", "white"])
def test_a_padded_border_does_not_change_the_marks(segmenter, level):
    """Stitched mosaics come padded. A white border once cost bright marks most of their mask
    (Dice 0.39 over 16 slides), a black one put marks in the padding; now neither does."""
    spec = random_spec(910_003, height=768, width=768, mark_size=20.0, bit_depth=16)
    slide = generate_slide(dataclasses.replace(spec, polarity="bright"), 910_003)
    value = 0 if level == "black" else np.iinfo(slide.image.dtype).max
    padded = np.full((1100, 1000), value, slide.image.dtype)
    padded[200:968, 150:918] = slide.image
    options = SegmentOptions(tile_size=512)
    expected = predict_image(slide.image, segmenter, options).mask
    got = predict_image(padded, segmenter, options).mask
    assert dice(got[200:968, 150:918], expected) > 0.99
    assert got.sum() == got[200:968, 150:918].sum()  # nothing in the padding
