"""Intensity normalization: percentile clip on the full bit depth, then stretch to [0, 1].

Integer images (8/16-bit) are normalized through a lookup table built from an exact histogram,
so a 10000x10000 slide needs no float copy of the whole image and 16-bit data keep all their
levels (the old system dropped the low byte before normalizing).

Padding is left out of the percentiles: a large uniform area at the darkest or brightest
level (a mosaic's border, the corners of a rotated image, a masked-out region) is not sample,
and counting it would move the clip window onto the padding's value.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_LOW_PERCENTILE = 1.0
DEFAULT_HIGH_PERCENTILE = 99.0

# An area at the darkest or brightest level counts as padding where it holds a square this
# large: no mark of 8-60 px does, even when saturated.
PADDING_MIN_EDGE = 65
# Below this share of the pixels the 1st/99th percentiles hardly move, so no search is made.
PADDING_MIN_SHARE = 0.01
# ... and at least this share of the rest must hold such squares too: a sample is solid.
SAMPLE_MIN_SOLID = 0.5


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
    """Percentiles of all pixels but padding (all channels jointly), on the native bit depth.

    Matches numpy's linear-interpolation percentile; for 8/16-bit data it is computed from a
    histogram, which is exact and needs memory only for the histogram. Padding (see
    `find_padding`) is left out.
    """
    if not 0.0 <= low_percentile < high_percentile <= 100.0:
        raise ValueError(
            f"percentiles must satisfy 0 <= low < high <= 100, got {low_percentile}, "
            f"{high_percentile}"
        )
    if image.size == 0:
        raise ValueError("cannot normalize an empty image")
    counts = value_histogram(image) if image.dtype in (np.uint8, np.uint16) else None
    padding = find_padding(image, counts)
    if padding is not None and counts is not None:
        counts = counts - value_histogram(image[padding])  # every channel of its pixels
    elif padding is not None:
        image = image[~padding]  # (N,) or (N, C): percentiles over every channel alike
    if counts is not None:
        low, high = _histogram_percentiles(counts, (low_percentile, high_percentile))
    else:
        finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
        if finite.size == 0:
            return IntensityWindow(0.0, 0.0)
        low, high = np.percentile(finite, (low_percentile, high_percentile))
    return IntensityWindow(float(low), float(high))


def find_padding(image: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray | None:
    """(H, W) bool mask of the image's padding, or None when it has none.

    Padding is a uniform area at the darkest or brightest level that holds a square of
    PADDING_MIN_EDGE px, together with the pixels of that level 4-connected to it (the narrow
    tips of a rotated image's corners; also a dark mark clipped to that very level where it
    touches the padding). No mark of 8-60 px holds such a square, even when saturated. It
    must surround a solid sample: when less than SAMPLE_MIN_SOLID of the rest holds such
    squares (marks alone on a background-subtracted, empty level), the image has no padding.
    Non-finite pixels of a float image (NaN where a registration left no data) are padding
    wherever they are. Only a level that covers PADDING_MIN_SHARE of the image is searched, so
    an 8/16-bit image without padding costs nothing beyond its histogram (`counts`, the
    `value_histogram` of the image when the caller has it).
    """
    if image.ndim not in (2, 3) or image.size == 0:
        return None
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]  # an alpha channel says nothing about the sample
    padding = _level_padding(image, counts)
    if image.dtype.kind == "f":
        finite = np.isfinite(image)
        finite = finite if finite.ndim == 2 else finite.all(axis=2)
        if not finite.all():
            padding = ~finite if padding is None else padding | ~finite
    if padding is None or padding.all():
        return None  # an image of one level only has nothing else to keep
    return padding


def _level_padding(image: np.ndarray, counts: np.ndarray | None) -> np.ndarray | None:
    """The padding at the darkest and brightest finite levels (see `find_padding`)."""
    if image.dtype in (np.uint8, np.uint16):
        counts = value_histogram(image) if counts is None else counts
        candidates = _padding_levels(counts, image.size)
    else:
        finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image.reshape(-1)
        if finite.size == 0:
            return None
        candidates = list({finite.min().item(), finite.max().item()})
    kernel = _padding_square()
    found = []  # (pixels at the level, centres of the squares that fit there)
    for level in candidates:
        flat = image == level
        if flat.ndim == 3:
            flat = flat.all(axis=2)
        if np.count_nonzero(flat) < PADDING_MIN_SHARE * flat.size:
            continue
        cores = _square_centres(flat, kernel)
        if cores.any():
            found.append((flat, cores))
    if not found:
        return None
    padding = np.zeros(image.shape[:2], dtype=bool)
    for flat, cores in found:
        padding |= _components_holding(flat, cores)
    del found
    if _solid_share(~padding) < SAMPLE_MIN_SOLID:
        return None
    return padding


def _solid_share(sample: np.ndarray) -> float:
    """The share of `sample` that PADDING_MIN_EDGE squares inside it cover, estimated on 4x4
    blocks that are all sample (no full-size copies: this runs on the largest images)."""
    rows, cols = sample.shape[0] // 4, sample.shape[1] // 4
    blocks = sample[: rows * 4, : cols * 4].reshape(rows, 4, cols, 4).all(axis=(1, 3))
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (PADDING_MIN_EDGE // 4,) * 2)
    solid = cv2.dilate(_square_centres(blocks, kernel).view(np.uint8), kernel)
    return 16.0 * np.count_nonzero(solid) / max(1, np.count_nonzero(sample))


def _square_centres(flat: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """bool: the pixels of `flat` around which the kernel's square lies inside `flat`, within
    the image (what is outside the image counts as not flat)."""
    return cv2.erode(
        flat.view(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0
    ).view(bool)


# A flood fill per padding area; beyond this many areas the rest keep just their squares.
_MAX_FILLS = 64


def _components_holding(flat: np.ndarray, cores: np.ndarray) -> np.ndarray:
    """The 4-connected components of `flat` that hold a pixel of `cores` (which it uses up).

    Flood fills from one core pixel per component into a uint8 mask: labelling every
    component of `flat` (the sample's own specks at that level too) would take int32 labels,
    and listing the core pixels int64 indices, on images of 100 megapixels.
    """
    height, width = flat.shape
    filled = np.zeros((height + 2, width + 2), dtype=np.uint8)  # floodFill's border of 1
    inside = filled[1:-1, 1:-1]
    flat8, left = flat.view(np.uint8), cores.view(np.uint8)
    flags = 4 | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    for _ in range(_MAX_FILLS):
        seed = int(np.argmax(left))  # the first core pixel whose area is not filled yet
        y, x = divmod(seed, width)
        if not left[y, x]:
            return inside.view(bool)
        cv2.floodFill(flat8, filled, (x, y), 1, 0, 0, flags)
        cv2.subtract(left, inside, dst=left)
    squares = cv2.dilate(left, _padding_square()).view(bool)  # the areas not filled
    return inside.view(bool) | squares


def _padding_square() -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_RECT, (PADDING_MIN_EDGE, PADDING_MIN_EDGE))


def fill_padding(gray: np.ndarray, padding: np.ndarray, seed: int = 0) -> np.ndarray:
    """A copy of `gray` with its padding replaced by pixels drawn from the rest of the image.

    The network has never seen a large flat area and misreads the marks around one (its
    squeeze-and-excitation layers pool over whole tiles); pixels of the sample's own
    intensities, drawn at random with a fixed seed, keep each tile's statistics those of
    the sample. The caller clears the padding from the result.
    """
    if gray.ndim != 2 or padding.shape != gray.shape:
        raise ValueError(f"fill_padding needs a gray image and its mask, got {gray.shape}")
    sample = gray[~padding]
    rng = np.random.default_rng(seed)
    filled = gray.copy()
    filled[padding] = sample[rng.integers(0, sample.size, size=int(np.count_nonzero(padding)))]
    return filled


def value_histogram(image: np.ndarray, chunk_pixels: int = 1 << 22) -> np.ndarray:
    """Count of every value of an 8/16-bit image.

    OpenCV's histogram is about 8x faster than numpy's bincount here; it counts in float32,
    exact only up to 2**24, so it runs on chunks of fewer pixels and sums them as int64.
    """
    if image.size == 0:
        return np.zeros(np.iinfo(image.dtype).max + 1, dtype=np.int64)
    rows = np.ascontiguousarray(image).reshape(image.shape[0], -1) if image.ndim > 1 else image
    if rows.ndim == 1 or rows.shape[1] > chunk_pixels:
        rows = rows.reshape(-1, 1)
    levels = np.iinfo(image.dtype).max + 1
    counts = np.zeros(levels, dtype=np.int64)
    step = max(1, chunk_pixels // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        chunk = rows[start : start + step]
        counts += cv2.calcHist([chunk], [0], None, [levels], [0, levels]).ravel().astype(np.int64)
    return counts


def histogram_window(
    counts: np.ndarray,
    low_percentile: float = DEFAULT_LOW_PERCENTILE,
    high_percentile: float = DEFAULT_HIGH_PERCENTILE,
) -> IntensityWindow | None:
    """`intensity_window` of an 8/16-bit image from its `value_histogram` alone, or None when
    a level at either end is common enough to be padding (only the pixels can tell then)."""
    total = int(counts.sum())
    if total == 0 or _padding_levels(counts, total):
        return None
    low, high = _histogram_percentiles(counts, (low_percentile, high_percentile))
    return IntensityWindow(float(low), float(high))


def _padding_levels(counts: np.ndarray, total: int) -> list[int]:
    """The darkest and brightest levels of a histogram where they hold PADDING_MIN_SHARE of
    the `total` pixels: the only levels searched for padding."""
    occupied = np.flatnonzero(counts)
    extremes = {int(occupied[0]), int(occupied[-1])}
    return [v for v in extremes if counts[v] >= PADDING_MIN_SHARE * total]


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
