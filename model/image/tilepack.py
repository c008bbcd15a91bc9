"""A tile pack: every tile of one layer's pyramid, PNG-encoded, in one file, so that a server can
send a tile by reading its bytes, never decoding or encoding an image.

The worker, which holds the decoded image and the mask, writes the packs (`write_image_pack`,
`write_mask_packs`, `write_diff_pack`) and stores them with the task's results; the API reads a
pack's index once (`read_index`, from the file's tail) and then each tile as a byte range.

Layout (integers little-endian):

    b"AMSEGTP1" | tile 0 | tile 1 | ... | offsets | header | footer

Tiles go level by level from level 0 (full size), each level row by row from the top-left
(`tile_order`). `offsets` is N + 1 uint64 file positions: tile i is the bytes
offsets[i]:offsets[i + 1]. `header` is JSON: the pyramid's shape as `PyramidShape.describe()`
gives it, the layer's name and its own fields (the image's intensity window). `footer` is 24
bytes: where the offsets start, where the header starts (uint64 each), and the magic again.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.image.pyramid import (
    PNG_FOR_IMAGES,
    PNG_FOR_MASKS,
    STRIP_ROWS,
    Pyramid,
    PyramidShape,
    TileOutOfRange,
    build_levels,
    create_level,
    encode_png,
    halve_max,
    normalized_gray,
)

MAGIC = b"AMSEGTP1"
FOOTER = struct.Struct("<QQ8s")  # offsets' start, header's start, magic
# A reader's first look at a pack: its last bytes, which hold the index of up to ~15 000 tiles
# (a 20000² layer has 8 380), so one read usually gives the whole index.
TAIL_BYTES = 128 * 1024
# Tiles encoded at once (a batch's PNGs are all that is held in memory besides the levels).
ENCODE_BATCH = 64


class TilePackError(ValueError):
    """The bytes are not a tile pack (or not a whole one)."""


def tile_order(shape: PyramidShape) -> Iterator[tuple[int, int, int]]:
    """(level, col, row) of every tile, in the order a pack holds them."""
    for level in range(len(shape.level_sizes)):
        cols, rows = shape.grid(level)
        for row in range(rows):
            for col in range(cols):
                yield level, col, row


@dataclass(frozen=True)
class PackIndex:
    """Where each tile of a pack lies; small (8 bytes a tile), kept by readers."""

    shape: PyramidShape
    meta: dict
    offsets: np.ndarray  # uint64, one more than there are tiles
    level_starts: tuple[int, ...]  # index of each level's first tile

    def tile_span(self, level: int, col: int, row: int) -> tuple[int, int]:
        """(start, length) in the file of the tile's PNG; raises TileOutOfRange."""
        self.shape.tile_box(level, col, row)  # raises TileOutOfRange
        cols, _ = self.shape.grid(level)
        index = self.level_starts[level] + row * cols + col
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return start, end - start

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + 512

    def describe(self) -> dict:
        """The pyramid's shape as `GET /tasks/{id}/pyramid` documents it."""
        return self.shape.describe()


def _level_starts(shape: PyramidShape) -> tuple[int, ...]:
    starts, total = [], 0
    for level in range(len(shape.level_sizes)):
        starts.append(total)
        cols, rows = shape.grid(level)
        total += cols * rows
    return (*starts, total)


def write_pack(path: Path, shape: PyramidShape, tiles: Iterable[bytes], meta: dict) -> Path:
    """Write the encoded `tiles` (in `tile_order`) and the index to `path` (atomically)."""
    expected = _level_starts(shape)[-1]
    temporary = path.with_name(f".{path.name}.part")
    offsets = [len(MAGIC)]
    try:
        with temporary.open("wb") as out:
            out.write(MAGIC)
            for data in tiles:
                out.write(data)
                offsets.append(offsets[-1] + len(data))
            if len(offsets) != expected + 1:
                raise ValueError(f"{len(offsets) - 1} tiles for a pyramid of {expected}")
            index_start = offsets[-1]
            out.write(np.asarray(offsets, dtype="<u8").tobytes())
            header_start = out.tell()
            out.write(json.dumps({**meta, **shape.describe()}).encode())
            out.write(FOOTER.pack(index_start, header_start, MAGIC))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_index(
    read_tail: Callable[[int], tuple[bytes, int]], read_range: Callable[[int, int], bytes]
) -> PackIndex:
    """A pack's index from its storage: `read_tail(n)` gives its last n bytes (all of it when
    shorter) and its size, `read_range(start, length)` any bytes. One read, two for packs of
    more than ~15 000 tiles."""
    tail, size = read_tail(TAIL_BYTES)
    if len(tail) < FOOTER.size:
        raise TilePackError("too short to be a tile pack")
    index_start, header_start, magic = FOOTER.unpack(tail[-FOOTER.size :])
    if magic != MAGIC or not len(MAGIC) <= index_start <= header_start <= size - FOOTER.size:
        raise TilePackError("not a tile pack (its footer is not one)")
    base = size - len(tail)
    if index_start < base:
        tail = read_range(index_start, size - index_start)
        base = index_start
    offsets = np.frombuffer(tail[index_start - base : header_start - base], dtype="<u8")
    meta = json.loads(tail[header_start - base : size - FOOTER.size - base])
    shape = PyramidShape(meta["width"], meta["height"], meta["tile_size"])
    starts = _level_starts(shape)
    if len(offsets) != starts[-1] + 1:
        raise TilePackError(f"the index lists {len(offsets) - 1} tiles, the shape {starts[-1]}")
    return PackIndex(shape=shape, meta=meta, offsets=offsets, level_starts=starts[:-1])


def read_file_index(path: Path) -> PackIndex:
    """The index of a pack on this disk."""
    size = path.stat().st_size

    def read_range(start: int, length: int) -> bytes:
        with path.open("rb") as handle:
            handle.seek(start)
            return handle.read(length)

    return read_index(lambda n: (read_range(max(size - n, 0), min(n, size)), size), read_range)


def encoded_tiles(
    shape: PyramidShape,
    read: Callable[[int, int, int], np.ndarray],
    threads: int,
    strategy: int = PNG_FOR_MASKS,
) -> Iterator[bytes]:
    """Every tile `read(level, col, row)` gives, PNG-encoded, in pack order; `threads` encode
    at once (OpenCV lets go of the GIL while it compresses)."""

    def encode(key: tuple[int, int, int]) -> bytes:
        return encode_png(read(*key), strategy)

    order = list(tile_order(shape))
    if threads <= 1:
        yield from map(encode, order)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tiles") as pool:
        for start in range(0, len(order), ENCODE_BATCH):
            yield from pool.map(encode, order[start : start + ENCODE_BATCH])


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def write_image_pack(image: np.ndarray, path: Path, *, threads: int | None = None) -> Path:
    """The pack of the image as the model sees it (gray, the whole image's percentile window,
    8-bit), the window recorded in its header."""
    height, width = image.shape[:2]
    with _levels(path) as directory:
        level0 = create_level(directory, 0, width, height)
        low, high = normalized_gray(image, level0)
        level0.flush()
        del level0
        meta = {"layer": "image", "window": [low, high]}
        shape = PyramidShape(width, height)
        build_levels(directory, shape, meta)
        return _pack_from(directory, path, shape, meta, threads, PNG_FOR_IMAGES)


def write_mask_packs(
    mask: np.ndarray, mask_path: Path, outline_path: Path, *, threads: int | None = None
) -> tuple[Path, Path]:
    """The mask's pack (255 mark, 0 background; smaller levels the share covered) and its
    outlines' (255 on the marks' edges at each level's resolution), from one pyramid."""
    height, width = mask.shape[:2]
    shape = PyramidShape(width, height)
    threads = threads or default_threads()
    with _levels(mask_path) as directory:
        level0 = create_level(directory, 0, width, height)
        for top in range(0, height, STRIP_ROWS):
            strip = mask[top : top + STRIP_ROWS]
            level0[top : top + STRIP_ROWS] = (strip > 0).view(np.uint8) * np.uint8(255)
        level0.flush()
        del level0
        build_levels(directory, shape, {"layer": "mask"})
        pyramid = Pyramid(directory)
        write_pack(mask_path, shape, encoded_tiles(shape, pyramid.tile, threads), {"layer": "mask"})
        outlines = encoded_tiles(shape, pyramid.outline_tile, threads)
        write_pack(outline_path, shape, outlines, {"layer": "outline"})
        del pyramid
    return mask_path, outline_path


def write_diff_pack(diff: np.ndarray, path: Path, *, threads: int | None = None) -> Path:
    """The pack of a re-run's changes (model.compare's codes); smaller levels the block
    maxima, so no code is made up and small changes stay in sight."""
    height, width = diff.shape[:2]
    with _levels(path) as directory:
        level0 = create_level(directory, 0, width, height)
        level0[:] = diff
        level0.flush()
        del level0
        shape = PyramidShape(width, height)
        build_levels(directory, shape, {"layer": "diff"}, reduce=halve_max)
        return _pack_from(directory, path, shape, {"layer": "diff"}, threads)


def _pack_from(
    directory: Path,
    path: Path,
    shape: PyramidShape,
    meta: dict,
    threads: int | None,
    strategy: int = PNG_FOR_MASKS,
) -> Path:
    pyramid = Pyramid(directory)
    tiles = encoded_tiles(shape, pyramid.tile, threads or default_threads(), strategy)
    return write_pack(path, shape, tiles, meta)


@contextmanager
def _levels(path: Path) -> Iterator[Path]:
    """A scratch folder beside `path` for the levels' memory-mapped files, removed after."""
    with tempfile.TemporaryDirectory(prefix=".levels-", dir=path.parent) as directory:
        yield Path(directory)


__all__ = [
    "PackIndex",
    "TileOutOfRange",
    "TilePackError",
    "read_file_index",
    "read_index",
    "tile_order",
    "write_diff_pack",
    "write_image_pack",
    "write_mask_packs",
    "write_pack",
]
