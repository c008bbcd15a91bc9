"""The label-free `amseg finetune` on the real crops (no labels exist): base and tuned masks
side by side, for the eye, and how much the two masks agree.

    PYTHONPATH=. .venv/bin/python benchmarks/finetune_real.py [--minutes 3] [--rounds 2]
        [--threads 1] [--out /tmp]   (writes /tmp/ft_real_<crop>.png)

The grid of a crop is not known: it is estimated by registering the base model's mask on a
generous 200 x 200 grid and keeping the rows and columns its marks span.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from model.image.io import read_image, to_grayscale
from model.image.normalize import normalize_intensity, to_uint8
from model.metrics import dice
from model.register.registration import register_marks
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.runtime import RuntimeChoice
from model.train.finetune import FinetuneOptions
from model.train.grid_labels import finetune_from_grid

REAL_CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def estimate_grid(mask: np.ndarray) -> tuple[int, int]:
    """Rows and columns the marks of `mask` span on a lattice fitted to them."""
    side = min(200, math.isqrt(mask.size // 16))  # generous, but a grid the image can hold
    marks = register_marks(mask, side, side).marks
    rows = max(m.row for m in marks) - min(m.row for m in marks) + 1
    cols = max(m.col for m in marks) - min(m.col for m in marks) + 1
    return rows, cols


def overlay(image: np.ndarray, masks: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """The crop, its pseudo-labels (green marks, blue background), then each mask's outline."""
    gray = to_uint8(normalize_intensity(to_grayscale(image)))
    panels = [np.dstack([gray] * 3)]
    tinted = np.dstack([gray] * 3).astype(np.float32)
    tinted[labels == 255] = 0.5 * tinted[labels == 255] + (0, 127, 0)
    tinted[labels == 0] = 0.7 * tinted[labels == 0] + (76, 0, 0)
    panels.append(tinted.astype(np.uint8))
    for mask in masks:
        rgb = np.dstack([gray] * 3).copy()
        edge = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        rgb[edge] = (0, 0, 255)
        panels.append(rgb)
    return np.hstack(panels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    runtime = RuntimeChoice(threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AMSEG_CACHE_DIR"] = str(Path(tmp) / "cache")
        base = TorchSegmenter.from_model_dir(None, runtime=runtime)
        for path in sorted(REAL_CROPS.glob("*.png")):
            image = read_image(path)
            before = predict_image(image, base)
            rows, cols = estimate_grid(before.mask)
            done = finetune_from_grid(
                image, rows, cols, Path(tmp) / path.stem, minutes=args.minutes,
                rounds=args.rounds, options=FinetuneOptions(threads=args.threads),
            )  # fmt: skip
            tuned = TorchSegmenter.from_model_dir(Path(tmp) / path.stem, runtime=runtime)
            after = predict_image(image, tuned)
            sure = [r.grid.sure_marks for r in done]
            held = [(r.result.held_out_dice_base, r.result.held_out_dice) for r in done if r.result]
            print(
                f"{path.name}: grid {rows}x{cols}, sure marks per round {sure}, held-out Dice "
                f"{[(round(a, 3), round(b, 3)) for a, b in held]}, mask share "
                f"{before.mask.mean():.3f} -> {after.mask.mean():.3f}, base/tuned Dice "
                f"{dice(after.mask, before.mask):.3f}"
            )
            picture = overlay(image, [before.mask, after.mask], done[0].grid.labels)
            cv2.imwrite(str(args.out / f"ft_real_{path.stem}.png"), picture)


if __name__ == "__main__":
    main()
