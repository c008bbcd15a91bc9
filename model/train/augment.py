"""Augmentation of training crops (NumPy + cv2, cheap enough to run in the training process):
the photometric changes every crop may get, and the real-slide disturbances of --disturb."""

from __future__ import annotations

import cv2
import numpy as np

from model.train.data import mark_extents, marks_are_dark

AUGMENTATIONS = {
    "scale": "log-uniform zoom 0.5-2x: crop tile/scale px, resize to tile",
    "flip_rot90": "random 90° turn and horizontal flip (all 8 symmetries)",
    "blur": "p 0.25, Gaussian sigma 0.3-1.5 px",
    "clahe": "p 0.2, clip limit 1.5-3, 8x8 grid",
    "brightness_contrast": "p 0.8, contrast x0.75-1.3 about the mean, brightness +-0.1",
    "gamma": "p 0.5, gamma 0.7-1.4 (log-uniform)",
    "noise": "p 0.5, additive Gaussian sigma 0.005-0.05",
}


DISTURBANCES = {
    "dust": "1-4 bright (dark for dark marks) soft round blobs, 0.5-4x the crop's mark size "
    "(64 px at most), at the marks' brightness or beyond, clear of every mark; their truth "
    "is background",
    "uneven_light": "gain ramp 0.35-1 to 0.35-1 across the crop in a random direction, "
    "half the time plus a glow ramp of up to 0.3",
    "defocus": "Gaussian sigma 0.8-2.5 px, at most 0.15x the crop's mark size (0.8 at least); "
    "the truth stays sharp",
}
"""What `TrainConfig.disturb` adds, each with that chance per crop, before AUGMENTATIONS'
photometric changes: slides with dust, uneven light or out of focus (benchmarks/robustness.py)."""

DEFAULT_MARK_PX = 12.0  # mark size for a crop without marks (sizes its dust, caps its blur)


def disturb_crop(
    crop: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    chance: float,
    *,
    dark_marks: bool | None = None,
) -> np.ndarray:
    """DISTURBANCES on a float32 [0, 1] crop, each with `chance`; the mask is unchanged.
    `dark_marks` is the whole image's polarity (None: judged from the crop's own marks)."""
    dust, uneven, defocus = rng.random(3) < chance
    mark_px = _crop_mark_px(mask) if dust or defocus else DEFAULT_MARK_PX
    if dust:
        crop = _add_dust(crop, mask, rng, mark_px, dark_marks=dark_marks)
    if uneven:
        crop = _uneven_light(crop, rng)
    if defocus:
        # Capped by the mark size: blurred further, small marks vanish into the grain and
        # the crop would teach nothing but guessing.
        sigma = min(float(rng.uniform(0.8, 2.5)), max(0.8, 0.15 * mark_px))
        crop = cv2.GaussianBlur(crop, (0, 0), sigma)
    return np.clip(crop, 0.0, 1.0).astype(np.float32, copy=False)


def _crop_mark_px(mask: np.ndarray) -> float:
    """Median mark extent in a crop; marks zoomed below the object-size floor still count."""
    if not mask.any():
        return DEFAULT_MARK_PX
    extents = mark_extents(mask)
    if not extents.size:
        extents = mark_extents(mask, min_area=1)
    return float(np.median(extents))


def _add_dust(
    crop: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    mark_px: float,
    *,
    dark_marks: bool | None = None,
) -> np.ndarray:
    """Soft round blobs as bright as the marks or brighter (darker, for dark marks), placed
    where they touch no mark: the network must learn that a bright blob off the grid is not
    a mark. `dark_marks` None judges the polarity from the crop's marks (bright without any);
    a crop without marks gets blobs beyond its brightest (darkest) pixel."""
    marks = mask > 0
    if dark_marks is None:
        dark_marks = marks_are_dark(crop, mask)
    if dark_marks:
        high = float(np.percentile(crop[marks], 25)) if marks.any() else float(crop.min())
        low, high = 0.0, max(high, 0.0)
    else:
        low = float(np.percentile(crop[marks], 75)) if marks.any() else float(crop.max())
        low, high = min(low, 1.0), 1.0
    clearance = cv2.distanceTransform((~marks).astype(np.uint8), cv2.DIST_L2, 5)
    height, width = crop.shape
    out = crop.copy()
    for _ in range(int(rng.integers(1, 5))):
        diameter = min(mark_px * float(np.exp(rng.uniform(np.log(0.5), np.log(4.0)))), 64.0)
        radius = max(2.0, diameter / 2.0)
        softness = float(rng.uniform(0.5, 1.5))
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        if clearance[y, x] < radius + 3.0 * softness + 2.0:
            continue  # no room for the blob and its soft rim here: fewer blobs on crowded crops
        axes = (round(radius), round(radius * float(rng.uniform(0.7, 1.0))))
        disc = np.zeros(crop.shape, np.float32)
        cv2.ellipse(disc, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        alpha = cv2.GaussianBlur(disc, (0, 0), softness)
        alpha *= np.float32(rng.uniform(0.8, 1.0))
        level = np.float32(rng.uniform(low, high))
        out += alpha * (level - out)
    return out


def _uneven_light(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A gain ramp (and half the time a glow ramp) across the crop in a random direction."""
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    ys, xs = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]].astype(np.float32)
    along = np.cos(angle) * xs + np.sin(angle) * ys
    along = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    start, end = rng.uniform(0.35, 1.0, 2)
    gain = np.float32(start) + np.float32(end - start) * along
    out = crop * gain
    if rng.random() < 0.5:
        out += np.float32(rng.uniform(0.0, 0.3)) * along
    return out


def augment_intensity(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric changes (see AUGMENTATIONS) on a float32 [0, 1] crop; returns [0, 1]."""
    if rng.random() < 0.25:
        crop = cv2.GaussianBlur(crop, (0, 0), float(rng.uniform(0.3, 1.5)))
    if rng.random() < 0.2:
        clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(1.5, 3.0)), tileGridSize=(8, 8))
        as_u8 = np.rint(np.clip(crop, 0.0, 1.0) * 255.0).astype(np.uint8)
        crop = clahe.apply(as_u8).astype(np.float32) / np.float32(255.0)
    if rng.random() < 0.8:
        mean = float(crop.mean())
        contrast = float(rng.uniform(0.75, 1.3))
        brightness = float(rng.uniform(-0.1, 0.1))
        crop = (crop - mean) * np.float32(contrast) + np.float32(mean + brightness)
    if rng.random() < 0.5:
        gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
        crop = np.power(np.clip(crop, 0.0, 1.0), np.float32(gamma))
    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.005, 0.05))
        crop = crop + rng.standard_normal(crop.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(crop, 0.0, 1.0).astype(np.float32, copy=False)
