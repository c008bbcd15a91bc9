"""Image pyramids for the web viewer: 8-bit levels of an image, each half the size of the one
before, built as memory-mapped `.npy` files (the worker cuts them into a tile pack,
model/image/tilepack.py), so memory beyond the source array stays a few strips whatever the
image's size.

Level 0 is the full-size image; level k is 2^k times smaller (odd edges round up), down to the
first level that fits one tile. Tiles are TILE_SIZE px squares counted from the top-left (the
last column and row may be smaller). Levels are built strip by strip.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model.image.io import to_grayscale
from model.image.normalize import intensity_window, to_uint8

TILE_SIZE = 256
STRIP_ROWS = 1024  # rows per strip when building levels (an even number)
PNG_COMPRESSION = 1  # fast; tiles are small and mostly sent once
# zlib strategies, measured on real 8-bit slide tiles: Huffman codes alone are 3x faster than the
# default and as small on the image (its noise leaves no long matches); run lengths are the
# fastest and smallest on masks and outlines.
PNG_FOR_IMAGES = cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY
PNG_FOR_MASKS = cv2.IMWRITE_PNG_STRATEGY_RLE
MASK_ON = 128  # a downsampled mask pixel at least half covered counts as mark


class TileOutOfRange(LookupError):
    """The level, column or row is not in the pyramid."""


@dataclass(frozen=True)
class PyramidShape:
    """The sizes of every level of a width x height image, and their tile grids."""

    width: int
    height: int
    tile_size: int = TILE_SIZE

    @property
    def level_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of each level, from level 0 (full size) to the one-tile level."""
        sizes = [(self.width, self.height)]
        while max(sizes[-1]) > self.tile_size:
            width, height = sizes[-1]
            sizes.append(((width + 1) // 2, (height + 1) // 2))
        return sizes

    def grid(self, level: int) -> tuple[int, int]:
        """(columns, rows) of tiles at `level`."""
        width, height = self.level_size(level)
        return -(-width // self.tile_size), -(-height // self.tile_size)

    def level_size(self, level: int) -> tuple[int, int]:
        sizes = self.level_sizes
        if not 0 <= level < len(sizes):
            raise TileOutOfRange(f"level {level} is not in 0..{len(sizes) - 1}")
        return sizes[level]

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a tile in its level's pixels, x1 and y1 exclusive."""
        width, height = self.level_size(level)
        cols, rows = self.grid(level)
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileOutOfRange(
                f"tile {col}_{row} is not in level {level}, which has {cols} x {rows} tiles "
                f"(columns 0..{cols - 1}, rows 0..{rows - 1})"
            )
        x0, y0 = col * self.tile_size, row * self.tile_size
        return x0, y0, min(x0 + self.tile_size, width), min(y0 + self.tile_size, height)

    def describe(self) -> dict:
        """The shape as the API documents it (`GET /tasks/{id}/pyramid`)."""
        levels = []
        for level, (width, height) in enumerate(self.level_sizes):
            cols, rows = self.grid(level)
            levels.append(
                {"level": level, "width": width, "height": height, "cols": cols, "rows": rows}
            )
        return {
            "width": self.width,
            "height": self.height,
            "tile_size": self.tile_size,
            "levels": levels,
        }


def _strips(height: int, rows: int = STRIP_ROWS) -> Iterator[slice]:
    for start in range(0, height, rows):
        yield slice(start, min(start + rows, height))


def normalized_gray(image: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """Write the image as the model sees it into `out` (uint8, (H, W)): gray, clipped to the
    whole image's percentile window (padding left out) and stretched to 0..255. Returns the
    window (low, high) in the image's own intensities."""
    gray = image if image.ndim == 2 else np.empty(image.shape[:2], dtype=image.dtype)
    if image.ndim == 3:
        for strip in _strips(image.shape[0]):
            gray[strip] = to_grayscale(image[strip])
    window = intensity_window(gray)
    if gray.dtype in (np.uint8, np.uint16):
        table = to_uint8(window.lookup_table(gray.dtype))
        for strip in _strips(gray.shape[0]):
            out[strip] = table[gray[strip]]
    else:
        for strip in _strips(gray.shape[0]):
            out[strip] = to_uint8(window.apply(gray[strip]))
    return window.low, window.high


def halve(source: np.ndarray, out: np.ndarray) -> None:
    """Write the 2x2 block means of `source` (uint8) into `out`, strip by strip; an odd last
    column or row is averaged with itself."""
    height, width = source.shape
    for strip in _strips(height):
        block = source[strip]
        if block.shape[0] % 2:
            block = np.concatenate([block, block[-1:]])
        if width % 2:
            block = np.concatenate([block, block[:, -1:]], axis=1)
        total = block[0::2, 0::2].astype(np.uint16)
        total += block[1::2, 0::2]
        total += block[0::2, 1::2]
        total += block[1::2, 1::2]
        total += 2
        total >>= 2
        out[strip.start // 2 : strip.start // 2 + total.shape[0]] = total


def halve_max(source: np.ndarray, out: np.ndarray) -> None:
    """Write the 2x2 block maxima of `source` into `out`, strip by strip: for layers of codes
    (the changes between two masks), where a mean would make up codes and lose small marks."""
    height, width = source.shape
    for strip in _strips(height):
        block = np.asarray(source[strip])
        if block.shape[0] % 2:
            block = np.concatenate([block, block[-1:]])
        if width % 2:
            block = np.concatenate([block, block[:, -1:]], axis=1)
        top = np.maximum(block[0::2, 0::2], block[0::2, 1::2])
        bottom = np.maximum(block[1::2, 0::2], block[1::2, 1::2])
        out[strip.start // 2 : strip.start // 2 + top.shape[0]] = np.maximum(top, bottom)


def level_path(directory: Path, level: int) -> Path:
    return directory / f"level_{level}.npy"


def create_level(directory: Path, level: int, width: int, height: int) -> np.ndarray:
    """A new, writable, memory-mapped level file, its disk space reserved before it is mapped:
    a write into a mapped page the disk has no room for kills the whole process (SIGBUS), while
    a reservation that fails raises OSError (ENOSPC), which fails only the work at hand."""
    path = level_path(directory, level)
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (height, width),
    }
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        size = file.tell() + width * height
        try:
            _reserve(file.fileno(), size)
        except OSError:
            file.close()
            path.unlink()
            raise
    return np.lib.format.open_memmap(path, mode="r+")


def _reserve(fd: int, size: int) -> None:
    """Allocate `size` bytes of disk for the file (zeros), or raise OSError. Where the system
    or file system cannot (macOS, some FUSE and ZFS), the file is made sparse: a full disk can
    then still end the process there."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
    os.ftruncate(fd, size)


def build_levels(
    directory: Path,
    shape: PyramidShape,
    meta: dict,
    reduce: Callable[[np.ndarray, np.ndarray], None] = halve,
) -> None:
    """Given `level_0.npy` in `directory`, write every smaller level (each `reduce`d from the
    one before: block means by default) and `meta.json`."""
    previous = np.load(level_path(directory, 0), mmap_mode="r")
    for level, (width, height) in enumerate(shape.level_sizes[1:], start=1):
        current = create_level(directory, level, width, height)
        reduce(previous, current)
        current.flush()
        previous = current
    del previous
    meta = {**meta, **shape.describe()}
    temporary = directory / "meta.json.part"
    temporary.write_text(json.dumps(meta))
    os.replace(temporary, directory / "meta.json")  # written last: it marks a whole pyramid


class Pyramid:
    """A built pyramid opened for reading: tiles, outlines and previews."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.meta = json.loads((directory / "meta.json").read_text())
        self.shape = PyramidShape(self.meta["width"], self.meta["height"], self.meta["tile_size"])
        self._levels = [
            np.load(level_path(directory, level), mmap_mode="r")
            for level in range(len(self.shape.level_sizes))
        ]

    def level(self, level: int) -> np.ndarray:
        self.shape.level_size(level)  # raises TileOutOfRange
        return self._levels[level]

    def tile(self, level: int, col: int, row: int) -> np.ndarray:
        """The tile's pixels (a copy; edge tiles are smaller than TILE_SIZE)."""
        x0, y0, x1, y1 = self.shape.tile_box(level, col, row)
        return np.array(self._levels[level][y0:y1, x0:x1])

    def outline_tile(self, level: int, col: int, row: int) -> np.ndarray:
        """255 where a mark pixel (>= MASK_ON) touches a non-mark pixel (4-neighbours), else 0:
        the marks' outlines at this level's resolution, continuous across tiles."""
        x0, y0, x1, y1 = self.shape.tile_box(level, col, row)
        pixels = self._levels[level]
        height, width = pixels.shape
        top, left = max(y0 - 1, 0), max(x0 - 1, 0)
        window = np.asarray(pixels[top : min(y1 + 1, height), left : min(x1 + 1, width)])
        on = (window >= MASK_ON).view(np.uint8)
        # Beyond the image's edge repeats the edge, so the image's border draws no line.
        cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
        inside = cv2.erode(on, cross, borderType=cv2.BORDER_REPLICATE)
        edge = (on & ~inside.astype(bool)).astype(np.uint8) * 255
        return edge[y0 - top : y0 - top + (y1 - y0), x0 - left : x0 - left + (x1 - x0)]

    def preview(self, max_side: int) -> np.ndarray:
        """The whole image with its longer side `max_side` px (or its own size if smaller),
        resized from the smallest level that is at least that large."""
        scale = min(1.0, max_side / max(self.shape.width, self.shape.height))
        width = max(1, round(self.shape.width * scale))
        height = max(1, round(self.shape.height * scale))
        source = self._levels[0]
        for pixels in self._levels:
            if pixels.shape[1] >= width and pixels.shape[0] >= height:
                source = pixels
        if source.shape == (height, width):
            return np.array(source)
        return cv2.resize(np.asarray(source), (width, height), interpolation=cv2.INTER_AREA)


def encode_png(pixels: np.ndarray, strategy: int = PNG_FOR_MASKS) -> bytes:
    """An 8-bit gray PNG of `pixels`, compressed with zlib's `strategy`."""
    options = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION, cv2.IMWRITE_PNG_STRATEGY, strategy]
    ok, data = cv2.imencode(".png", pixels, options)
    if not ok:
        raise ValueError(f"could not encode a {pixels.shape} tile as PNG")
    return data.tobytes()
