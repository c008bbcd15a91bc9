"""The grid pitch of an image (autocorrelation) and the scale the network should see it at."""

from __future__ import annotations

import cv2
import numpy as np

from model.image.io import to_grayscale
from model.segment.single_pass import MAX_SCALE

PITCH_MIN_PX = 8.0  # smallest grid period looked for (marks >= 8 px, pitch >= 1.3 x mark)
PITCH_MAX_PX = 240.0  # largest (60-px marks at 3.5-4x pitch)
_PITCH_WORK_SIDE = 2048  # the estimate runs on a copy at most this large
_NOISE_SIGMAS = 8.0  # a lattice peak must stand this many noise sigmas above zero
_MIN_PEAK = 0.01  # ... and reach this normalized autocorrelation


def estimate_mark_pitch(image: np.ndarray) -> float | None:
    """The period (px) of the mark grid: length of the shortest lattice vector, or None.

    Works on the autocorrelation of a downsampled, high-passed copy: a grid of marks gives
    peaks at every lattice vector. The shortest strong peak whose second harmonic is there
    too is one lattice vector; the shortest clear peak in another direction is the other
    (rows may be unevenly spaced, so no harmonic is asked of it). Returns the shorter one,
    i.e. the smaller of the row and column pitch, refined to sub-pixel. No grid → None.
    """
    gray = to_grayscale(image)
    if gray.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        gray = gray.astype(np.float32)
    height, width = gray.shape
    factor = max(1.0, max(height, width) / _PITCH_WORK_SIDE)
    if factor > 1.0:
        size = (max(1, round(width / factor)), max(1, round(height / factor)))
        work = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    else:
        work = gray.astype(np.float32)
    min_lag = max(2.0, 0.8 * PITCH_MIN_PX / factor)
    max_lag = min(PITCH_MAX_PX / factor, min(work.shape) / 3.0)
    if max_lag <= 2 * min_lag:
        return None  # too small an image to hold two periods of any plausible grid

    # Clip window from every other row and column: a quarter of the sorting, same percentiles
    # to well within the precision a clip needs. Only float input can hold NaN or inf.
    sample = work[::2, ::2] if min(work.shape) >= 64 else work
    floating = np.issubdtype(gray.dtype, np.floating)
    if floating:
        sample = sample[np.isfinite(sample)]
    low, high = np.percentile(sample, (1.0, 99.5)) if sample.size else (0.0, 0.0)
    if high <= low:
        return None
    if floating:
        work = np.nan_to_num(work, nan=low)
    work = np.clip(work, low, high)
    work = (work - low) / (high - low)
    # Remove vignetting and gradients; periods up to max_lag keep >= 99 % of their amplitude.
    work -= _smooth(work, max_lag / 2.0)
    acf = _autocorrelation(work, int(np.ceil(max_lag)) + 2)
    if acf is None:
        return None
    lattice = _lattice_vectors(acf, min_lag, max_lag, work.size)
    if lattice is None:
        return None
    return float(min(np.hypot(*v) for v in lattice) * factor)


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a large sigma, computed on a copy downsampled by ~sigma/4 (fast)."""
    step = max(1, int(sigma // 4))
    if step == 1:
        return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    height, width = image.shape
    small = cv2.resize(
        image, (max(1, width // step), max(1, height // step)), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (0, 0), sigma / step, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _autocorrelation(work: np.ndarray, max_lag: int) -> np.ndarray | None:
    """Unbiased autocorrelation for lags |dy|, |dx| <= max_lag, normalized to acf(0) = 1.

    Zero padding makes it a linear (not circular) correlation, and dividing by the number of
    overlapping pixel pairs at each lag removes the bias towards short lags. OpenCV's DFT
    (packed real spectrum) rather than scipy.fft: as fast, and no ~0.1 s scipy import.
    """
    height, width = work.shape
    shape = (cv2.getOptimalDFTSize(height + max_lag), cv2.getOptimalDFTSize(width + max_lag))
    padded = np.zeros(shape, np.float32)
    padded[:height, :width] = work - work.mean()
    spectrum = cv2.dft(padded)
    full = cv2.idft(cv2.mulSpectrums(spectrum, spectrum, 0, conjB=True), flags=cv2.DFT_REAL_OUTPUT)
    if full[0, 0] <= 0:
        return None
    lags = np.arange(-max_lag, max_lag + 1)
    acf = full[np.ix_(lags % shape[0], lags % shape[1])].astype(np.float64)
    acf /= np.outer(height - np.abs(lags), width - np.abs(lags))
    return (acf / acf[max_lag, max_lag]).astype(np.float32)


def _lattice_vectors(
    acf: np.ndarray, min_lag: float, max_lag: float, pixels: int
) -> list[np.ndarray] | None:
    """The shortest lattice vector and, if found, the shortest one in another direction."""
    centre = acf.shape[0] // 2
    dy, dx = np.mgrid[-centre : centre + 1, -centre : centre + 1]
    radius = np.hypot(dy, dx)
    annulus = (radius >= min_lag) & (radius <= max_lag)
    # Bartlett: an autocorrelation estimate has variance ~ sum(acf(j)^2) / N over the short-range
    # correlation (grains, the marks themselves); lattice peaks must stand well above it.
    short_range = radius < min_lag
    noise = float(np.sqrt(np.sum(acf[short_range] ** 2) / pixels))
    floor = max(_MIN_PEAK, _NOISE_SIGMAS * noise)
    local_max = cv2.dilate(acf, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    peaks = (acf == local_max) & (acf > floor)
    # Half plane: the autocorrelation is symmetric, v and -v are the same peak.
    peaks &= annulus & ((dy > 0) | ((dy == 0) & (dx > 0)))
    ys, xs = np.nonzero(peaks)
    if len(ys) == 0:
        return None
    heights = acf[ys, xs]
    vectors = np.stack([dy[ys, xs], dx[ys, xs]], axis=1).astype(np.float64)
    by_length = np.argsort(np.hypot(vectors[:, 0], vectors[:, 1]), kind="stable")

    first = None
    for index in by_length:
        if heights[index] >= 0.5 * heights.max():
            first = _refine(acf, vectors[index], max_lag, floor / 2, need_harmonic=True)
            if first is not None:
                first_height = heights[index]
                break
    if first is None:
        return None
    result = [first]
    for index in by_length:
        vector = vectors[index]
        sine = abs(first[0] * vector[1] - first[1] * vector[0])
        sine /= np.hypot(*first) * np.hypot(*vector)
        # More than 30° from the first vector: the other lattice direction. A peak under half
        # the first vector's length must be as strong as a first vector: weaker, it is the
        # marks' own shape (the two arms of aligned crescents), not a near-square grid.
        short = np.hypot(*vector) < 0.5 * np.hypot(*first)
        if sine > 0.5 and heights[index] >= (0.5 if short else 0.25) * first_height:
            second = _refine(acf, vector, max_lag, floor / 2, need_harmonic=False)
            if second is not None:
                result.append(second)
            break
    return result


def _refine(
    acf: np.ndarray, vector: np.ndarray, max_lag: float, floor: float, *, need_harmonic: bool
) -> np.ndarray | None:
    """Sub-pixel lattice vector from the peaks at k·vector (k = 1, 2, ...), least squares.

    With `need_harmonic`, the peak at 2·vector must be there when it fits (a grid repeats; a
    lone peak is chance texture) and the answer is None otherwise.
    """
    centre = acf.shape[0] // 2
    search = max(1, round(0.15 * np.hypot(*vector)))
    found: list[tuple[int, np.ndarray]] = []
    for k in range(1, 5):
        guess = k * (vector if not found else _fit(found))
        if np.hypot(*guess) > max_lag - 1:
            break
        position = _peak_near(acf, guess + centre, search, floor)
        if position is None:
            break
        found.append((k, position - centre))
    if not found:
        return None
    fits_twice = 2 * np.hypot(*vector) <= max_lag - 1
    if need_harmonic and fits_twice and len(found) < 2:
        return None
    return _fit(found)


def _fit(found: list[tuple[int, np.ndarray]]) -> np.ndarray:
    ks = np.array([k for k, _ in found], dtype=np.float64)
    points = np.stack([p for _, p in found])
    return (ks[:, None] * points).sum(axis=0) / (ks**2).sum()


def _peak_near(acf: np.ndarray, guess: np.ndarray, search: int, floor: float) -> np.ndarray | None:
    """Sub-pixel position of the maximum within `search` px of `guess`, if it is a real peak."""
    cy, cx = round(guess[0]), round(guess[1])
    y0, y1 = max(cy - search, 1), min(cy + search + 1, acf.shape[0] - 1)
    x0, x1 = max(cx - search, 1), min(cx + search + 1, acf.shape[1] - 1)
    if y1 <= y0 or x1 <= x0:
        return None
    patch = acf[y0:y1, x0:x1]
    iy, ix = np.unravel_index(int(np.argmax(patch)), patch.shape)
    py, px = y0 + iy, x0 + ix
    if acf[py, px] < floor or (py in (y0, y1 - 1) and y0 > 1) or (px in (x0, x1 - 1) and x0 > 1):
        return None  # too weak, or the maximum is on the search border (a slope, not a peak)
    dy = _parabola(acf[py - 1 : py + 2, px])
    dx = _parabola(acf[py, px - 1 : px + 2])
    return np.array([py + dy, px + dx])


def _parabola(values: np.ndarray) -> float:
    """Offset of the vertex of a parabola through three samples at -1, 0, 1 (clamped)."""
    left, middle, right = (float(v) for v in values)
    curvature = left - 2 * middle + right
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


# Auto scale: shrink only grids with a pitch >= 1.5 x TARGET_PITCH_PX, and never below it, i.e.
# only marks beyond the 8-60 px the model is trained on (pitch <= ~3.3 mark sizes). Within that
# range full resolution is best: on 14 unseen slides with 35-60 px marks the shipped model's
# pooled Dice is 0.922 at scale 1, 0.918 / 0.912 / 0.898 at 0.8 / 0.67 / 0.5
# (benchmarks/scale_rule.py --network); the earlier 80-px target shrank grids from 120 px on.
TARGET_PITCH_PX = 160.0
_SCALE_STEP = 0.5  # scale = 1 / k with k = 1, 1.5, 2, 2.5, ...: few distinct, reproducible sizes
# A user-given scale may also enlarge (e.g. 1.5 sharpens outlines of marks under ~15 px at
# 2.25x the network time). The default auto scale never does, to keep prediction fast
# (predict_image enlarges only for a second look: when a grid shows but no marks were found,
# or when a grid of small marks came out with uncertain outlines).
# MAX_SCALE (pipeline.py) caps it: beyond 2x, 8 px marks are 16+ px, and time and memory grow
# as scale².
#
# The accurate policy (SegmentOptions.accurate, `--accurate`) trades time for outlines: it
# enlarges grids with a pitch under SMALL_PITCH_PX (marks under ~20-35 px) by SMALL_MARK_SCALE.
# Pooled Dice of the shipped model (frs11) on four 48-slide unseen sets (seeds 600000+,
# 700000+, 800000+, 900000+): 0.9241 / 0.9443 / 0.9426 / 0.9471 at full resolution, 0.9336 /
# 0.9492 / 0.9497 / 0.9510 enlarged 1.5x, 0.9356 / 0.9512 / 0.9515 / 0.9515 enlarged 2x (4x the
# network time on those slides; BENCHMARKS.md, session 18). Enlarging every slide, large faint
# marks included, scores lower (frs8 at 1.5x: 0.9291 / 0.9495 / - / 0.9509). Cut-offs of 50-80
# px scored within 0.0005 of 60 on the 1.5x policy, on the sets it was chosen on.
SMALL_PITCH_PX = 60.0
SMALL_MARK_SCALE = MAX_SCALE


def auto_scale(pitch: float | None, *, accurate: bool = False) -> float:
    """Scale factor for an image whose grid pitch is `pitch` px (1.0 when unknown): <= 1, or
    SMALL_MARK_SCALE for a small pitch under the accurate policy."""
    if pitch is None or not np.isfinite(pitch) or pitch <= 0:
        return 1.0
    if accurate and pitch < SMALL_PITCH_PX:
        return SMALL_MARK_SCALE
    divisor = np.floor(pitch / TARGET_PITCH_PX / _SCALE_STEP) * _SCALE_STEP
    return 1.0 if divisor < 1.5 else float(1.0 / divisor)
