"""What `amseg finetune` gains on slides of styles the shipped model never saw: Dice of the base
and of the fine-tuned model on the part of each slide that no labelled box touched.

    PYTHONPATH=. .venv/bin/python benchmarks/finetune_gain.py [--styles darkfill,grain]
        [--slides 2] [--size 1536] [--boxes 1,2,4] [--minutes 5] [--label-free] [--halves 250]
        [--encoder frozen|low-lr] [--loss bce-lovasz|bce-dice] [--crop 256] [--batch 4]
        [--lr 2e-3] [--steps N] [--json out.json] [--overlays /tmp]

Each slide is labelled in 512² boxes at its corners (1 box: top-left; 2: top-left and
bottom-right; 4: all corners) from its truth, the rest 128; every configuration is scored on
the same unseen area (outside all four corner boxes). `--label-free` adds the grid mode
(`finetune_from_grid` with the slide's rows x cols, 2 rounds), which sees no labels at all.
`--halves 250,512` adds the issue's protocol on a crop of that size from the slide's centre,
the crop being all there is: its top half labelled, Dice on its bottom half.
Predictions run as `amseg predict` runs them (auto scale, second looks, OpenVINO), with a
temporary export cache (AMSEG_CACHE_DIR) so that the tuned models' exports do not pile up.

Styles (seeds from 960000, far from training seeds):
- darkfill: filled mid-grey blobs with a darker outline on a bright, fibrous matrix (the real
  dark-mark slides of issue 28), made from a generated slide's truth and matrix;
- grain: bright marks on a coarse, high-contrast grain (grain 3 px, texture contrast 0.8);
- dark-mottled: the generator's own dark marks on its mottled matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from model.image.normalize import normalize_intensity, to_uint8
from model.metrics import dice_counts, dice_from_counts
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.runtime import RuntimeChoice
from model.segment.single_pass import SegmentOptions
from model.synth.slide import generate_slide
from model.synth.styles import random_spec
from model.train.finetune import FinetuneOptions, finetune
from model.train.grid_labels import finetune_from_grid

BOX = 512
THREADS = None  # --threads


def dark_filled(slide, rng: np.random.Generator) -> np.ndarray:
    """The slide redrawn as mid-grey filled marks with a darker outline on a bright matrix
    (the inverted matrix of the generated slide, rescaled to a bright, moderate texture)."""
    inside = slide.mask
    matrix = 1.0 - normalize_intensity(slide.image)
    q1, q2, q3 = np.percentile(matrix[~inside], [25, 50, 75])
    matrix = 0.72 + rng.uniform(0.06, 0.12) * (matrix - q2) / max(q3 - q1, 1e-3)
    depth = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3)
    grain = cv2.GaussianBlur(rng.standard_normal(inside.shape).astype(np.float32), (0, 0), 1.5)
    fill = rng.uniform(0.4, 0.52) + 0.09 * grain
    ring = np.exp(-(((depth - 1.5) / 1.3) ** 2)).astype(np.float32)
    marks = fill * (1 - ring) + rng.uniform(0.12, 0.25) * ring
    image = cv2.GaussianBlur(np.where(inside, marks, matrix).astype(np.float32), (0, 0), 0.8)
    image += 0.02 * rng.standard_normal(inside.shape).astype(np.float32)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def make_slide(style: str, seed: int, size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(image, truth, rows, cols) of one slide of `style`; the grid spans the slide."""
    rng = np.random.default_rng(seed)
    if style == "darkfill":
        mark = float(rng.uniform(24, 38))
        extra = {"shape": str(rng.choice(["blob", "ellipse"])), "background": "smooth",
                 "ridge_strength": 0.8, "texture_contrast": 0.35, "contrast": 0.9}  # fmt: skip
    elif style == "grain":
        mark = float(rng.uniform(18, 30))
        extra = {"grain_size": 3.0, "texture_contrast": 0.8}
    elif style == "dark-mottled":
        mark = float(rng.uniform(14, 30))
        extra = {"polarity": "dark", "background": "mottled"}
    else:
        raise SystemExit(f"unknown style {style!r}")
    n = round(size / (mark * rng.uniform(2.0, 2.8)))
    spec = random_spec(
        seed, height=size, width=size, rows=n, cols=n, mark_size=mark,
        low_contrast_fraction=0.0, **extra,
    )  # fmt: skip
    slide = generate_slide(spec, seed)
    image = dark_filled(slide, rng) if style == "darkfill" else slide.image
    return image, slide.mask, n, n


def corner_boxes(size: int) -> list[tuple[slice, slice]]:
    far = size - BOX
    corners = [(0, 0), (far, far), (0, far), (far, 0)]
    return [(slice(y, y + BOX), slice(x, x + BOX)) for y, x in corners]


def box_labels(truth: np.ndarray, boxes: list[tuple[slice, slice]]) -> np.ndarray:
    labels = np.full(truth.shape, 128, np.uint8)
    for box in boxes:
        labels[box] = np.where(truth[box], 255, 0)
    return labels


def predict(model_dir: Path | None, image: np.ndarray, scale: float | None = None):
    segmenter = TorchSegmenter.from_model_dir(model_dir, runtime=RuntimeChoice(threads=THREADS))
    options = SegmentOptions(tile_size=segmenter.tile_size, scale=scale)
    return predict_image(image, segmenter, options)


def unseen_dice(mask: np.ndarray, truth: np.ndarray, unseen: np.ndarray) -> float:
    return dice_from_counts(dice_counts(mask, truth, unseen))


def save_overlay(path: Path, image: np.ndarray, truth: np.ndarray, masks: list[np.ndarray]):
    """Side by side: the slide, then each mask's outline (red) over the truth's (green)."""
    gray = to_uint8(normalize_intensity(image))
    panels = [np.dstack([gray] * 3)]
    kernel = np.ones((3, 3), np.uint8)
    for mask in masks:
        rgb = np.dstack([gray] * 3).copy()
        for m, colour in ((truth, (0, 255, 0)), (mask, (0, 0, 255))):
            rgb[m & ~cv2.erode(m.astype(np.uint8), kernel).astype(bool)] = colour
        panels.append(rgb)
    cv2.imwrite(str(path), np.hstack(panels))


def half_crop(image, truth, size: int, args, options: FinetuneOptions, work: Path) -> dict:
    """The issue's protocol on a size x size crop from the slide's centre, the crop being all
    the user has: labels on its top half, Dice on its bottom half, base vs tuned."""
    start = (image.shape[0] - size) // 2
    box = (slice(start, start + size),) * 2
    crop, crop_truth = np.ascontiguousarray(image[box]), truth[box]
    labels = np.full(crop.shape, 128, np.uint8)
    labels[: size // 2] = np.where(crop_truth[: size // 2], 255, 0)
    bottom = np.zeros(crop.shape, bool)
    bottom[size // 2 :] = True
    out = work.with_name(f"{work.name}-half{size}")
    begin = time.perf_counter()
    finetune([crop], [labels], out, minutes=args.minutes, seed=0, options=options)
    return {
        f"base half {size}": unseen_dice(predict(None, crop).mask, crop_truth, bottom),
        f"half {size}": unseen_dice(predict(out, crop).mask, crop_truth, bottom),
        f"half {size} s": time.perf_counter() - begin,
    }


def run_slide(style: str, seed: int, args, options: FinetuneOptions, work: Path) -> dict:
    image, truth, rows, cols = make_slide(style, seed, args.size)
    boxes = corner_boxes(args.size)
    unseen = np.ones(truth.shape, bool)
    for box in boxes:
        unseen[box] = False
    base = predict(None, image)
    row = {
        "style": style,
        "seed": seed,
        "rows": rows,
        "base": unseen_dice(base.mask, truth, unseen),
    }
    row["base_scale"] = base.scale
    masks = [base.mask]
    for count in args.boxes:
        out = work / f"{style}-{seed}-{count}"
        start = time.perf_counter()
        result = finetune(
            [image], [box_labels(truth, boxes[:count])], out, minutes=args.minutes,
            seed=seed, options=options,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        tuned = predict(out, image)
        row[f"{count} box"] = unseen_dice(tuned.mask, truth, unseen)
        if tuned.scale != 1.0:
            at_1 = predict(out, image, 1.0).mask
            row[f"{count} box at scale 1"] = unseen_dice(at_1, truth, unseen)
        row[f"{count} box scale"] = tuned.scale
        row[f"{count} box s"] = seconds
        row[f"{count} box steps"] = result.steps
        row[f"{count} box held-out"] = (result.held_out_dice_base, result.held_out_dice)
        row[f"{count} box stopped"] = result.stopped
        masks.append(tuned.mask)
    for crop_size in args.halves:
        row.update(half_crop(image, truth, crop_size, args, options, work / f"{style}-{seed}"))
    if args.label_free:
        out = work / f"{style}-{seed}-grid"
        start = time.perf_counter()
        done = finetune_from_grid(
            image, rows, cols, out, minutes=args.minutes, seed=seed, options=options
        )
        row["label-free s"] = time.perf_counter() - start
        row["label-free sure marks"] = [r.grid.sure_marks for r in done]
        tuned = predict(out, image) if done[0].result is not None else base
        row["label-free"] = unseen_dice(tuned.mask, truth, unseen)
        masks.append(tuned.mask)
    if args.overlays:
        crop = (slice(args.size // 2 - 192, args.size // 2 + 192),) * 2
        save_overlay(
            Path(args.overlays) / f"ft_{style}_{seed}.png", image[crop], truth[crop],
            [m[crop] for m in masks],
        )  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", default="darkfill,grain")
    parser.add_argument("--slides", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=960_000)
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--boxes", default="1,2,4")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--label-free", action="store_true")
    parser.add_argument(
        "--halves", default="", help="crop sizes, e.g. 250,512: top half labelled, bottom scored"
    )
    parser.add_argument("--encoder", default=FinetuneOptions.encoder)
    parser.add_argument("--loss", default=FinetuneOptions.loss)
    parser.add_argument("--crop", type=int, default=FinetuneOptions.crop_size)
    parser.add_argument("--batch", type=int, default=FinetuneOptions.batch_size)
    parser.add_argument("--lr", type=float, default=FinetuneOptions.lr)
    parser.add_argument("--patience", type=int, default=FinetuneOptions.patience)
    parser.add_argument("--steps", type=int, default=FinetuneOptions.steps)
    parser.add_argument("--threads", type=int, default=None, help="default: the idle cores")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--overlays", default=None, help="folder for ft_<style>_<seed>.png")
    args = parser.parse_args()
    args.boxes = [int(b) for b in args.boxes.split(",") if b]
    args.halves = [int(b) for b in args.halves.split(",") if b]
    options = FinetuneOptions(
        encoder=args.encoder, loss=args.loss, crop_size=args.crop, batch_size=args.batch,
        lr=args.lr, patience=args.patience, steps=args.steps, threads=args.threads,
    )  # fmt: skip
    global THREADS
    THREADS = args.threads
    print(f"options: {options}, {args.minutes} min per fine-tune", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AMSEG_CACHE_DIR"] = str(Path(tmp) / "cache")
        for style in args.styles.split(","):
            for index in range(args.slides):
                seed = args.first_seed + index
                rows.append(run_slide(style, seed, args, options, Path(tmp)))
                print(json.dumps(rows[-1], default=str), flush=True)
    columns = (
        ["base"] + [f"{b} box" for b in args.boxes] + (["label-free"] if args.label_free else [])
    )
    columns += [c for h in args.halves for c in (f"base half {h}", f"half {h}")]
    print("\n| style | seed | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for row in rows:
        cells = " | ".join(f"{row[c]:.3f}" for c in columns)
        print(f"| {row['style']} | {row['seed']} | {cells} |")
    means = " | ".join(f"{np.mean([r[c] for r in rows]):.3f}" for c in columns)
    print(f"| mean | | {means} |")
    if args.json:
        args.json.write_text(
            json.dumps({"options": str(options), "rows": rows}, indent=1, default=str)
        )


if __name__ == "__main__":
    main()
