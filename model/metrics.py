"""Scores against ground truth: pixel Dice, object F1, and the share of marks with the right id;
`error_kinds` says where a mask's wrong pixels are."""

from __future__ import annotations

import cv2
import numpy as np

MIN_OBJECT_AREA = 12
"""Components under this many px are noise, as in the pipeline (SegmentOptions.min_mark_area)."""


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(predicted.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(predicted, truth).sum()) / total


def mark_id_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of ground-truth marks whose pixels carry, by majority, their own id.

    `predicted` and `truth` are label images (0 = background, else the grid id). A mark that
    got no id at all counts as wrong.
    """
    marked = truth > 0
    if not marked.any():
        return 1.0
    truth_ids = truth[marked].astype(np.int64)
    found_ids = predicted[marked].astype(np.int64)
    keep = found_ids > 0
    n_ids = int(max(truth_ids.max(), found_ids.max() if found_ids.size else 0)) + 1
    # Votes per (true id, found id) pair that occurs (a dense table would need n_ids² counts:
    # 15 GB for a 210 x 210 grid), then the winning found id of every true id: the most
    # votes, the lowest id among equals.
    pairs, votes = np.unique(truth_ids[keep] * n_ids + found_ids[keep], return_counts=True)
    order = np.lexsort((-votes, pairs // n_ids))
    pairs = pairs[order]
    true_of_pair = pairs // n_ids
    first = np.r_[True, true_of_pair[1:] != true_of_pair[:-1]]
    winner = dict(zip(true_of_pair[first].tolist(), (pairs[first] % n_ids).tolist(), strict=True))
    present = np.unique(truth_ids).tolist()
    return float(np.mean([winner.get(t) == t for t in present]))


def dice_counts(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(tp, fp, fn) pixel counts of boolean arrays, restricted to `valid`."""
    if valid is not None:
        pred, truth = pred & valid, truth & valid
    tp = int(np.count_nonzero(pred & truth))
    return np.array([tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(truth)) - tp])


def dice_from_counts(counts: np.ndarray) -> float:
    """2TP / (2TP + FP + FN); 1.0 when there are no mark pixels on either side."""
    tp, fp, fn = (int(c) for c in counts)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def object_counts(
    pred: np.ndarray, truth: np.ndarray, min_area: int = MIN_OBJECT_AREA
) -> np.ndarray:
    """(tp, fp, fn) of 8-connected components matched one-to-one at IoU >= 0.5.

    At IoU >= 0.5 a component can match at most one other, so counting the qualifying pairs is
    an exact one-to-one matching (no Hungarian step needed). Components smaller than
    `min_area` px are dropped on both sides, as the pipeline drops them from predictions.
    """
    pred_labels, n_pred = _components(pred, min_area)
    true_labels, n_true = _components(truth, min_area)
    if n_pred == 0 or n_true == 0:
        return np.array([0, n_pred, n_true])
    both = (pred_labels > 0) & (true_labels > 0)
    pairs = pred_labels[both].astype(np.int64) * (n_true + 1) + true_labels[both]
    overlap = np.bincount(pairs, minlength=(n_pred + 1) * (n_true + 1))
    overlap = overlap.reshape(n_pred + 1, n_true + 1)
    pred_area = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    true_area = np.bincount(true_labels.ravel(), minlength=n_true + 1)
    p_idx, t_idx = np.nonzero(overlap)
    inter = overlap[p_idx, t_idx]
    iou = inter / (pred_area[p_idx] + true_area[t_idx] - inter)
    tp = int(np.count_nonzero(iou >= 0.5))
    return np.array([tp, n_pred - tp, n_true - tp])


ERROR_KINDS = ("outline", "false mark", "missed mark", "elsewhere")


def error_kinds(pred: np.ndarray, truth: np.ndarray, ring: int = 2) -> np.ndarray:
    """The wrong pixels of boolean `pred` (fp + fn of `dice_counts`), split by ERROR_KINDS:

    - false mark: in a predicted component (8-connected) that touches no true mark;
    - missed mark: in a true mark that no predicted pixel touches;
    - outline: any other wrong pixel at most `ring` px from a true mark's outline (a mark cut
      short or grown too wide);
    - elsewhere: the rest (e.g. a wrong blob that touches a mark further than `ring` px out).
    """
    pred, truth = pred.astype(bool), truth.astype(bool)
    pred_labels, n_pred = _components(pred, 1)
    true_labels, n_true = _components(truth, 1)
    touched_pred = np.bincount(pred_labels[truth].ravel(), minlength=n_pred + 1) > 0
    touched_true = np.bincount(true_labels[pred].ravel(), minlength=n_true + 1) > 0
    false_mark = pred & ~touched_pred[pred_labels]
    missed_mark = truth & ~touched_true[true_labels]
    wrong = pred ^ truth
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1))
    as_u8 = truth.astype(np.uint8)
    near_outline = cv2.dilate(as_u8, kernel) > cv2.erode(as_u8, kernel)
    outline = wrong & near_outline & ~false_mark & ~missed_mark
    elsewhere = wrong & ~outline & ~false_mark & ~missed_mark
    return np.array([np.count_nonzero(k) for k in (outline, false_mark, missed_mark, elsewhere)])


def _components(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, int]:
    """8-connected components of at least `min_area` px, relabelled 1..n, and n."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    relabel = np.zeros(count, np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[labels], int(keep.sum())


def f1_from_counts(counts: np.ndarray) -> float:
    """Object F1 = 2TP / (2TP + FP + FN) from (tp, fp, fn); 1.0 when there is nothing."""
    tp, fp, fn = (int(c) for c in counts)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
