"""Overlapping tiles over an image and seamless, memory-bounded stitching of per-tile predictions.

The image is reflect-padded by half the overlap on every side (or centred in one tile when it
fits) (virtually: only the tiles are
materialised), tiles are spread evenly so that neighbours overlap by at least `overlap` px, and
stitching blends tiles with a taper that is 1 in a tile's interior and crosses 0.5 in the middle
of the overlap. Stitching walks the tile rows top to bottom and keeps only one band of
`tile_size` rows of accumulators, so memory does not grow with the number of tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from model.errors import ParameterError

DEFAULT_TILE_SIZE = 512
DEFAULT_OVERLAP = 64
_MIN_WEIGHT = 1e-3  # keeps the blend weight of every pixel positive


@dataclass(frozen=True)
class Tile:
    """One tile: its place in the tile grid and its top-left corner in padded coordinates."""

    index: int
    row: int
    col: int
    y: int
    x: int


@dataclass(frozen=True)
class TileGrid:
    """Geometry of overlapping tiles covering a (height, width) image plus reflect padding."""

    height: int
    width: int
    tile_size: int
    overlap: int
    pad_y: int
    pad_x: int
    y_starts: tuple[int, ...]
    x_starts: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """(tile rows, tile cols)."""
        return len(self.y_starts), len(self.x_starts)

    def __len__(self) -> int:
        return len(self.y_starts) * len(self.x_starts)

    def __iter__(self) -> Iterator[Tile]:
        """Tiles row-major, top-left first (the order `stitch_tiles` expects)."""
        n_cols = len(self.x_starts)
        for r, y in enumerate(self.y_starts):
            for c, x in enumerate(self.x_starts):
                yield Tile(r * n_cols + c, r, c, y, x)

    @cached_property
    def weights(self) -> np.ndarray:
        """(tile, tile) float32 blend weights shared by every tile."""
        return blend_weights(self.tile_size, self.overlap)

    def to_dict(self) -> dict:
        """JSON-friendly geometry (what the old system kept in meta.json, and more)."""
        return {
            "image": {"h": self.height, "w": self.width},
            "tile": {"rows": self.shape[0], "cols": self.shape[1], "size": self.tile_size},
            "overlap": self.overlap,
            "pad": {"y": self.pad_y, "x": self.pad_x},
            "y_starts": list(self.y_starts),
            "x_starts": list(self.x_starts),
        }


# The one rule for tile geometry, used by the CLI options, the API's task parameters and the
# planner: smaller tiles give the network too little context around a mark, larger ones only
# cost memory.
MIN_TILE_SIZE = 64
MAX_TILE_SIZE = 4096


def default_overlap(tile_size: int) -> int:
    """The overlap used when none is given: DEFAULT_OVERLAP, at most half a tile."""
    return min(DEFAULT_OVERLAP, tile_size // 2)


def check_tiling(tile_size: int, overlap: int) -> None:
    """Refuse a tile size or overlap out of range, saying what would do."""
    if not MIN_TILE_SIZE <= tile_size <= MAX_TILE_SIZE:
        raise ParameterError(
            f"tile size must be {MIN_TILE_SIZE}-{MAX_TILE_SIZE} px, got {tile_size}"
        )
    if not 0 <= overlap <= tile_size // 2:
        raise ParameterError(
            f"overlap must be at most half the tile size ({tile_size // 2} px) and not "
            f"negative, got {overlap}"
        )


def plan_tiles(
    height: int, width: int, tile_size: int = DEFAULT_TILE_SIZE, overlap: int = DEFAULT_OVERLAP
) -> TileGrid:
    """Plan tiles for an image of any size, including smaller than one tile."""
    if height < 1 or width < 1:
        raise ValueError(f"image must have pixels, got {height}x{width}")
    check_tiling(tile_size, overlap)
    pad_y, pad_x = _pad(height, tile_size, overlap), _pad(width, tile_size, overlap)
    return TileGrid(
        height=height,
        width=width,
        tile_size=tile_size,
        overlap=overlap,
        pad_y=pad_y,
        pad_x=pad_x,
        y_starts=_starts(height + 2 * pad_y, tile_size, overlap),
        x_starts=_starts(width + 2 * pad_x, tile_size, overlap),
    )


def _pad(size: int, tile_size: int, overlap: int) -> int:
    """Reflect pad per side: half the overlap, or centring in one tile when the axis fits in it."""
    if size <= tile_size:
        return (tile_size - size) // 2
    return overlap // 2


def _starts(extent: int, tile_size: int, overlap: int) -> tuple[int, ...]:
    """Evenly spread tile starts: first at 0, last ending at max(extent, tile_size)."""
    span = max(extent, tile_size) - tile_size
    stride = tile_size - overlap
    count = -(-span // stride) + 1  # ceil: neighbours overlap by at least `overlap`
    return tuple(np.linspace(0, span, count).round().astype(int).tolist())


def reflect_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Indices into an axis of `size` for positions start..stop-1, mirrored outside it.

    Symmetric reflection (edge pixel repeated), periodic so that any pad works, even pads
    larger than the image.
    """
    positions = np.arange(start, stop)
    period = 2 * size
    positions = np.mod(positions, period)
    return np.where(positions >= size, period - 1 - positions, positions)


def extract_tile(image: np.ndarray, grid: TileGrid, tile: Tile) -> np.ndarray:
    """The (tile_size, tile_size[, C]) pixels of `tile`, reflected where it leaves the image."""
    y0, x0 = tile.y - grid.pad_y, tile.x - grid.pad_x
    y1, x1 = y0 + grid.tile_size, x0 + grid.tile_size
    if y0 >= 0 and x0 >= 0 and y1 <= grid.height and x1 <= grid.width:
        return image[y0:y1, x0:x1].copy()
    rows = reflect_indices(y0, y1, grid.height)
    cols = reflect_indices(x0, x1, grid.width)
    return image[np.ix_(rows, cols)]


def iter_tiles(
    image: np.ndarray, grid: TileGrid, transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> Iterator[tuple[Tile, np.ndarray]]:
    """Yield (tile, pixels) row-major; `transform` (e.g. intensity normalization) runs per tile."""
    for tile in grid:
        pixels = extract_tile(image, grid, tile)
        yield tile, (transform(pixels) if transform is not None else pixels)


def blend_weights(tile_size: int, overlap: int) -> np.ndarray:
    """Separable logistic taper: ~1 inside, 0.5 in the middle of the overlap, small at the edge.

    Two neighbouring tiles then cross-fade inside their overlap instead of meeting at a seam;
    the pad of overlap/2 puts the image border where a lone tile's weight is already ~1.
    """
    if overlap == 0:
        return np.ones((tile_size, tile_size), dtype=np.float32)
    distance_to_edge = np.minimum(np.arange(tile_size), np.arange(tile_size)[::-1]) + 0.5
    width = max(overlap / 8.0, 1.0)
    profile = 1.0 / (1.0 + np.exp(-(distance_to_edge - overlap / 2.0) / width))
    profile = np.maximum(profile, _MIN_WEIGHT).astype(np.float32)
    return np.outer(profile, profile)


class TileStitcher:
    """Accumulates tile predictions in row-major order and writes finished rows to `out`.

    Keeps one band of `tile_size` rows of weighted sums; when the next tile row starts, the rows
    above it can receive no more tiles and are normalised and written out.
    """

    def __init__(self, grid: TileGrid, out: np.ndarray | None = None, channels: int = 0) -> None:
        self.grid = grid
        shape = (grid.height, grid.width) + ((channels,) if channels else ())
        self.out = np.empty(shape, dtype=np.float32) if out is None else out
        if self.out.shape != shape:
            raise ValueError(f"out has shape {self.out.shape}, expected {shape}")
        padded_width = grid.x_starts[-1] + grid.tile_size
        band_shape = (grid.tile_size, padded_width) + ((channels,) if channels else ())
        self._sum = np.zeros(band_shape, dtype=np.float32)
        self._weight = np.zeros((grid.tile_size, padded_width), dtype=np.float32)
        self._band_top = 0  # padded y of the band's first row
        self._next_index = 0
        self._written = 0  # padded rows [0, _written) are done

    def add(self, tile: Tile, prediction: np.ndarray) -> None:
        """Add one tile's prediction; tiles must come in the grid's row-major order."""
        if tile.index != self._next_index:
            raise ValueError(
                f"tiles must be added in order: expected {self._next_index}, got {tile.index}"
            )
        size = self.grid.tile_size
        if prediction.shape[:2] != (size, size):
            raise ValueError(f"prediction has shape {prediction.shape}, expected {size}x{size}")
        if tile.col == 0 and tile.y != self._band_top:
            self._advance_band(tile.y)
        weights = self.grid.weights
        y = tile.y - self._band_top
        rows, cols = slice(y, y + size), slice(tile.x, tile.x + size)
        if prediction.ndim == 3:
            self._sum[rows, cols] += prediction * weights[..., None]
        else:
            self._sum[rows, cols] += prediction * weights
        self._weight[rows, cols] += weights
        self._next_index += 1

    def _advance_band(self, new_top: int) -> None:
        shift = new_top - self._band_top
        self._flush(shift)
        self._sum[:-shift] = self._sum[shift:]
        self._sum[-shift:] = 0
        self._weight[:-shift] = self._weight[shift:]
        self._weight[-shift:] = 0
        self._band_top = new_top

    def _flush(self, n_rows: int) -> None:
        """Write the band's first n_rows (padded coordinates) into the image-sized output."""
        grid = self.grid
        top = self._band_top
        image_y0 = max(top, grid.pad_y)
        image_y1 = min(top + n_rows, grid.pad_y + grid.height)
        if image_y1 > image_y0:
            band_rows = slice(image_y0 - top, image_y1 - top)
            band_cols = slice(grid.pad_x, grid.pad_x + grid.width)
            weight = self._weight[band_rows, band_cols]
            total = self._sum[band_rows, band_cols]
            if total.ndim == 3:
                weight = weight[..., None]
            self.out[image_y0 - grid.pad_y : image_y1 - grid.pad_y] = total / weight
        self._written = top + n_rows

    def finish(self) -> np.ndarray:
        """Write the remaining rows and return the stitched image."""
        if self._next_index != len(self.grid):
            raise ValueError(f"only {self._next_index} of {len(self.grid)} tiles were added")
        self._flush(self.grid.tile_size)
        return self.out


def stitch_tiles(
    grid: TileGrid,
    predictions: Iterable[tuple[Tile, np.ndarray]],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Blend row-major (tile, prediction) pairs into one float32 image of the grid's size."""
    stitcher: TileStitcher | None = None
    for tile, prediction in predictions:
        if stitcher is None:
            channels = prediction.shape[2] if prediction.ndim == 3 else 0
            stitcher = TileStitcher(grid, out=out, channels=channels)
        stitcher.add(tile, prediction)
    if stitcher is None:
        raise ValueError("no tiles to stitch")
    return stitcher.finish()


def predict_tiled(
    image: np.ndarray,
    predict_batch: Callable[[np.ndarray], np.ndarray],
    grid: TileGrid,
    *,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 8,
    out: np.ndarray | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_tile: Callable[[Tile, np.ndarray, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Run `predict_batch` over batches of tiles and stitch the results (float32, image size).

    `predict_batch` takes an (N, tile, tile) float32 stack and returns (N, tile, tile) values
    (e.g. probabilities). At most `batch_size` tiles are in memory at once; `on_progress` gets
    the number of tiles just finished, `on_tile` each (tile, input, prediction), e.g. to save it.
    """
    stitcher = TileStitcher(grid, out=out)
    batch: list[tuple[Tile, np.ndarray]] = []

    def run_batch() -> None:
        stack = np.stack([pixels for _, pixels in batch]).astype(np.float32, copy=False)
        results = predict_batch(stack)
        for (tile, pixels), result in zip(batch, results, strict=True):
            stitcher.add(tile, result)
            if on_tile is not None:
                on_tile(tile, pixels, result)
        if on_progress is not None:
            on_progress(len(batch))
        batch.clear()

    for tile, pixels in iter_tiles(image, grid, transform):
        batch.append((tile, pixels))
        if len(batch) == batch_size:
            run_batch()
    if batch:
        run_batch()
    return stitcher.finish()
