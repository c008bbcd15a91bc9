"""Whole-image prediction: padding left out, the scale chosen from the grid pitch, and at most
one second look (enlarged) when small marks came out uncertain or a grid showed no marks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from model.image.io import to_grayscale
from model.image.normalize import fill_padding, find_padding
from model.segment.pitch import SMALL_MARK_SCALE, SMALL_PITCH_PX, auto_scale, estimate_mark_pitch
from model.segment.runtime import Runtime
from model.segment.segmenter import Segmenter
from model.segment.single_pass import (
    MAX_SCALE,
    Segmentation,
    SegmentOptions,
    remove_small_components,
    segment_image,
)
from model.segment.tiles import Tile, plan_tiles


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of the image the network sees at `scale`."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def count_tiles(shape: tuple[int, int], options: SegmentOptions, scale: float = 1.0) -> int:
    """Number of network tiles `predict_image` runs for an image of `shape` at `scale`."""
    height, width = scaled_shape(shape[0], shape[1], scale)
    return len(plan_tiles(height, width, options.tile_size, options.overlap))


# A second look at small faint marks: when the image has a clear mark grid but the network,
# run at the auto scale, marks less than MISSED_GRID_MASK_FRACTION of it, it runs once more on
# the image enlarged by MISSED_GRID_RETRY_SCALE, and keeps that result if it marks at least
# RETRY_GAIN times as many pixels. A grid of marks covers 1-20 % of a slide; faint 8-10 px
# marks can fall below what the network sees at full resolution (unseen seed 700010: Dice
# 0.02 at scale 1, 0.81 enlarged 1.5x). Of 444 unseen generated slides it fired on that one
# only; the smallest mask share of the others was 1.1 % (benchmarks/model_accuracy.py
# --per-slide). Slides it does not fire on cost nothing.
# A mask under SPARSE_GRID_MASK_FRACTION that holds fewer marks than SPARSE_GRID_NODE_SHARE of
# the grid nodes the pitch implies (image area / pitch²) is the same miss with a few marks
# caught: a fine-tune that marked 0.32 % of seed 700010 in scattered pieces of its marks
# scored 0.14 there without a second look (BENCHMARKS.md, session 14). Marks that were found
# cover more than 1 % of a generated slide (the fewest: 1.1 % of 443 slides), so the count
# is made on few masks.
MISSED_GRID_MASK_FRACTION = 0.002
SPARSE_GRID_MASK_FRACTION = 0.01
SPARSE_GRID_NODE_SHARE = 0.2
MISSED_GRID_RETRY_SCALE = 1.5
RETRY_GAIN = 2.0


def missed_grid_retry_scale(pitch: float | None, scale: float, mask: np.ndarray) -> float | None:
    """The scale to segment again at when a grid was seen but (almost) no marks were found:
    under MISSED_GRID_MASK_FRACTION of the image, or a few marks of a dense grid (see
    SPARSE_GRID_NODE_SHARE). None also after an enlarged pass (the accurate policy's), which
    already looked closer; after that pass ran out of memory, `scale` is the fallback's.
    `pitch` is the image's, in the pixels of `mask`."""
    if pitch is None or scale > 1.0:
        return None
    share = np.count_nonzero(mask) / mask.size
    if share >= MISSED_GRID_MASK_FRACTION:
        if share >= SPARSE_GRID_MASK_FRACTION:
            return None
        marks = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
        if marks >= SPARSE_GRID_NODE_SHARE * mask.size / pitch**2:
            return None
    retry = min(scale * MISSED_GRID_RETRY_SCALE, MAX_SCALE)
    return retry if retry > scale else None


# A second look at blurred outlines: when a grid of small marks (pitch under SMALL_PITCH_PX)
# was segmented at full resolution and its outlines came out uncertain, i.e. pixels with a
# probability between UNCERTAIN_BAND number UNCERTAIN_OUTLINE_RATIO or more of the marked
# pixels, it segments again enlarged by SMALL_MARK_SCALE and keeps that. Faint or grainy slides
# of small marks are where enlarging pays (+0.01-0.06 Dice on such slides), while crisp slides
# gain 0.000-0.004 for 4x the network time. The ratio was chosen with a 1.5x look on frs11's
# slides 600000+ and 700000+; with the 2x look the four 48-slide sets of the accurate policy's
# comment go 0.9241 / 0.9443 / 0.9426 / 0.9471 -> 0.9351 / 0.9513 / 0.9503 / 0.9500 (a second
# look on 9-16 of 48 slides each; 800000+ was held out of both choices). A slide it fires on
# costs the first pass plus 4x (BENCHMARKS.md, session 18).
UNCERTAIN_BAND = (0.2, 0.8)
UNCERTAIN_OUTLINE_RATIO = 0.5


def outline_uncertainty(probabilities: np.ndarray, mask: np.ndarray) -> float:
    """Pixels with a probability inside UNCERTAIN_BAND per marked pixel (0 without marks)."""
    marked = np.count_nonzero(mask)
    if marked == 0:
        return 0.0
    low, high = UNCERTAIN_BAND
    uncertain = np.count_nonzero((probabilities > low) & (probabilities < high))
    return uncertain / marked


def outline_look_applies(pitch: float | None, scale: float) -> bool:
    """Whether a pass at `scale` may be followed by the outline look: a full-resolution pass
    over a grid of small marks (the look then reads its probabilities)."""
    return pitch is not None and pitch < SMALL_PITCH_PX and scale == 1.0


def uncertain_outline_retry_scale(
    pitch: float | None, scale: float, segmentation: Segmentation
) -> float | None:
    """SMALL_MARK_SCALE when a full-resolution pass over a grid of small marks left uncertain
    outlines (see UNCERTAIN_OUTLINE_RATIO), else None."""
    if not outline_look_applies(pitch, scale):
        return None
    ratio = outline_uncertainty(segmentation.probabilities, segmentation.mask)
    return SMALL_MARK_SCALE if ratio >= UNCERTAIN_OUTLINE_RATIO else None


# The automatic scale enlarges no image beyond this many pixels (a 7000² slide at 2x): an
# enlarged pass holds the enlarged image, its probabilities and a float32 copy of them while
# they are brought back, so larger slides keep full resolution and stay within a few GB
# (a 20000² slide: under 4 GB, BENCHMARKS.md). An explicit --scale is run as asked.
MAX_ENLARGED_PIXELS = 200_000_000


def too_large_to_enlarge(shape: tuple[int, int], scale: float) -> bool:
    """Whether the automatic policy must not look at an image of `shape` enlarged by `scale`."""
    height, width = scaled_shape(shape[0], shape[1], scale)
    return scale > 1.0 and height * width > MAX_ENLARGED_PIXELS


def options_for(segmenter: Segmenter, options: SegmentOptions) -> SegmentOptions:
    """`options` as `predict_image` runs them with `segmenter`: a GPU segmenter wants more
    tiles per call than the CPU default hands it."""
    runtime = getattr(segmenter, "runtime", None)
    if isinstance(runtime, Runtime) and runtime.batch_size > options.batch_size:
        return dataclasses.replace(options, batch_size=runtime.batch_size)
    return options


def device_pipeline(segmenter: Segmenter) -> Any:
    """The segmenter's whole-image pass on its torch device (a `device_pipeline.DevicePipeline`,
    not imported here: it imports this module), where it has one that is on
    (`TorchSegmenter.device_pipeline`); None runs the CPU path below."""
    make = getattr(segmenter, "device_pipeline", None)
    return make() if make is not None else None


def predict_image(
    image: np.ndarray,
    segmenter: Segmenter,
    options: SegmentOptions = SegmentOptions(),
    *,
    on_tiles_planned: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_pass: Callable[[float], None] | None = None,
    on_tile: Callable[[Tile, np.ndarray, np.ndarray], None] | None = None,
    keep_probabilities: bool = True,
) -> Segmentation:
    """Segment an image of any size, optionally resampled first; output has its size.

    `options.scale` None picks a scale from the grid pitch (`auto_scale`, enlarging small marks when
    `options.accurate`) and takes at most one second look: when small marks came out of a
    full-resolution pass with uncertain outlines, it looks again enlarged and keeps that
    (`uncertain_outline_retry_scale`); otherwise (or when that look runs out of memory), when
    a grid is there but no marks were found, it looks again enlarged
    (`missed_grid_retry_scale`) and keeps that look if it clearly finds more. No look goes
    back to a scale that ran out of memory. A number runs at exactly that scale (1.0 = full
    resolution). Away from 1 the image is resampled (`resample`), segmented with
    `segment_image`, and the probabilities are resized back and thresholded at the input's
    size (the returned `grid` and `window` then describe the resampled image, and `scale`
    says by how much).

    `on_tiles_planned` gets the number of network tiles, again with the new total if a second
    pass is added; `on_pass` gets the scale of each pass before it starts; `on_tile` sees
    every tile of every pass (see `segment_image`); the result's `scale` says which was kept.

    Padding (`find_padding`: a mosaic's border, a rotated image's corners) is background in
    the result and no network tile sees it: the image is cropped to the box around the
    sample, and padding left inside that box is filled with pixels of the sample's own
    intensities. The result's `offset` then says where that box starts, and `grid` describes
    it.

    With `keep_probabilities` False the result's `probabilities` is None: a GPU then copies
    only the mask back (see `device_pipeline`).
    """
    gray = to_grayscale(image)
    padding = find_padding(gray)
    callbacks = (on_tiles_planned, on_progress, on_pass, on_tile)
    if padding is None:
        found = _predict_gray(gray, segmenter, options, *callbacks, keep_probabilities)
        return found if keep_probabilities else dataclasses.replace(found, probabilities=None)
    rows, cols = np.flatnonzero(~padding.all(axis=1)), np.flatnonzero(~padding.all(axis=0))
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    sample, inner_padding = gray[box], padding[box]
    if inner_padding.any():
        sample = fill_padding(sample, inner_padding)
    inner = _predict_gray(sample, segmenter, options, *callbacks, keep_probabilities)
    probabilities = None
    if keep_probabilities:
        probabilities = np.zeros(gray.shape, dtype=inner.probabilities.dtype)
        probabilities[box] = inner.probabilities
        probabilities[padding] = 0.0
    mask = np.zeros(gray.shape, dtype=bool)
    mask[box] = inner.mask
    mask = remove_small_components(mask & ~padding, options.min_mark_area)
    return dataclasses.replace(
        inner,
        probabilities=probabilities,
        mask=mask,
        offset=(int(rows[0]), int(cols[0])),
        padding_share=float(np.count_nonzero(padding)) / padding.size,
    )


def _predict_gray(
    gray: np.ndarray,
    segmenter: Segmenter,
    options: SegmentOptions,
    on_tiles_planned: Callable[[int], None] | None,
    on_progress: Callable[[int], None] | None,
    on_pass: Callable[[float], None] | None,
    on_tile: Callable[[Tile, np.ndarray, np.ndarray], None] | None,
    keep_probabilities: bool,
) -> Segmentation:
    """`predict_image` of a gray image without padding."""
    pitch = None
    if options.scale is None:
        pitch = estimate_mark_pitch(gray)
        fast_scale = auto_scale(pitch)  # where the accurate policy falls back to
        scale = auto_scale(pitch, accurate=options.accurate)
        if too_large_to_enlarge(gray.shape, scale):
            scale = fast_scale
    else:
        scale = fast_scale = float(options.scale)
    passes = _Passes(
        gray, segmenter, options_for(segmenter, options), pitch, keep_probabilities,
        on_tiles_planned, on_progress, on_pass, on_tile,
    )  # fmt: skip
    try:
        segmentation = passes.run(scale)
    except MemoryError:
        if scale == fast_scale:
            raise
        # The accurate policy's enlargement is optional: segment as the default does.
        scale = fast_scale
        segmentation = passes.run(scale)
    # The outline look comes first and is kept as it is, also on a pass that marked only a few
    # pixels, all of them uncertain; the missed-grid look (kept only if it finds clearly more)
    # runs when the outline look does not, or ran out of memory.
    sharpen = uncertain_outline_retry_scale(pitch, scale, segmentation)
    if passes.may_look_at(sharpen):
        try:
            return passes.run(sharpen)
        except MemoryError:
            pass  # the enlarged look is optional: keep what was found
    retry = missed_grid_retry_scale(pitch, scale, segmentation.mask)
    if passes.may_look_at(retry):
        try:
            second = passes.run(retry)
        except MemoryError:
            return segmentation  # the enlarged look is optional: keep what was found
        # Kept only when it clearly finds more: a small grid whose few marks were found at
        # full resolution stays as it was, and so does an image with no marks at all.
        found, found_again = np.count_nonzero(segmentation.mask), np.count_nonzero(second.mask)
        if found_again > 0 and found_again >= RETRY_GAIN * found:
            segmentation = second
    return segmentation


class _Passes:
    """The network passes over one image: each adds its tiles to the plan, then runs on the
    device pipeline or the host; scales that ran out of memory are remembered."""

    def __init__(
        self,
        gray: np.ndarray,
        segmenter: Segmenter,
        options: SegmentOptions,
        pitch: float | None,
        keep_probabilities: bool,
        on_tiles_planned: Callable[[int], None] | None,
        on_progress: Callable[[int], None] | None,
        on_pass: Callable[[float], None] | None,
        on_tile: Callable[[Tile, np.ndarray, np.ndarray], None] | None,
    ) -> None:
        self.gray, self.segmenter, self.options, self.pitch = gray, segmenter, options, pitch
        self.keep_probabilities = keep_probabilities
        self.on_tiles_planned, self.on_progress = on_tiles_planned, on_progress
        self.on_pass, self.on_tile = on_pass, on_tile
        self.pipeline = device_pipeline(segmenter) if on_tile is None else None
        self.planned = 0
        self.out_of_memory: set[float] = set()  # scales no second look goes back to

    def may_look_at(self, scale: float | None) -> bool:
        """Whether a second look at `scale` (None: no look wanted) may run."""
        return (
            scale is not None
            and scale not in self.out_of_memory
            and not too_large_to_enlarge(self.gray.shape, scale)
        )

    def run(self, scale: float) -> Segmentation:
        self.planned += count_tiles(self.gray.shape, self.options, scale)
        if self.on_tiles_planned is not None:
            self.on_tiles_planned(self.planned)
        try:
            return self._segment_at(scale)
        except MemoryError:
            self.out_of_memory.add(scale)
            raise

    def _segment_at(self, scale: float) -> Segmentation:
        gray, options = self.gray, self.options
        if self.on_pass is not None:
            self.on_pass(scale)
        if self.pipeline is not None:
            keep = self.keep_probabilities or outline_look_applies(self.pitch, scale)
            try:
                return self.pipeline.segment(
                    gray, scale, options, keep_probabilities=keep, on_progress=self.on_progress
                )
            except MemoryError:
                pass  # the image is too large for the GPU in one piece: tile it from the host
        work = resample(gray, scale)
        result = segment_image(
            work, self.segmenter, options, on_progress=self.on_progress, on_tile=self.on_tile
        )
        if work is not gray:
            result = restore_segmentation(result, gray.shape, options.min_mark_area)
        return dataclasses.replace(result, scale=scale)


def resample(gray: np.ndarray, scale: float) -> np.ndarray:
    """`gray` resized by `scale` (area averaging to shrink, bicubic to enlarge); the same
    array when that keeps its size."""
    height, width = gray.shape
    new_height, new_width = scaled_shape(height, width, scale)
    if (new_height, new_width) == (height, width):
        return gray
    enlarging = new_height * new_width > height * width
    return _resize(gray, new_width, new_height, cv2.INTER_CUBIC if enlarging else cv2.INTER_AREA)


def restore_segmentation(
    resampled: Segmentation, shape: tuple[int, int], min_mark_area: int
) -> Segmentation:
    """A segmentation of a resampled image brought back to `shape`: the probabilities are
    resized (linearly when growing, area-averaged when shrinking), then thresholded at the
    input's size (smoother edges than resizing the mask). `grid` and `window` keep describing
    the resampled image."""
    height, width = shape
    growing = height * width > resampled.probabilities.size
    probabilities = cv2.resize(
        resampled.probabilities.astype(np.float32),  # OpenCV does not resize float16
        (width, height),
        interpolation=cv2.INTER_LINEAR if growing else cv2.INTER_AREA,
    )
    np.clip(probabilities, 0.0, 1.0, out=probabilities)
    probabilities = probabilities.astype(resampled.probabilities.dtype)
    mask = remove_small_components(probabilities > resampled.threshold, min_mark_area)
    return dataclasses.replace(resampled, probabilities=probabilities, mask=mask)


def _resize(gray: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    if gray.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        gray = gray.astype(np.float32)
    return cv2.resize(gray, (width, height), interpolation=interpolation)
