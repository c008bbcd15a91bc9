"""Segmenters turn normalized tiles into mark probabilities; the pipeline does not care which.

`Segmenter` is the small interface the tiled pipeline calls. `ClassicalSegmenter` is a
threshold-and-morphology baseline that needs no trained weights; the neural model implements
the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np


@runtime_checkable
class Segmenter(Protocol):
    """Maps a batch of normalized tiles (N, T, T) float32 in [0, 1] to probabilities (N, T, T)."""

    name: str
    threshold: float

    def predict_batch(self, tiles: np.ndarray) -> np.ndarray: ...


@dataclass
class ClassicalSegmenter:
    """Local-contrast threshold: marks are brighter than their surroundings by `contrast` sigmas.

    Works per tile on smoothed intensities: (smoothed - local mean) / local spread, then a soft
    step so that the stitched map behaves like a probability thresholded at 0.5. A baseline for
    bright marks on a granular background; the trained model replaces it.
    """

    mark_sigma: float = 2.0  # smoothing that suppresses single matrix grains
    context_sigma: float = 20.0  # scale of the local background (larger than a mark)
    contrast: float = 1.2  # local z-score at which a pixel is 50 % mark
    softness: float = 0.3
    threshold: float = 0.5
    name: str = "classical"

    def predict_batch(self, tiles: np.ndarray) -> np.ndarray:
        return np.stack([self._predict_tile(tile) for tile in tiles])

    def _predict_tile(self, tile: np.ndarray) -> np.ndarray:
        tile = tile.astype(np.float32, copy=False)
        smooth = cv2.GaussianBlur(tile, (0, 0), self.mark_sigma, borderType=cv2.BORDER_REFLECT)
        mean = cv2.GaussianBlur(smooth, (0, 0), self.context_sigma, borderType=cv2.BORDER_REFLECT)
        mean_sq = cv2.GaussianBlur(
            smooth * smooth, (0, 0), self.context_sigma, borderType=cv2.BORDER_REFLECT
        )
        spread = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0)) + 0.02
        z = (smooth - mean) / spread
        logits = (z - self.contrast) / self.softness
        return (1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))).astype(np.float32)
