"""The viewer's image pyramid, on arrays: level sizes and tiles, the model's normalization at
every bit depth, outlines and previews."""

import errno
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.image.io import to_grayscale
from model.image.normalize import intensity_window, to_uint8
from model.image.pyramid import (
    STRIP_ROWS,
    Pyramid,
    PyramidShape,
    TileOutOfRange,
    build_levels,
    create_level,
    encode_png,
    halve,
    halve_max,
    normalized_gray,
)


def build(directory: Path, level0: np.ndarray) -> Pyramid:
    height, width = level0.shape
    create_level(directory, 0, width, height)[:] = level0
    build_levels(directory, PyramidShape(width, height), {"layer": "test"})
    return Pyramid(directory)


def test_levels_halve_down_to_one_tile() -> None:
    shape = PyramidShape(1000, 300, tile_size=256)
    assert shape.level_sizes == [(1000, 300), (500, 150), (250, 75)]
    assert [shape.grid(level) for level in range(3)] == [(4, 2), (2, 1), (1, 1)]
    assert shape.tile_box(0, 3, 1) == (768, 256, 1000, 300)
    assert PyramidShape(200, 100).level_sizes == [(200, 100)]
    assert len(PyramidShape(20000, 20000).level_sizes) == 8  # 20000 / 2^7 = 157 <= 256


@pytest.mark.parametrize(("level", "col", "row"), [(3, 0, 0), (0, 4, 0), (0, 0, 2), (-1, 0, 0)])
def test_tiles_outside_the_pyramid_are_refused(level: int, col: int, row: int) -> None:
    with pytest.raises(TileOutOfRange):
        PyramidShape(1000, 300).tile_box(level, col, row)


def test_halving_is_the_rounded_mean_of_2x2_blocks_with_odd_edges_repeated() -> None:
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (2 * STRIP_ROWS + 3, 7), dtype=np.uint8)  # strips, odd edges
    out = np.zeros((STRIP_ROWS + 2, 4), dtype=np.uint8)
    halve(source, out)
    padded = np.pad(source, ((0, 1), (0, 1)), mode="edge").astype(np.uint32)
    blocks = padded.reshape(STRIP_ROWS + 2, 2, 4, 2).sum(axis=(1, 3))
    np.testing.assert_array_equal(out, (blocks + 2) // 4)


def test_coded_layers_halve_by_block_maxima_so_small_codes_stay() -> None:
    rng = np.random.default_rng(1)
    source = rng.choice(np.array([0, 50, 100, 150, 200], np.uint8), (2 * STRIP_ROWS + 3, 7))
    out = np.zeros((STRIP_ROWS + 2, 4), dtype=np.uint8)
    halve_max(source, out)
    padded = np.pad(source, ((0, 1), (0, 1)), mode="edge")
    np.testing.assert_array_equal(out, padded.reshape(STRIP_ROWS + 2, 2, 4, 2).max(axis=(1, 3)))
    lone = np.zeros((600, 600), np.uint8)
    lone[301, 417] = 200  # one added pixel is still there two levels down
    directory_levels = [lone]
    for _ in range(2):
        smaller = np.zeros(((directory_levels[-1].shape[0] + 1) // 2,) * 2, np.uint8)
        halve_max(directory_levels[-1], smaller)
        directory_levels.append(smaller)
    assert directory_levels[-1].max() == 200 and set(np.unique(directory_levels[-1])) == {0, 200}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_level_zero_is_the_image_as_the_model_sees_it(dtype: type) -> None:
    rng = np.random.default_rng(1)
    top = {np.uint8: 255, np.uint16: 4000, np.float32: 1.0}[dtype]
    image = (rng.random((300, 200)) * top).astype(dtype)
    out = np.zeros(image.shape, dtype=np.uint8)
    low, high = normalized_gray(image, out)
    window = intensity_window(image)
    assert (low, high) == (window.low, window.high)
    np.testing.assert_array_equal(out, to_uint8(window.apply(image)))


def test_colour_images_are_made_gray_first() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 65535, (2 * STRIP_ROWS + 5, 40, 3), dtype=np.uint16)
    out = np.zeros(image.shape[:2], dtype=np.uint8)
    normalized_gray(image, out)
    gray = to_grayscale(image)
    np.testing.assert_array_equal(out, to_uint8(intensity_window(gray).apply(gray)))


def test_tiles_cut_each_level_and_previews_fit_the_longest_side(tmp_path: Path) -> None:
    level0 = np.random.default_rng(3).integers(0, 256, (600, 1000), dtype=np.uint8)
    pyramid = build(tmp_path, level0)
    np.testing.assert_array_equal(pyramid.tile(0, 3, 2), level0[512:600, 768:1000])
    level1 = pyramid.level(1)
    assert level1.shape == (300, 500)
    np.testing.assert_array_equal(pyramid.tile(1, 1, 1), level1[256:300, 256:500])
    assert pyramid.tile(2, 0, 0).shape == (150, 250)
    assert pyramid.preview(100).shape == (60, 100)
    assert pyramid.preview(5000).shape == (600, 1000)  # never enlarged
    expected = cv2.resize(np.asarray(level1), (250, 150), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(pyramid.preview(250), expected)
    decoded = cv2.imdecode(np.frombuffer(encode_png(pyramid.tile(0, 1, 1)), np.uint8), -1)
    np.testing.assert_array_equal(decoded, level0[256:512, 256:512])


def test_outlines_are_the_marks_edges_and_continue_across_tiles(tmp_path: Path) -> None:
    mask = np.zeros((300, 300), dtype=np.uint8)
    mask[240:270, 240:270] = 255  # a square across four tiles
    pyramid = build(tmp_path, mask)
    whole = np.zeros_like(mask)
    for row in range(2):
        for col in range(2):
            x0, y0, x1, y1 = pyramid.shape.tile_box(0, col, row)
            whole[y0:y1, x0:x1] = pyramid.outline_tile(0, col, row)
    expected = np.zeros_like(mask)
    expected[240:270, 240:270] = 255
    expected[241:269, 241:269] = 0
    np.testing.assert_array_equal(whole, expected)


def test_level_files_have_their_disk_space_reserved_before_they_are_mapped(tmp_path: Path) -> None:
    # A sparse file would take its blocks only when written through the mapping, and a full disk
    # then kills the process with SIGBUS instead of raising.
    level = create_level(tmp_path, 0, 3000, 2000)
    path = tmp_path / "level_0.npy"
    assert path.stat().st_blocks * 512 >= 3000 * 2000
    level[-1, -1] = 7
    level.flush()
    del level
    assert np.load(path)[-1, -1] == 7 and np.load(path).shape == (2000, 3000)


def test_a_level_the_disk_has_no_room_for_raises_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.posix_fallocate", disk_full)
    with pytest.raises(OSError, match="No space left"):
        create_level(tmp_path, 0, 3000, 2000)
    assert not (tmp_path / "level_0.npy").exists()


def test_a_file_system_without_fallocate_gets_a_sparse_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr("os.posix_fallocate", unsupported)
    level = create_level(tmp_path, 0, 300, 200)
    level[-1, -1] = 9
    level.flush()
    del level
    assert np.load(tmp_path / "level_0.npy")[-1, -1] == 9
