"""The shipped model's masks on the real development set (benchmarks/data/real/) in each CPU
precision: what `auto` picking int8 or bf16 does to correctness on real crops, not only to
agreement with fp32.

    PYTHONPATH=. .venv/bin/python benchmarks/precision_dev.py [--crops notebook_crop,...]
        [--precisions fp32,bf16,int8] [--model DIR]

Dice is pixel Dice over the labelled pixels of the whole crop (128 = cannot tell is left out),
the mask as `amseg predict` makes it (auto scale, second looks) on OpenVINO, and eager PyTorch
fp32 as the reference row. Also each precision's mask Dice against eager fp32's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.finetune_dev import CROPS, dice_on, load_crop
from model.metrics import dice
from model.segment.neural import TorchSegmenter
from model.segment.predict import predict_image
from model.segment.runtime import RuntimeChoice, cpu_description
from model.segment.single_pass import SegmentOptions

REFERENCE = "torch fp32"


def choices(precisions: list[str]) -> dict[str, RuntimeChoice]:
    runs = {REFERENCE: RuntimeChoice(device="cpu", backend="torch", precision="fp32")}
    for precision in precisions:
        runs[f"openvino {precision}"] = RuntimeChoice(
            device="cpu", backend="openvino", precision=precision
        )
    runs["auto"] = RuntimeChoice()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", default=",".join(CROPS))
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    args = parser.parse_args()
    crops = args.crops.split(",")
    print(cpu_description())
    rows = {}
    for name, choice in choices(args.precisions.split(",")).items():
        segmenter = TorchSegmenter.from_model_dir(args.model, runtime=choice)
        label = f"{name} ({segmenter.runtime.precision})" if name == "auto" else name
        rows[label] = {}
        for crop in crops:
            image, labels = load_crop(crop)
            mask = predict_image(
                image, segmenter, SegmentOptions(tile_size=segmenter.tile_size)
            ).mask
            rows[label][crop] = mask
        print(f"  {label}: done", file=sys.stderr, flush=True)
    reference = rows[f"{REFERENCE}"]
    print(f"\n{'run':<22}" + "".join(f"{c:>24}" for c in crops) + f"{'mean':>8}")
    for label, masks in rows.items():
        scores = []
        cells = []
        for crop in crops:
            _, labels = load_crop(crop)
            score = dice_on(masks[crop] > 0, labels, np.ones(labels.shape, bool))
            agree = dice(masks[crop] > 0, reference[crop] > 0)
            scores.append(score)
            cells.append(f"{score:.4f} (vs fp32 {agree:.4f})")
        print(f"{label:<22}" + "".join(f"{c:>24}" for c in cells) + f"{np.mean(scores):>8.4f}")


if __name__ == "__main__":
    main()
