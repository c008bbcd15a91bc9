"""Disturbed slides: how much do dust, uneven light, defocus and compression cost the masks?

Each unseen synthetic slide (seeds from 900000, 1024²) is segmented as generated and again
after one disturbance of the kind real slides show; the truth stays the generator's, so a
disturbance that hides marks or adds false ones lowers Dice. Disturbances (gray image, in the
slide's own bit depth, relative to its full scale: 255, or the top of a 16-bit file's signal
bits):

- dust: 40 bright round blobs, 10-50 px across, soft-edged, from the marks' brightness (half
  the range at least) up to saturation, placed clear of every mark (their truth is
  background; a slide packed with marks gets fewer);
- dark dust: the same blobs dark, from the marks' darkness (half the range at most) down to
  black (debris on a bright-field slide, and dust of the marks' polarity on dark-mark slides);
- gain ramp: light falling from 100 % to 35 % across the slide;
- offset ramp: a glow adding up to 30 % of the range across the slide;
- vignette: 45 % darker in the corners;
- defocus 1.5 / 2.5: a Gaussian blur of that sigma (px) over the slide's own blur;
- half resolution: shot at half the resolution and enlarged back;
- JPEG 40: 8-bit JPEG at quality 40.

Printed: pooled Dice per disturbance, and the pixels marked inside the blobs of each dust.

    .venv/bin/python benchmarks/robustness.py [--slides 16] [--model DIR] [--cases a,b]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.image.io import to_grayscale
from model.metrics import dice_counts, dice_from_counts
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.single_pass import SegmentOptions
from model.synth.slide import generate_slide
from model.synth.styles import random_spec

DUST_BLOBS = 40
DUST_ATTEMPTS = 20_000  # a slide packed with marks may have room for fewer blobs


def full_scale(slide) -> float:
    """The slide's saturation level: 255, or the top of its sensor's bits in 16-bit files."""
    return 255.0 if slide.spec.bit_depth == 8 else float((1 << slide.spec.signal_bits) - 1)


def _as_dtype(values: np.ndarray, like: np.ndarray, top: float) -> np.ndarray:
    return np.clip(np.rint(values), 0, top).astype(like.dtype)


def _ramp(shape: tuple[int, int]) -> np.ndarray:
    """0 at the left edge to 1 at the right, as float32 rows."""
    return np.broadcast_to(np.linspace(0.0, 1.0, shape[1], dtype=np.float32), shape)


def _vignette(shape: tuple[int, int], depth: float) -> np.ndarray:
    ys, xs = np.ogrid[-1.0 : 1.0 : shape[0] * 1j, -1.0 : 1.0 : shape[1] * 1j]
    return (1.0 - depth * (ys**2 + xs**2) / 2.0).astype(np.float32)


def dust(
    gray: np.ndarray, truth: np.ndarray, top: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The slide with the blobs, and the blob pixels that came out brighter than before."""
    bright = float(np.percentile(gray[truth], 90)) if truth.any() else top
    clear = cv2.distanceTransform((~truth).astype(np.uint8), cv2.DIST_L2, 5)
    layer = np.zeros(gray.shape, np.float32)
    placed = 0
    for _ in range(DUST_ATTEMPTS):
        if placed == DUST_BLOBS:
            break
        radius = rng.uniform(5.0, 25.0)
        y, x = int(rng.integers(0, gray.shape[0])), int(rng.integers(0, gray.shape[1]))
        if clear[y, x] < radius + 5:  # the blurred rim (sigma 1) stays off the marks
            continue
        disc = np.zeros(gray.shape, np.float32)
        cv2.circle(disc, (x, y), round(radius), 1.0, -1)
        level = rng.uniform(max(bright, 0.5 * top), top)
        layer = np.maximum(layer, cv2.GaussianBlur(disc, (0, 0), 1.0) * np.float32(level))
        placed += 1
    dusty = _as_dtype(np.maximum(gray.astype(np.float32), layer), gray, top)
    return dusty, (layer > 0.5 * bright) & (dusty > gray)


def dark_dust(
    gray: np.ndarray, truth: np.ndarray, top: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`dust` of the negative: dark blobs, and the blob pixels that came out darker."""
    inverted = _as_dtype(top - gray.astype(np.float32), gray, top)
    dusty, blobs = dust(inverted, truth, top, rng)
    return _as_dtype(top - dusty.astype(np.float32), gray, top), blobs


DUSTS = {"dust": dust, "dark dust": dark_dust}


def disturbances() -> dict[str, Callable[[np.ndarray, float], np.ndarray]]:
    """Name -> f(gray, full scale) for every case but the dusts."""

    def blur(sigma: float) -> Callable[[np.ndarray, float], np.ndarray]:
        return lambda g, top: _as_dtype(
            cv2.GaussianBlur(g.astype(np.float32), (0, 0), sigma), g, top
        )

    def half_resolution(g: np.ndarray, top: float) -> np.ndarray:
        small = cv2.resize(g.astype(np.float32), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        return _as_dtype(cv2.resize(small, g.shape[::-1], interpolation=cv2.INTER_LINEAR), g, top)

    return {
        "gain ramp": lambda g, top: _as_dtype(g * (1.0 - 0.65 * _ramp(g.shape)), g, top),
        "offset ramp": lambda g, top: _as_dtype(g + 0.3 * top * _ramp(g.shape), g, top),
        "vignette": lambda g, top: _as_dtype(g * _vignette(g.shape, 0.45), g, top),
        "defocus 1.5": blur(1.5),
        "defocus 2.5": blur(2.5),
        "half resolution": half_resolution,
        "JPEG 40": lambda g, top: _jpeg(g, top, 40),
    }


def _jpeg(gray: np.ndarray, top: float, quality: int) -> np.ndarray:
    """8-bit JPEG of the slide's full range (a 16-bit slide comes back as 8 bits)."""
    as_u8 = np.clip(np.rint(gray * (255.0 / top)), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", as_u8, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=16)
    parser.add_argument("--first-seed", type=int, default=900_000)
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: shipped)")
    parser.add_argument("--cases", default=None, help="comma-separated (default: all)")
    args = parser.parse_args()

    others = disturbances()
    cases = [*DUSTS, *others]
    if args.cases:
        chosen = [c.strip() for c in args.cases.split(",")]
        unknown = sorted(set(chosen) - set(cases))
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(cases)}")
        cases = chosen
    segmenter = TorchSegmenter.from_model_dir(args.model)
    options = SegmentOptions(tile_size=segmenter.tile_size)
    counts = {"none": np.zeros(3, np.int64)} | {c: np.zeros(3, np.int64) for c in cases}
    marked_on_blobs = {d: 0 for d in DUSTS if d in cases}
    blob_pixels = dict.fromkeys(marked_on_blobs, 0)
    for seed in range(args.first_seed, args.first_seed + args.slides):
        slide = generate_slide(random_spec(seed, height=1024, width=1024), seed)
        gray, truth, top = to_grayscale(slide.image), slide.mask > 0, full_scale(slide)
        counts["none"] += dice_counts(predict_image(gray, segmenter, options).mask, truth)
        for case in cases:
            if case in DUSTS:
                disturbed, blobs = DUSTS[case](gray, truth, top, np.random.default_rng(seed))
            else:
                disturbed = others[case](gray, top)
            mask = predict_image(disturbed, segmenter, options).mask
            counts[case] += dice_counts(mask, truth)
            if case in DUSTS:
                marked_on_blobs[case] += int(np.count_nonzero(mask & blobs))
                blob_pixels[case] += int(np.count_nonzero(blobs))
        print(f"  seed {seed} done", flush=True)

    print(f"{args.slides} slides 1024² from seed {args.first_seed}, {segmenter.describe()}")
    print("| disturbance | pooled Dice |")
    print("|---|---|")
    for case, total in counts.items():
        print(f"| {case} | {dice_from_counts(total):.4f} |")
    for case, marked in marked_on_blobs.items():
        share = marked / max(blob_pixels[case], 1)
        print(f"{case} blob pixels marked as marks: {marked} of {blob_pixels[case]} ({share:.1%})")


if __name__ == "__main__":
    main()
