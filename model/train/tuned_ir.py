"""The OpenVINO IRs a fine-tuned model directory carries (model/segment/shipped_ir.py).

Always the fp32 export, so that the model runs where PyTorch is not installed (the lean install,
a slim worker) and its first run exports nothing. From labels, and where NNCF is installed, also
the int8 quantization, checked on the fine-tune's own labelled images: its masks must agree with
fp32's and its Dice on the labelled pixels must not fall below fp32's by more than the shipped
model's check allows. The check goes into the card, where precision="auto" looks before it picks
int8 (as for the shipped model), so a CPU without bf16 runs the tuned model at int8's speed too.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import AmsegError
from model.image.io import read_image
from model.metrics import dice, dice_counts, dice_from_counts
from model.segment.card import read_card, write_card
from model.segment.runtime import (
    INT8_DICE_DROP_METRIC,
    INT8_DICE_METRIC,
    RuntimeChoice,
    int8_check_passed,
    nncf_available,
    openvino_available,
)
from model.segment.shipped_ir import SHIPPED_DIR, build_shipped_ir
from model.train.finetune_labels import MARK, UNLABELLED, check_label_mask

INT8_CHECK_NOTE = (
    "int8 against OpenVINO fp32 on the fine-tune's own images, as amseg predict runs them: "
    "int8_mask_dice is the worst image's mask Dice, int8_dice_drop how far int8's Dice over "
    "the labelled pixels falls below fp32's"
)


@dataclass(frozen=True)
class TunedIrs:
    """What `ship_tuned_irs` made: the int8 check when an int8 IR was made (its two metrics
    and `passed`), and what a person should know (an IR not made, a failed check)."""

    int8_check: dict | None
    notes: list[str]


def ship_tuned_irs(
    model_dir: Path,
    images: Sequence[np.ndarray | str | Path],
    masks: Sequence[np.ndarray | str | Path],
    *,
    int8: bool = True,
    threads: int | None = None,
) -> TunedIrs:
    """Give a freshly tuned model directory its IRs: fp32, and int8 with its check when
    `int8`, `masks` (labels: 255 mark, 0 background, 128 not labelled) and NNCF are there.
    `threads`: for the check's predictions (default: every core the process may use). The
    model works without them, through PyTorch, in fp32 or bf16."""
    if not openvino_available():
        return TunedIrs(None, ["OpenVINO is not installed: the model needs PyTorch to run"])
    notes = []
    if makes_int8(int8, masks):
        try:
            build_shipped_ir(model_dir, kinds=("fp32", "int8"))
        except Exception as error:  # NNCF failed: the fp32 IR below is still worth having
            notes.append(f"no int8 network ({type(error).__name__}: {error})")
        else:
            try:
                check = int8_check(model_dir, images, masks, threads)
                record_int8_check(model_dir, check)
            except Exception as error:  # training is done: keep the model, drop the int8 IR
                shutil.rmtree(model_dir / SHIPPED_DIR / "int8", ignore_errors=True)
                notes.append(f"int8 not checked ({type(error).__name__}: {error}): the model "
                             "runs in bf16 or fp32")  # fmt: skip
                return TunedIrs(None, notes)
            if not check["passed"]:
                notes.append(
                    f"int8 did not pass its check on your labels ({_described(check)}): "
                    "the model runs in bf16 or fp32"
                )
            return TunedIrs(check, notes)
    try:
        build_shipped_ir(model_dir, kinds=("fp32",))
    except Exception as error:  # the weights are written; the IR is only a head start
        notes.append(f"no OpenVINO IR ({type(error).__name__}: {error}): the model needs "
                     "PyTorch to run")  # fmt: skip
    return TunedIrs(None, notes)


def makes_int8(int8: bool, masks: Sequence) -> bool:
    """Whether `ship_tuned_irs` makes the int8 IR: asked for, with labels to check it on, and
    NNCF to make it."""
    return int8 and len(masks) > 0 and openvino_available() and nncf_available()


def int8_check(
    model_dir: Path,
    images: Sequence[np.ndarray | str | Path],
    masks: Sequence[np.ndarray | str | Path],
    threads: int | None = None,
) -> dict:
    """The int8 check's two metrics (see INT8_DICE_METRIC) and `passed`, on labelled images,
    with the shipped int8 and fp32 IRs of `model_dir` run as amseg predict runs them."""
    from model.segment.neural import TorchSegmenter
    from model.segment.predict import predict_image
    from model.segment.single_pass import SegmentOptions

    segmenters = {}
    for precision in ("fp32", "int8"):
        runtime = RuntimeChoice(device="cpu", precision=precision, backend="openvino",
                                threads=threads)  # fmt: skip
        segmenters[precision] = TorchSegmenter.from_model_dir(model_dir, runtime=runtime)
        if not segmenters[precision].ir_source.startswith("shipped IR"):  # not the IR checked
            raise AmsegError(f"the {precision} IR just made did not load")
    options = SegmentOptions(tile_size=segmenters["fp32"].tile_size)
    agreement, counts = [], {precision: np.zeros(3) for precision in segmenters}
    for image, mask in zip(images, masks, strict=True):
        image = read_image(image) if isinstance(image, str | Path) else image
        labels = read_image(mask) if isinstance(mask, str | Path) else np.asarray(mask)
        labels = check_label_mask(labels, image.shape, "the labels")
        labelled, truth = labels != UNLABELLED, labels == MARK
        predicted = {
            precision: predict_image(image, segmenter, options, keep_probabilities=False).mask
            for precision, segmenter in segmenters.items()
        }
        agreement.append(dice(predicted["fp32"], predicted["int8"]))
        for precision, mask_ in predicted.items():
            counts[precision] += dice_counts(mask_, truth, labelled)
    drop = dice_from_counts(counts["fp32"]) - dice_from_counts(counts["int8"])
    check = {INT8_DICE_METRIC: round(min(agreement), 4), INT8_DICE_DROP_METRIC: round(drop, 4)}
    return check | {"passed": int8_check_passed(check)}


def record_int8_check(model_dir: Path, check: dict) -> None:
    """Write the check's metrics into the card (metrics leave the IRs valid)."""
    card = read_card(model_dir)
    metrics = {key: check[key] for key in (INT8_DICE_METRIC, INT8_DICE_DROP_METRIC)}
    card.metrics = {**card.metrics, **metrics, "int8_check": INT8_CHECK_NOTE}
    write_card(model_dir, card)


def _described(check: dict) -> str:
    return (
        f"mask agreement {check[INT8_DICE_METRIC]:.4f}, "
        f"Dice {check[INT8_DICE_DROP_METRIC]:+.4f} below fp32"
    )
