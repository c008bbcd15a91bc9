"""Scores against ground truth: pixel Dice of masks and the fraction of marks with the right id."""

from __future__ import annotations

import numpy as np


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
    # Votes per (true id, found id) pair, then the winning found id of every true id.
    votes = np.bincount(truth_ids[keep] * n_ids + found_ids[keep], minlength=n_ids * n_ids)
    votes = votes.reshape(n_ids, n_ids)
    present = np.unique(truth_ids)
    winners = votes[present].argmax(axis=1)
    has_votes = votes[present].max(axis=1) > 0
    return float(np.mean((winners == present) & has_votes))
