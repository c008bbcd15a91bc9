"""`amseg finetune` judged on the real development set (benchmarks/data/real/): zero-shot, tuned
on the part it was not shown, and tuned on the very pixels it was shown.

    PYTHONPATH=. .venv/bin/python benchmarks/finetune_dev.py [--crops notebook_crop,...]
        [--protocols top,left,one-box,two-box] [--minutes 5] [--threads T] [--busy]
        [--set steps=300 --set encoder=frozen ...] [--base MODEL_DIR] [--json out.json]
        [--overlays /tmp/dev] [--flips] [--int8]

Protocols (a user labels part of a crop, tunes, and looks at the whole crop):
- top / left: the top (left) half labelled, judged on the bottom (right) half it never saw;
- one-box / two-box: one 192² box (two: one per half) labelled where marks are, judged outside;
- grid: no labels, the label-free mode on the rows x cols the crop shows, judged everywhere.
"labelled" is the Dice on the labelled part itself (what the person said: it should come back).
Dice is pixel Dice over the labelled pixels (128 = cannot tell is left out). `--busy` keeps one
core busy in another process while tuning (a shared worker); `--int8` makes the int8 IR as
`amseg finetune` does (its check on the labels given) and scores int8 against fp32 on the unseen
part; `--flips` also scores the tuned model with test-time flips (four mirror images'
probabilities averaged). Crops: the three real crops, and variants with the same pixels:
`notebook_crop_inverted` (dark filled marks on a bright matrix) and `*_wide` (labels that draw
rims and tails as marks: a person's convention the shipped model does not share, zero-shot
~0.81, so tuning has to learn it).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from model.image.io import read_image
from model.metrics import dice_counts, dice_from_counts
from model.register.registration import register_marks
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.runtime import RuntimeChoice
from model.segment.single_pass import SegmentOptions, remove_small_components
from model.train.finetune import FinetuneOptions, finetune
from model.train.finetune_job import FinetuneJob
from model.train.run_finetune import run_job
from model.train.tuned_ir import ship_tuned_irs

HERE = Path(__file__).resolve().parent
LABELS = HERE / "data" / "real"
REAL = HERE.parents[1] / "shared" / "data" / "real"
CROPS = (
    "notebook_crop",
    "notebook_crop_inverted",
    "notebook_crop_wide",
    "source_small",
    "tile_013",
    "tile_013_wide",
)
PROTOCOLS = ("top", "left", "one-box", "two-box", "grid")
BOX = 192


def load_crop(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The crop (uint8 gray) and its labels (0/128/255). Variants: `_inverted` (dark filled
    marks), `_wide` (a person who draws the rims and tails as part of the marks: "cannot tell"
    pixels that touch a mark become mark, unlike what the shipped model learnt)."""
    source = name.removesuffix("_inverted").removesuffix("_wide")
    image = read_image(REAL / f"{source}.png")
    if name.endswith("_inverted"):
        image = 255 - image
    labels = cv2.imread(str(LABELS / f"{source}_labels.png"), cv2.IMREAD_GRAYSCALE)
    if name.endswith("_wide"):
        pieces, _ = ndi.label(labels > 0)
        with_mark = np.unique(pieces[labels == 255])
        labels = np.where(np.isin(pieces, with_mark[with_mark > 0]), 255, labels).astype(np.uint8)
    return image, labels


def shown_part(protocol: str, labels: np.ndarray) -> np.ndarray:
    """Which pixels the person labelled under `protocol`."""
    height, width = labels.shape
    shown = np.zeros(labels.shape, bool)
    if protocol == "top":
        shown[: height // 2] = True
    elif protocol == "left":
        shown[:, : width // 2] = True
    else:
        # Where a person would start: the box with the most marks in the top half (and, for
        # two boxes, in the bottom half too).
        halves = [(0, height // 2)] + ([(height // 2, height)] if protocol == "two-box" else [])
        for top, bottom in halves:
            y, x = densest_box(labels == 255, top, bottom)
            shown[y : y + BOX, x : x + BOX] = True
    return shown


def densest_box(marks: np.ndarray, top: int, bottom: int, step: int = 16) -> tuple[int, int]:
    """Corner of the BOX² window starting between rows top and bottom with the most marks."""
    best, where = -1, (top, 0)
    for y in range(top, min(bottom, marks.shape[0] - BOX) + 1, step):
        for x in range(0, marks.shape[1] - BOX + 1, step):
            count = int(np.count_nonzero(marks[y : y + BOX, x : x + BOX]))
            if count > best:
                best, where = count, (y, x)
    return where


def estimate_grid(mask: np.ndarray) -> tuple[int, int]:
    """Rows and columns the marks of `mask` span on a lattice fitted to them (the grid a
    person would count on the crop)."""
    side = min(200, math.isqrt(mask.size // 16))  # generous, but a grid the image can hold
    marks = register_marks(mask, side, side).marks
    rows = max(m.row for m in marks) - min(m.row for m in marks) + 1
    cols = max(m.col for m in marks) - min(m.col for m in marks) + 1
    return rows, cols


def dice_on(mask: np.ndarray, labels: np.ndarray, where: np.ndarray) -> float:
    scored = where & (labels != 128)
    return dice_from_counts(dice_counts(mask, labels == 255, scored))


def predict(
    model_dir: Path | None,
    image: np.ndarray,
    threads: int | None,
    flips: bool = False,
    precision: str = "auto",
) -> np.ndarray:
    """The mask as `amseg predict` makes it (auto scale, second looks); with `flips`,
    test-time flips: the probabilities of the image and its three mirror images averaged,
    then thresholded as predict does."""
    runtime = RuntimeChoice(threads=threads, precision=precision)
    segmenter = TorchSegmenter.from_model_dir(model_dir, runtime=runtime)
    options = SegmentOptions(tile_size=segmenter.tile_size)
    if not flips:
        return predict_image(image, segmenter, options).mask
    axes_each = [(), (0,), (1,), (0, 1)]
    looks = [predict_image(np.flip(image, axes).copy(), segmenter, options) for axes in axes_each]
    mean = sum(np.flip(look.probabilities.astype(np.float32), axes)
               for look, axes in zip(looks, axes_each, strict=True)) / len(looks)  # fmt: skip
    return remove_small_components(mean > looks[0].threshold, options.min_mark_area)


def parse_option(text: str) -> tuple[str, object]:
    """`name=value` as a FinetuneOptions field and a value of the field's type."""
    name, _, value = text.partition("=")
    if name not in {f.name for f in fields(FinetuneOptions)}:
        raise SystemExit(f"--set: FinetuneOptions has no field {name!r}")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    return name, value


def _pace(event) -> None:
    if event.step % 50 == 0:
        print(f"  step {event.step}/{event.total} at {event.elapsed_s:.0f} s, held-out "
              f"{event.held_out_dice}", file=sys.stderr, flush=True)  # fmt: skip


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def run(name: str, protocol: str, args, work: Path, base_mask: np.ndarray) -> dict | None:
    image, labels = load_crop(name)
    shown = shown_part(protocol, labels) if protocol != "grid" else np.zeros(labels.shape, bool)
    given = np.where(shown, labels, 128).astype(np.uint8)
    if protocol != "grid" and not (given == 255).any():
        return None  # e.g. the left half of source_small: no mark a person could label there
    options = replace(FinetuneOptions(threads=args.threads), **args.options)
    out = work / f"{name}-{protocol}"
    begin = time.perf_counter()
    if protocol == "grid":  # no labels: the grid the crop shows, and the model's sure marks
        rows, cols = estimate_grid(base_mask)
        job = FinetuneJob(labelled=False, rows=rows, cols=cols, minutes=args.minutes)
        result, _ = run_job(job, [image], [], out, args.base, seed=0, options=options)
    else:
        result = finetune(
            [image], [given], out, base=args.base, minutes=args.minutes, seed=0,
            on_progress=_pace, options=options,
        )  # fmt: skip
    seconds = time.perf_counter() - begin
    int8 = int8_row(out, image, given, labels, shown, args.threads) if args.int8 else {}
    tuned = predict(out, image, args.threads)
    flipped = predict(out, image, args.threads, flips=True) if args.flips else None
    if args.overlays:
        save_overlay(args.overlays / f"ftdev_{name}_{protocol}.png", image, labels, shown,
                     [base_mask, tuned])  # fmt: skip
    return {
        "crop": name,
        "protocol": protocol,
        "zero_shot_unseen": dice_on(base_mask, labels, ~shown),
        "zero_shot_labelled": dice_on(base_mask, labels, shown) if shown.any() else None,
        "tuned_unseen": dice_on(tuned, labels, ~shown),
        "tuned_labelled": dice_on(tuned, labels, shown) if shown.any() else None,
        "tuned_unseen_flips": None if flipped is None else dice_on(flipped, labels, ~shown),
        "tuned_labelled_flips": dice_on(flipped, labels, shown)
        if flipped is not None and shown.any()
        else None,
        "seconds": seconds,
        "steps": result.steps,
        "best_step": result.best_step,
        "stopped": result.stopped,
        "held_out": [result.held_out_dice_base, result.held_out_dice],
        "options": args.options,
    } | int8


def int8_row(out: Path, image, given, labels, shown, threads) -> dict:
    """What `amseg finetune` adds after tuning (model/train/tuned_ir.py): the int8 IR and its
    check on the labels the person gave; then int8 and fp32 judged on the unseen part."""
    begin = time.perf_counter()
    irs = ship_tuned_irs(out, [image], [given])
    made = time.perf_counter() - begin
    fp32, int8 = (predict(out, image, threads, precision=p) for p in ("fp32", "int8"))
    return {
        "int8_check": irs.int8_check,
        "int8_seconds": made,
        "fp32_unseen": dice_on(fp32, labels, ~shown),
        "int8_unseen": dice_on(int8, labels, ~shown),
        "int8_vs_fp32": dice_from_counts(dice_counts(int8, fp32)),
    }


def save_overlay(path: Path, image, labels, shown, masks) -> None:
    """Per mask: its outline (red) over the labels' marks (green), the shown part tinted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = image if image.ndim == 2 else image[..., 0]
    panels = []
    kernel = np.ones((3, 3), np.uint8)
    for mask in masks:
        rgb = np.dstack([gray] * 3).astype(np.uint8)
        rgb[shown] = (0.8 * rgb[shown] + (40, 0, 0)).astype(np.uint8)
        for m, colour in ((labels == 255, (0, 255, 0)), (mask, (0, 0, 255))):
            rgb[m & ~cv2.erode(m.astype(np.uint8), kernel).astype(bool)] = colour
        panels.append(cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))
    cv2.imwrite(str(path), np.hstack(panels))


def line_of(row: dict) -> str:
    def text(value):
        return "-" if value is None else f"{value:.3f}"

    return (
        f"{row['crop']:24s} {row['protocol']:8s} zero-shot {text(row['zero_shot_unseen'])} / "
        f"{text(row['zero_shot_labelled'])}  tuned unseen {text(row['tuned_unseen'])}  "
        f"labelled {text(row['tuned_labelled'])}  {row['seconds']:.0f} s, {row['steps']} "
        f"steps (best {row['best_step']}, {row['stopped']})"
        + (f"  flips {text(row['tuned_unseen_flips'])} / {text(row['tuned_labelled_flips'])}"
           if row["tuned_unseen_flips"] is not None else "")
        + (f"  int8: check {row['int8_check']} in {row['int8_seconds']:.0f} s; unseen fp32 "
           f"{row['fp32_unseen']:.4f} int8 {row['int8_unseen']:.4f}, int8 vs fp32 "
           f"{row['int8_vs_fp32']:.4f}" if "int8_check" in row else "")
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", default=",".join(CROPS))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument(
        "--set", action="append", default=[], metavar="OPTION=VALUE",
        help="a FinetuneOptions field (int, float, true/false or text), e.g. steps=300",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--busy", action="store_true", help="keep one core busy meanwhile")
    parser.add_argument("--flips", action="store_true", help="also score test-time flips")
    parser.add_argument(
        "--int8", action="store_true",
        help="also make the int8 IR as amseg finetune does, and score int8 against fp32",
    )  # fmt: skip
    parser.add_argument("--base", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--overlays", type=Path, default=None)
    args = parser.parse_args()
    args.options = dict(parse_option(text) for text in args.set)
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
    if args.busy:
        spinner.start()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["AMSEG_CACHE_DIR"] = str(Path(tmp) / "cache")
            for name in args.crops.split(","):
                base_mask = predict(args.base, load_crop(name)[0], args.threads)
                for protocol in args.protocols.split(","):
                    row = run(name, protocol, args, Path(tmp), base_mask)
                    if row is None:
                        print(f"{name:24s} {protocol:8s} n/a: no mark in the labelled part")
                        continue
                    rows.append(row)
                    print(line_of(row), flush=True)
    finally:
        stop.set()
        if args.busy:
            spinner.join()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
