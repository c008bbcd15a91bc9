"""Smooth random fields, the raw material of every texture on a synthetic slide."""

from __future__ import annotations

from statistics import NormalDist

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-correlated noise with unit std; coarse scales are drawn at low resolution
    and enlarged, so the cost stays close to one full-size array."""
    height, width = shape
    factor = max(1, int(sigma / 1.5))
    low_h, low_w = height // factor + 3, width // factor + 3
    low = rng.standard_normal((low_h, low_w), dtype=np.float32)
    low = cv2.GaussianBlur(low, (0, 0), sigma / factor, borderType=cv2.BORDER_REFLECT)
    low -= low.mean()
    low /= max(float(low.std()), 1e-6)
    if factor == 1:
        return np.ascontiguousarray(low[:height, :width])
    big = cv2.resize(low, (low_w * factor, low_h * factor), interpolation=cv2.INTER_CUBIC)
    offset = factor  # skip the first low-res cell, where the interpolation is one-sided
    return np.ascontiguousarray(big[offset : offset + height, offset : offset + width])


def normal_quantile(p: float) -> float:
    """Inverse standard-normal CDF, so a threshold on unit noise covers a share `1 - p`."""
    return NormalDist().inv_cdf(min(max(p, 1e-6), 1 - 1e-6))
