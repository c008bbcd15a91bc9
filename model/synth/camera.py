"""The light and the camera of a synthetic slide: uneven illumination, optical blur, sensor
noise, the tone curve and the final quantisation to 8 or 16 bits."""

from __future__ import annotations

import math

import cv2
import numpy as np

from model.synth.spec import SlideSpec


def illumination(spec: SlideSpec, rng: np.random.Generator) -> np.ndarray:
    """Slowly varying multiplicative light field: gradient, vignetting, uneven lamp."""
    height, width = spec.height, spec.width
    step = max(1, min(height, width) // 64)
    low_h, low_w = math.ceil(height / step) + 1, math.ceil(width / step) + 1
    yy = (np.arange(low_h, dtype=np.float32) * step - height / 2) / max(height, width)
    xx = (np.arange(low_w, dtype=np.float32) * step - width / 2) / max(height, width)
    theta = math.radians(spec.gradient_angle_deg)
    plane = spec.gradient * (math.cos(theta) * xx[None, :] + math.sin(theta) * yy[:, None])
    centre_y, centre_x = rng.normal(0.0, 0.15, 2)
    radius2 = (yy[:, None] - centre_y) ** 2 + (xx[None, :] - centre_x) ** 2
    light = (1.0 + plane) * (1.0 - spec.vignetting * radius2 / 0.5)
    patches = rng.standard_normal((6, 6)).astype(np.float32)
    patches = cv2.resize(patches, (low_w, low_h), interpolation=cv2.INTER_CUBIC)
    light = light * (1.0 + 0.05 * patches)
    light = np.clip(light, 0.2, 2.0).astype(np.float32)
    full = cv2.resize(light, (low_w * step, low_h * step), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(full[:height, :width])


def blur_and_noise(spec: SlideSpec, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The optical blur, then shot noise (growing with the signal) and read noise."""
    if spec.blur_sigma > 0:
        image = cv2.GaussianBlur(image, (0, 0), spec.blur_sigma, borderType=cv2.BORDER_REFLECT)
    variance = np.maximum(image, 0.0) * np.float32(spec.shot_noise**2)
    variance += np.float32(spec.read_noise**2)
    np.sqrt(variance, out=variance)
    variance *= rng.standard_normal(image.shape, dtype=np.float32)
    image += variance
    return image


_SHOULDER = 0.8
"""Where the highlights start to roll off towards the white level."""


def shoulder(image: np.ndarray) -> np.ndarray:
    """Soft saturation in place: linear up to the shoulder, then tanh towards 1."""
    np.maximum(image, 0.0, out=image)
    excess = image - np.float32(_SHOULDER)
    np.maximum(excess, 0.0, out=excess)
    image -= excess
    room = np.float32(1.0 - _SHOULDER)
    excess /= room
    np.tanh(excess, out=excess)
    excess *= room
    image += excess
    return image


def quantise(spec: SlideSpec, image: np.ndarray) -> np.ndarray:
    """The tone curve (shoulder, gamma, black and white level), then integers of the bit depth."""
    shoulder(image)
    if spec.gamma != 1.0:
        np.power(image, np.float32(spec.gamma), out=image)
    black, white = spec.black_level, spec.white_level
    if (black, white) != (0.0, 1.0):
        image *= np.float32(white - black)
        image += np.float32(black)
    np.clip(image, 0.0, 1.0, out=image)
    if spec.bit_depth == 8:
        return np.rint(image * 255.0).astype(np.uint8)
    full = float((1 << spec.signal_bits) - 1)
    offset = spec.dark_offset * full
    return np.rint(offset + image * (full - offset)).astype(np.uint16)
