"""Tile packs: every tile of a layer's pyramid in one file, read back by byte ranges from its
index, the same pixels the pyramid has (image, mask, outlines, changes)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from model.image import tilepack
from model.image.normalize import intensity_window, to_uint8
from model.image.pyramid import Pyramid, PyramidShape, build_levels, create_level, halve_max
from model.image.tilepack import (
    TilePackError,
    read_file_index,
    tile_order,
    write_diff_pack,
    write_image_pack,
    write_mask_packs,
    write_pack,
)


def tiles_of(path: Path) -> dict[tuple[int, int, int], np.ndarray]:
    """Every tile of a pack, decoded, read as a server reads them: by the index's ranges."""
    index = read_file_index(path)
    data = path.read_bytes()
    tiles = {}
    for level, col, row in tile_order(index.shape):
        start, length = index.tile_span(level, col, row)
        encoded = np.frombuffer(data[start : start + length], np.uint8)
        tiles[level, col, row] = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return tiles


def whole_level(tiles: dict, shape: PyramidShape, level: int) -> np.ndarray:
    width, height = shape.level_size(level)
    pixels = np.zeros((height, width), np.uint8)
    cols, rows = shape.grid(level)
    for row in range(rows):
        for col in range(cols):
            x0, y0, x1, y1 = shape.tile_box(level, col, row)
            pixels[y0:y1, x0:x1] = tiles[level, col, row]
    return pixels


def reference(tmp_path: Path, level0: np.ndarray, reduce=None) -> Pyramid:
    """The pyramid the tiles are cut from, built directly."""
    height, width = level0.shape
    directory = tmp_path / "reference"
    directory.mkdir()
    create_level(directory, 0, width, height)[:] = level0
    options = {"reduce": reduce} if reduce else {}
    build_levels(directory, PyramidShape(width, height), {}, **options)
    return Pyramid(directory)


def test_an_image_pack_holds_every_level_as_the_model_sees_it(tmp_path: Path) -> None:
    image = np.random.default_rng(5).integers(100, 4000, (600, 1000), dtype=np.uint16)
    path = write_image_pack(image, tmp_path / "image.tiles", threads=2)
    index = read_file_index(path)
    window = intensity_window(image)
    assert index.meta["layer"] == "image"
    assert index.meta["window"] == [window.low, window.high]
    assert index.describe() == PyramidShape(1000, 600).describe()
    tiles = tiles_of(path)
    expected = to_uint8(window.apply(image))
    np.testing.assert_array_equal(whole_level(tiles, index.shape, 0), expected)
    built = reference(tmp_path, expected)
    for level in range(1, len(index.shape.level_sizes)):
        np.testing.assert_array_equal(whole_level(tiles, index.shape, level), built.level(level))
    assert not list(tmp_path.glob(".*"))  # no scratch left beside it


def test_mask_and_outline_packs_come_from_one_pyramid(tmp_path: Path) -> None:
    mask = np.zeros((300, 520), dtype=bool)
    mask[240:270, 240:270] = True  # across four tiles
    mask[10:14, 500:520] = True
    mask_path, outline_path = write_mask_packs(
        mask, tmp_path / "mask.tiles", tmp_path / "outline.tiles", threads=1
    )
    built = reference(tmp_path, mask.view(np.uint8) * np.uint8(255))
    masks, outlines = tiles_of(mask_path), tiles_of(outline_path)
    shape = read_file_index(mask_path).shape
    for key in tile_order(shape):
        np.testing.assert_array_equal(masks[key], built.tile(*key))
        np.testing.assert_array_equal(outlines[key], built.outline_tile(*key))
    assert read_file_index(outline_path).meta["layer"] == "outline"


def test_a_diff_pack_keeps_the_codes_by_block_maxima(tmp_path: Path) -> None:
    diff = np.zeros((400, 300), np.uint8)
    diff[7, 9] = 200  # one pixel of an added mark stays in sight at every level
    diff[300:302, 10:12] = 50
    path = write_diff_pack(diff, tmp_path / "diff.tiles")
    built = reference(tmp_path, diff, halve_max)
    tiles = tiles_of(path)
    shape = read_file_index(path).shape
    for level in range(len(shape.level_sizes)):
        np.testing.assert_array_equal(whole_level(tiles, shape, level), built.level(level))
    assert tiles[len(shape.level_sizes) - 1, 0, 0].max() == 200


def test_a_long_index_is_read_in_two_reads_and_damage_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = PyramidShape(3000, 2000, tile_size=16)  # 31 000 tiles: the index passes the tail
    count = sum(1 for _ in tile_order(shape))
    path = write_pack(tmp_path / "p.tiles", shape, (b"x" * (i % 7) for i in range(count)), {})
    reads = []
    data = path.read_bytes()

    def tail(n: int) -> tuple[bytes, int]:
        reads.append(("tail", n))
        return data[-n:], len(data)

    def span(start: int, length: int) -> bytes:
        reads.append(("range", start))
        return data[start : start + length]

    index = tilepack.read_index(tail, span)
    assert [kind for kind, _ in reads] == ["tail", "range"]
    assert index.tile_span(0, 1, 0)[1] == 1 and index.tile_span(0, 6, 0)[1] == 6
    monkeypatch.setattr(tilepack, "TAIL_BYTES", len(data) + 100)
    reads.clear()
    assert tilepack.read_index(tail, span).offsets.tolist() == index.offsets.tolist()
    assert [kind for kind, _ in reads] == ["tail"]

    with pytest.raises(TilePackError):
        tilepack.read_index(lambda n: (data[:-3][-n:], len(data) - 3), span)
    with pytest.raises(ValueError):  # fewer tiles than the shape has
        write_pack(tmp_path / "short.tiles", shape, [b"x"], {})
    assert not (tmp_path / "short.tiles").exists()
