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

    probabilities: np.ndarray  # float32 in [0, 1]
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
        on_progress=on_progress,
        on_tile=on_tile,
    )
    threshold = segmenter.threshold if options.threshold is None else options.threshold
    mask = remove_small_components(probabilities > threshold, options.min_mark_area)
    return Segmentation(probabilities, mask, window, grid, threshold)


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components smaller than `min_area` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels]
