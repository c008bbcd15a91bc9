"""Tests of writing synthetic slides as an inference dataset and as training tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from model.errors import AmsegError
from model.image.io import read_image
from model.synth.slide import generate_slide
from model.synth.writers import write_dataset_layout, write_training_layout
from tests.model.synth.slides import plain_spec


def test_dataset_layout(tmp_path) -> None:
    for group, depth in (("g8", 8), ("g16", 16)):
        slide = generate_slide(plain_spec(bit_depth=depth), 1)
        write_dataset_layout(tmp_path, slide, group=group)
        suffix = "png" if depth == 8 else "tiff"
        source = read_image(tmp_path / "source" / group / f"source.{suffix}")
        assert np.array_equal(source, slide.image)
        truth = tmp_path / "ground_truth" / group
        assert np.array_equal(read_image(truth / "labels.png"), slide.labels)
        mask = np.asarray(Image.open(truth / "mask.png"))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, slide.mask)
        spec = json.loads((truth / "spec.json").read_text())
        assert (spec["rows"], spec["cols"], spec["bit_depth"]) == (4, 4, depth)
    assert sorted(p.name for p in (tmp_path / "source").iterdir()) == ["g16", "g8"]


def test_training_layout_tiles_cover_the_slide(tmp_path) -> None:
    spec = plain_spec(height=700, width=600, rows=10, cols=9)
    slide = generate_slide(spec, 1)
    write_training_layout(tmp_path, slide, split="valid", dataset="syn", group="s0", tile_size=512)
    base = tmp_path / "valid" / "syn" / "s0"
    sources = sorted(p.name for p in (base / "source").glob("*.png"))
    assert sources == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert sorted(p.name for p in (base / "mask").glob("*.png")) == sources
    last = read_image(base / "source" / "0003.png")
    assert np.array_equal(last, slide.image[700 - 512 :, 600 - 512 :])
    mask = read_image(base / "mask" / "0000.png")
    assert np.array_equal(mask == 255, slide.mask[:512, :512])
    with pytest.raises(AmsegError):
        write_training_layout(tmp_path, slide, split="test", dataset="syn", group="s0")
