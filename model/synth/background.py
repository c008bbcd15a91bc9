"""The matrix a synthetic slide's marks sit on: crystal grain, clumps, mottling, fibrous
ridges and streaks, dark voids and large blotches."""

from __future__ import annotations

import math

import cv2
import numpy as np

from model.synth.noise import normal_quantile, smooth_noise
from model.synth.spec import SlideSpec


def background(
    spec: SlideSpec,
    rng: np.random.Generator,
    fine: np.ndarray,
    style_rng: np.random.Generator,
) -> np.ndarray:
    """Matrix-crystal texture: log-normal mix of crisp grain, clumps, 5-15 px mottling and
    worm-like fibrous ridges, with dark voids (holes in the matrix layer). The streaks and
    blotches of the opt-in styles draw from `style_rng`."""
    shape = (spec.height, spec.width)
    field = _texture(spec, rng, fine, style_rng)
    k = np.float32(spec.texture_contrast)
    field *= k
    field -= k * k / 2
    background = np.exp(field, out=field)
    np.minimum(background, np.float32(8.0), out=background)
    if spec.void_fraction > 0 and spec.void_depth > 0:
        voids = smooth_noise(rng, shape, spec.grain_size * 2.0)
        threshold = float(normal_quantile(1.0 - spec.void_fraction))
        # Soft step: 0 in the matrix, ~1 in the middle of a void.
        voids -= np.float32(threshold)
        np.clip(voids, 0.0, 1.0, out=voids)
        voids *= np.float32(-spec.void_depth)
        voids += np.float32(1.0)
        background *= voids
    if spec.blotch_strength > 0:
        background *= _blotches(spec, style_rng)
    background *= np.float32(spec.background_level)
    # The brightest crystals saturate just below the marks' level (flat bright patches).
    np.minimum(background, np.float32(0.95), out=background)
    return background


def _texture(
    spec: SlideSpec,
    rng: np.random.Generator,
    fine: np.ndarray,
    style_rng: np.random.Generator,
) -> np.ndarray:
    """The log-texture of the matrix with unit std: the components, weighted and summed."""
    shape = (spec.height, spec.width)
    grain = spec.grain_size
    field = fine.copy()
    weights = [1.0]
    if spec.clump_strength > 0:
        field += spec.clump_strength * smooth_noise(rng, shape, grain * 2.5)
        weights.append(spec.clump_strength)
    if spec.patch_strength > 0:
        field += spec.patch_strength * smooth_noise(rng, shape, grain * 6.0)
        weights.append(spec.patch_strength)
    if spec.ridge_strength > 0:
        # Bright where a smooth field crosses zero: thin, curly, connected fibres.
        field += _ridges(smooth_noise(rng, shape, grain * 2.8), spec.ridge_strength)
        weights.append(spec.ridge_strength)
    if spec.streak_strength > 0:
        field += _bright_tail(_streak_noise(spec, style_rng), spec.streak_strength)
        weights.append(spec.streak_strength)
    field *= np.float32(1.0 / math.sqrt(sum(w * w for w in weights)))
    return field


def _ridges(noise: np.ndarray, strength: float) -> np.ndarray:
    """Unit noise turned into bright lines where it crosses zero, std `strength`, in place."""
    ridge = np.abs(noise, out=noise)
    ridge -= np.float32(0.798)  # mean of |N(0, 1)|
    ridge *= np.float32(-strength / 0.603)  # unit std, bright ridges
    return ridge


def _bright_tail(noise: np.ndarray, strength: float) -> np.ndarray:
    """Unit noise kept only above +0.5 std: sparse bright lines on a flat ground, rescaled to
    std `strength`, in place."""
    noise -= np.float32(0.5)
    np.maximum(noise, 0.0, out=noise)
    noise -= np.float32(noise.mean())
    noise *= np.float32(strength / max(float(noise.std()), 1e-6))
    return noise


def _streak_noise(spec: SlideSpec, rng: np.random.Generator) -> np.ndarray:
    """Unit noise smeared along `streak_angle_deg` over `streak_length` px: its zero lines
    (the ridges) run as long, nearly parallel fibres."""
    shape = (spec.height, spec.width)
    noise = smooth_noise(rng, shape, max(spec.grain_size, 0.8))
    length = max(3, int(spec.streak_length) | 1)
    kernel = np.zeros((length, length), np.float32)
    theta = math.radians(spec.streak_angle_deg)
    half = (length - 1) / 2
    dx, dy = half * math.cos(theta), half * math.sin(theta)
    start = (round((half - dx) * 16), round((half - dy) * 16))
    end = (round((half + dx) * 16), round((half + dy) * 16))
    cv2.line(kernel, start, end, 1.0, 1, cv2.LINE_AA, 4)
    kernel /= kernel.sum()
    noise = cv2.filter2D(noise, -1, kernel, borderType=cv2.BORDER_REFLECT)
    noise -= noise.mean()
    noise /= max(float(noise.std()), 1e-6)
    return noise


def _blotches(spec: SlideSpec, rng: np.random.Generator) -> np.ndarray:
    """A log-normal factor with mean 1: large dark and bright patches over the matrix."""
    field = smooth_noise(rng, (spec.height, spec.width), spec.blotch_size)
    k = np.float32(spec.blotch_strength)
    field *= k
    field -= k * k / 2
    return np.exp(field, out=field)
