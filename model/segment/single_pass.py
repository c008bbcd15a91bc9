"""One pass of the network over a whole image: normalize, cut into tiles, predict, stitch,
threshold. `predict.predict_image` adds resampling and the second looks around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from model.errors import ParameterError
from model.image.io import to_grayscale
from model.image.normalize import (
    DEFAULT_HIGH_PERCENTILE,
    DEFAULT_LOW_PERCENTILE,
    IntensityWindow,
    intensity_window,
)
from model.segment.segmenter import Segmenter
from model.segment.tiles import (
    DEFAULT_TILE_SIZE,
    Tile,
    TileGrid,
    check_tiling,
    default_overlap,
    plan_tiles,
    predict_tiled,
)

# Largest --scale of the neural segmenter (SegmentOptions.scale): 2x makes 8 px marks 16 px;
# beyond it time and memory (4x the pixels at 2x) grow with no use for marks of 8-60 px.
MAX_SCALE = 2.0


# Slide-sized probability maps are kept in half precision: steps of 1/2048 around a threshold of
# 0.5 change no mask that matters, and a 20000² map takes 0.8 GB instead of 1.6.
PROBABILITY_DTYPE = np.float16


@dataclass(frozen=True)
class SegmentOptions:
    """Knobs of the segmentation step (defaults work for typical slides)."""

    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int | None = None  # None: tiles.default_overlap(tile_size)
    low_percentile: float = DEFAULT_LOW_PERCENTILE
    high_percentile: float = DEFAULT_HIGH_PERCENTILE
    threshold: float | None = None  # None: the segmenter's own threshold
    batch_size: int = 8
    min_mark_area: int = 12  # connected components smaller than this (px) are noise
    # Resampling before the network: None = from the grid pitch (pitch.auto_scale: only large
    # marks are shrunk, with at most one enlarged second look), a number = exactly that
    # (1.0 = full resolution, above 1 enlarges, at most MAX_SCALE).
    scale: float | None = None
    # With scale None: also enlarge grids of small marks 2x (pitch.auto_scale),
    # for sharper outlines at 4x the network time on those images.
    accurate: bool = False

    def __post_init__(self) -> None:
        """Every caller's options pass the same checks here (one place per decision)."""
        if self.overlap is None:
            object.__setattr__(self, "overlap", default_overlap(self.tile_size))
        check_tiling(self.tile_size, self.overlap)
        if self.scale is not None and not 0.0 < self.scale <= MAX_SCALE:
            raise ParameterError(
                f"scale must be in (0, {MAX_SCALE:g}] (1 = full resolution, above 1 enlarges), "
                f"got {self.scale}"
            )
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ParameterError(
                "percentiles must satisfy 0 <= low < high <= 100, got "
                f"{self.low_percentile} and {self.high_percentile}"
            )


@dataclass
class Segmentation:
    """Result of `segment_image`, all at the input image's size."""

    # PROBABILITY_DTYPE in [0, 1]; None when predict_image was asked not to keep them
    # (keep_probabilities)
    probabilities: np.ndarray | None
    mask: np.ndarray  # bool
    window: IntensityWindow
    grid: TileGrid
    threshold: float
    # The network saw the image resampled by this factor; `grid` and `window` describe that
    # resampled image (see predict.predict_image).
    scale: float = 1.0
    # (y, x) of the image's corner that `grid` starts from: not (0, 0) when padding around
    # the sample was cropped off (see predict.predict_image).
    offset: tuple[int, int] = (0, 0)
    # Share of the image's pixels found to be padding and left out (background in `mask`).
    padding_share: float = 0.0


def segment_image(
    image: np.ndarray,
    segmenter: Segmenter,
    options: SegmentOptions = SegmentOptions(),
    *,
    on_progress: Callable[[int], None] | None = None,
    on_tile: Callable[[Tile, np.ndarray, np.ndarray], None] | None = None,
) -> Segmentation:
    """Segment marks in a gray or colour image of any bit depth and size.

    Intensities are normalized per tile through the whole image's percentile window, so no
    float copy of the image is made; probabilities are blended across tile overlaps and
    thresholded once on the stitched map.
    """
    gray = to_grayscale(image)
    window = intensity_window(gray, options.low_percentile, options.high_percentile)
    grid = plan_tiles(gray.shape[0], gray.shape[1], options.tile_size, options.overlap)
    probabilities = predict_tiled(
        gray,
        segmenter.predict_batch,
        grid,
        transform=window.apply,
        batch_size=options.batch_size,
        out=np.empty(gray.shape, dtype=PROBABILITY_DTYPE),
        on_progress=on_progress,
        on_tile=on_tile,
    )
    threshold = segmenter.threshold if options.threshold is None else options.threshold
    marked = probabilities > threshold
    mask = remove_small_components(marked, options.min_mark_area, in_place=True)
    return Segmentation(probabilities, mask, window, grid, threshold)


# remove_small_components labels this many pixels at a time (int32 labels: 64 MiB), so that a
# 20000² mask does not need a 1.6 GB label image.
COMPONENT_BAND_PIXELS = 16 * 2**20


def remove_small_components(
    mask: np.ndarray, min_area: int, *, in_place: bool = False
) -> np.ndarray:
    """Drop 8-connected components smaller than `min_area` pixels: from a new mask, or from
    the given bool `mask` itself when `in_place` (a slide-sized mask less).

    Labels bands of rows, each with `min_area` rows of context above and below: a component
    under `min_area` pixels spans fewer rows than that, so it lies wholly inside the context
    and its area there is exact, while one that reaches from the band to a cut edge of the
    context has more than `min_area` rows in it, so it stays. The result equals labelling the
    whole mask at once; also in place, since a dropped component touches no other one.
    """
    if min_area <= 1 or not mask.any():
        return mask
    height, width = mask.shape
    band = max(1, COMPONENT_BAND_PIXELS // max(width, 1))
    out = mask if in_place and mask.dtype == np.bool_ else np.empty_like(mask, dtype=bool)
    for top in range(0, height, band):
        bottom = min(top + band, height)
        context_top, context_bottom = max(0, top - min_area), min(height, bottom + min_area)
        context = mask[context_top:context_bottom]
        context = context.view(np.uint8) if context.dtype == np.bool_ else context.astype(np.uint8)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(
            context, connectivity=8, ltype=cv2.CV_32S
        )
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False
        out[top:bottom] = keep[labels[top - context_top : bottom - context_top]]
    return out
