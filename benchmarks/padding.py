"""Padded images: does a black or white border around the sample change its marks?

Stitched mosaics are padded to a rectangle, rotated images have empty corners, and some
software masks out regions; the padding sits at the darkest or brightest level. Each unseen
synthetic slide (seeds from 900000) is segmented plain and with three kinds of padding, at both
levels: a 200 px frame around it (the canvas grows), triangles over its four corners (as a
rotation leaves), and a ragged strip down its left side (as a mosaic's uneven edge). Printed
per case: pooled Dice of the mask against the truth on the sample, for the plain slide and
the padded one, and how many padding pixels were marked.

    .venv/bin/python benchmarks/padding.py [--slides 16] [--model DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.image.io import to_grayscale
from model.metrics import dice_counts, dice_from_counts
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.single_pass import SegmentOptions
from model.synth.slide import generate_slide
from model.synth.styles import random_spec

FRAME = 200


def padding_shapes(height: int, width: int) -> dict[str, np.ndarray]:
    """Where each case pads, in the padded image's coordinates."""
    frame = np.ones((height + 2 * FRAME, width + 2 * FRAME), bool)
    frame[FRAME : FRAME + height, FRAME : FRAME + width] = False
    rows, cols = np.mgrid[0:height, 0:width]
    corners = (
        (cols + rows < 0.35 * width)
        | ((width - cols) + (height - rows) < 0.35 * width)
        | ((width - cols) + rows < 0.25 * width)
        | (cols + (height - rows) < 0.25 * width)
    )
    strip = np.zeros((height, width), bool)
    for k, reach in enumerate([0, 150, 60, 220, 90, 0, 180, 30]):
        strip[k * height // 8 : (k + 1) * height // 8, :reach] = True
    return {"frame": frame, "corners": corners, "ragged strip": strip}


def pad(gray: np.ndarray, shape: np.ndarray, value: int) -> np.ndarray:
    if shape.shape == gray.shape:
        padded = gray.copy()
        padded[shape] = value
        return padded
    padded = np.full(shape.shape, value, gray.dtype)
    padded[FRAME:-FRAME, FRAME:-FRAME] = gray
    return padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=16)
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: shipped)")
    args = parser.parse_args()

    segmenter = TorchSegmenter.from_model_dir(args.model)
    options = SegmentOptions(tile_size=segmenter.tile_size)
    plain = {}
    padded = {}
    marked_in_padding = {}
    for seed in range(900_000, 900_000 + args.slides):
        slide = generate_slide(random_spec(seed, height=1024, width=1024), seed)
        gray, truth = to_grayscale(slide.image), slide.mask > 0
        reference = predict_image(gray, segmenter, options).mask
        for case, shape in padding_shapes(*gray.shape).items():
            big = shape.shape != gray.shape
            for level in ("black", "white"):
                value = 0 if level == "black" else np.iinfo(gray.dtype).max
                mask = predict_image(pad(gray, shape, value), segmenter, options).mask
                sample = mask[FRAME:-FRAME, FRAME:-FRAME] if big else mask & ~shape
                kept = truth if big else truth & ~shape
                expected = reference if big else reference & ~shape
                key = (case, level)
                plain[key] = plain.get(key, 0) + dice_counts(expected, kept)
                padded[key] = padded.get(key, 0) + dice_counts(sample, kept)
                marked_in_padding[key] = marked_in_padding.get(key, 0) + int(mask[shape].sum())
        print(f"  seed {seed} done", flush=True)

    print(f"{args.slides} slides 1024², {segmenter.describe()}")
    print("| padding | level | Dice, plain slide | Dice, padded | padding px marked |")
    print("|---|---|---|---|---|")
    for key in plain:
        print(
            f"| {key[0]} | {key[1]} | {dice_from_counts(plain[key]):.4f} | "
            f"{dice_from_counts(padded[key]):.4f} | {marked_in_padding[key]} |"
        )


if __name__ == "__main__":
    main()
