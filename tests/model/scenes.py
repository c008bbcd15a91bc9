"""Small synthetic scenes with known marks for pipeline tests (fast, no generator needed),
and a segmenter with a known blind spot."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from model.segment.segmenter import ClassicalSegmenter


def disc_grid_scene(
    rows: int = 6,
    cols: int = 8,
    pitch: int = 70,
    radius: int = 12,
    margin: int = 40,
    seed: int = 0,
    missing: tuple[tuple[int, int], ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs on a noisy textured background: (uint8 image, uint16 ground-truth ids)."""
    rng = np.random.default_rng(seed)
    height = 2 * margin + (rows - 1) * pitch
    width = 2 * margin + (cols - 1) * pitch
    labels = np.zeros((height, width), np.uint16)
    for r in range(rows):
        for c in range(cols):
            if (r, c) in missing:
                continue
            centre = (margin + c * pitch, margin + r * pitch)
            cv2.circle(labels, centre, radius, int(r * cols + c + 1), thickness=-1)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 1.5)
    image = 60 + 12 * texture + rng.normal(0, 4, (height, width))
    image[labels > 0] += 90
    return np.clip(image, 0, 255).astype(np.uint8), labels


@dataclass
class SmallMarkBlindSegmenter:
    """The classical baseline, blind to marks narrower than `min_width` px (a morphological
    opening of its probabilities): stands in for a network that misses marks too small for it,
    so that enlarging the image first is what makes them visible."""

    min_width: int = 17
    name: str = "small-mark-blind"
    threshold: float = 0.5
    tile_size: int = 128  # what the worker tiles with, as for a model
    base: ClassicalSegmenter = field(default_factory=ClassicalSegmenter)

    def predict_batch(self, tiles: np.ndarray) -> np.ndarray:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (self.min_width, self.min_width))
        return np.stack(
            [cv2.morphologyEx(p, cv2.MORPH_OPEN, disc) for p in self.base.predict_batch(tiles)]
        )


class BlindSegmenter(ClassicalSegmenter):
    """Sees no marks at any scale: probability 0 everywhere."""

    def predict_batch(self, tiles: np.ndarray) -> np.ndarray:
        return np.zeros_like(tiles)
