"""Small synthetic scenes with known marks for pipeline tests (fast, no generator needed)."""

from __future__ import annotations

import cv2
import numpy as np


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
