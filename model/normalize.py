"""Intensity normalization: percentile clip on the full bit depth, then stretch to [0, 1].

Integer images (8/16-bit) are normalized through a lookup table built from an exact histogram,
so a 10000x10000 slide needs no float copy of the whole image and 16-bit data keep all their
levels (the old system dropped the low byte before normalizing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_LOW_PERCENTILE = 1.0
DEFAULT_HIGH_PERCENTILE = 99.0


@dataclass(frozen=True)
class IntensityWindow:
    """The clip range [low, high] of raw intensities that maps to [0, 1]."""

    low: float
    high: float

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Map raw intensities to float32 in [0, 1]; a flat window maps everything to 0."""
        span = self.high - self.low
        if span <= 0:
            return np.zeros(image.shape, dtype=np.float32)
        if image.dtype in (np.uint8, np.uint16):
            return self.lookup_table(image.dtype)[image]
        out = (image.astype(np.float32) - np.float32(self.low)) / np.float32(span)
        return np.clip(out, 0.0, 1.0, out=out)

    def lookup_table(self, dtype: np.dtype) -> np.ndarray:
        """float32 table indexed by every value of an 8/16-bit dtype."""
        levels = np.arange(np.iinfo(dtype).max + 1, dtype=np.float32)
        span = self.high - self.low
        if span <= 0:
            return np.zeros_like(levels)
        return np.clip((levels - np.float32(self.low)) / np.float32(span), 0.0, 1.0)


def intensity_window(
    image: np.ndarray,
    low_percentile: float = DEFAULT_LOW_PERCENTILE,
    high_percentile: float = DEFAULT_HIGH_PERCENTILE,
) -> IntensityWindow:
    """Percentiles of all pixels (all channels jointly), computed on the native bit depth.

    Matches numpy's linear-interpolation percentile; for 8/16-bit data it is computed from a
    histogram, which is exact and needs memory only for the histogram.
    """
    if not 0.0 <= low_percentile < high_percentile <= 100.0:
        raise ValueError(
            f"percentiles must satisfy 0 <= low < high <= 100, got {low_percentile}, "
            f"{high_percentile}"
        )
    if image.size == 0:
        raise ValueError("cannot normalize an empty image")
    if image.dtype in (np.uint8, np.uint16):
        counts = value_histogram(image)
        low, high = _histogram_percentiles(counts, (low_percentile, high_percentile))
    else:
        finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
        if finite.size == 0:
            return IntensityWindow(0.0, 0.0)
        low, high = np.percentile(finite, (low_percentile, high_percentile))
    return IntensityWindow(float(low), float(high))


def value_histogram(image: np.ndarray, chunk_pixels: int = 1 << 22) -> np.ndarray:
    """Count of every value of an 8/16-bit image, in chunks (bincount casts to int64)."""
    flat = image.reshape(-1)
    counts = np.zeros(np.iinfo(image.dtype).max + 1, dtype=np.int64)
    for start in range(0, flat.size, chunk_pixels):
        chunk = flat[start : start + chunk_pixels]
        counts += np.bincount(chunk, minlength=counts.size)
    return counts


def _histogram_percentiles(counts: np.ndarray, percentiles: tuple[float, ...]) -> list[float]:
    """Linear-interpolation percentiles (numpy's default method) from a value histogram."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    values = []
    for q in percentiles:
        position = q / 100.0 * (n - 1)  # rank in the sorted pixel list
        below = int(np.floor(position))
        fraction = position - below
        # The value at rank r is the first level whose cumulative count exceeds r.
        v0 = int(np.searchsorted(cumulative, below, side="right"))
        v1 = int(np.searchsorted(cumulative, min(below + 1, n - 1), side="right"))
        values.append(v0 + (v1 - v0) * fraction)
    return values


def normalize_intensity(
    image: np.ndarray,
    low_percentile: float = DEFAULT_LOW_PERCENTILE,
    high_percentile: float = DEFAULT_HIGH_PERCENTILE,
) -> np.ndarray:
    """Clip to the given percentiles and stretch to float32 in [0, 1] (same shape)."""
    return intensity_window(image, low_percentile, high_percentile).apply(image)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 [0, 255], rounded."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
