"""Fast RGB overlays of marks on a microscopy image (OpenCV only): gray background, tinted marks,
and the id of each registered mark written next to it."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.spatial import cKDTree

from model.image.normalize import intensity_window
from model.register.records import MarkRecord

ALPHA = 0.35
"""Weight of the tint colour over the background inside marks."""

MASK_COLOUR = (255, 40, 40)
"""Tint of a plain mask (no ids): red, as in the legacy overlay."""

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MIN_FONT_SCALE = 0.25  # below this Hershey digits are unreadable: ids are left out
_MAX_FONT_SCALE = 4.0
_STRETCH_SAMPLES = 1_000_000
# Marks are tinted this many pixels at a time: the blend's temporaries (~12 bytes a pixel)
# stay small next to the RGB result on a 20000² slide.
_BAND_PIXELS = 4 * 2**20


def render_overlay(
    background: np.ndarray,
    labels_or_mask: np.ndarray,
    marks: Sequence[MarkRecord] | None = None,
) -> np.ndarray:
    """RGB uint8 image of `background` (gray, contrast-stretched) with the marks tinted.

    `labels_or_mask` is a label image or a mask of the same size (the background is resized
    to it when it differs). With `marks`, each id gets its own colour and its number is drawn
    at the mark centre, scaled to the grid pitch (left out when the pitch is too small to read
    it); without, every mark is tinted red.
    """
    labels = np.asarray(labels_or_mask)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise ValueError(f"labels/mask must be 2-D, got shape {labels.shape}")
    height, width = labels.shape
    gray = _gray_uint8(np.asarray(background))
    if gray.shape != (height, width):
        shrinking = gray.shape[0] > height or gray.shape[1] > width
        gray = cv2.resize(
            gray,
            (width, height),
            interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
        )
    by_id = marks is not None and labels.dtype != np.bool_
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    band = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, band):
        rows = slice(top, top + band)
        rgb[rows] = _tinted(gray[rows], labels[rows], by_id)
    if marks:
        _draw_ids(rgb, marks)
    return rgb


def _tinted(gray: np.ndarray, labels: np.ndarray, by_id: bool) -> np.ndarray:
    """RGB of a band of rows: the gray image, marks tinted red or (`by_id`) by their id."""
    rgb = cv2.cvtColor(np.ascontiguousarray(gray), cv2.COLOR_GRAY2RGB)
    foreground = (labels > 0).view(np.uint8)
    if by_id:
        # A hashed palette so that neighbouring ids (±1, ±cols) rarely share a colour.
        index = ((labels.astype(np.uint32) * 37) % 251).astype(np.uint8)
        colours = cv2.LUT(cv2.merge([index, index, index]), _palette())
        blended = cv2.addWeighted(rgb, 1.0 - ALPHA, colours, ALPHA, 0.0)
    else:
        # Blend with a constant colour: scale the image, add the scaled colour.
        tint = (*(ALPHA * c for c in MASK_COLOUR), 0.0)
        blended = cv2.add(cv2.convertScaleAbs(rgb, alpha=1.0 - ALPHA), tint)
    cv2.copyTo(blended, foreground, rgb)
    return rgb


def _gray_uint8(image: np.ndarray) -> np.ndarray:
    """Gray uint8 view of any image, stretched between its 0.5 and 99.5 percentiles (of the
    sample: padding and non-finite pixels left out)."""
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.dtype == np.bool_:
        return image.view(np.uint8) * np.uint8(255)
    if image.ndim == 3:
        if image.dtype not in (np.uint8, np.uint16, np.float32):
            image = image.astype(np.float32)
        code = cv2.COLOR_RGBA2GRAY if image.shape[-1] == 4 else cv2.COLOR_RGB2GRAY
        image = cv2.cvtColor(np.ascontiguousarray(image), code)
    if image.ndim != 2:
        raise ValueError(f"background must be a gray or RGB(A) image, got shape {image.shape}")
    if image.dtype in (np.uint8, np.uint16):
        # Exact from the histogram, with padding left out: a mosaic's border does not dim it.
        window = intensity_window(image, 0.5, 99.5)
        low, high = window.low, window.high
    else:
        step = max(1, int(np.sqrt(image.size / _STRETCH_SAMPLES)))
        sample = image[::step, ::step]
        sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
        low, high = 0.0, 1.0
        if sample.size:
            low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if high <= low:
        high = low + 1.0
    if image.dtype in (np.uint8, np.uint16):
        # A lookup table over all possible values is faster than arithmetic on every pixel.
        values = np.arange(256 if image.dtype == np.uint8 else 65536, dtype=np.float32)
        table = np.clip((values - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)
        return table[image]
    scaled = (image.astype(np.float32) - low) * np.float32(255.0 / (high - low))
    np.nan_to_num(scaled, copy=False, nan=0.0)  # no data shows black
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def _palette() -> np.ndarray:
    """(1, 256, 3) uint8 table of bright colours (golden-ratio hues)."""
    hue = (np.arange(256) * 0.618033988749895 % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hue, np.full(256, 220, np.uint8), np.full(256, 255, np.uint8)], axis=-1)
    return cv2.cvtColor(hsv[None, :, :], cv2.COLOR_HSV2RGB)


def _draw_ids(rgb: np.ndarray, marks: Sequence[MarkRecord]) -> None:
    """Write each id just above its mark (so the mark stays visible), sized to the pitch."""
    centres = np.array([(m.x, m.y) for m in marks], dtype=np.float64)
    if centres.shape[0] >= 2:
        distance, _ = cKDTree(centres).query(centres, k=2)
        pitch = float(np.median(distance[:, 1]))
    else:
        x0, y0, x1, y1 = marks[0].bbox
        pitch = float(max(x1 - x0, y1 - y0)) * 2.0
    widest = max(len(str(m.id)) for m in marks)
    unit_width, _ = cv2.getTextSize("0" * widest, _FONT, 1.0, 1)[0]
    scale = min(_MAX_FONT_SCALE, 0.55 * pitch / max(unit_width, 1))
    if scale < _MIN_FONT_SCALE:
        return
    thickness = max(1, round(scale * 1.2))
    sizes = {n: cv2.getTextSize("0" * n, _FONT, scale, thickness)[0] for n in range(1, widest + 1)}
    outline = thickness + max(1, thickness // 2 + 1)
    for mark in marks:
        text = str(mark.id)
        w, h = sizes[len(text)]
        top = mark.bbox[1]
        baseline = top - 2 if top - 2 - h >= 0 else mark.bbox[3] + h + 2  # below at the top edge
        org = (round(mark.x - w / 2), int(baseline))
        cv2.putText(rgb, text, org, _FONT, scale, (0, 0, 0), outline, cv2.LINE_AA)
        cv2.putText(rgb, text, org, _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
