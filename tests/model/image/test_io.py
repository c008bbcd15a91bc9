"""Reading images at full bit depth, and one clear error per kind of bad file."""

import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from model.errors import ImageInputError
from model.image import io
from model.image.io import read_image, to_grayscale, write_png, write_tiff


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_png_gray_8_and_16_bit_round_trip(tmp_path, rng):
    gray8 = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    assert np.array_equal(read_image(write_png(tmp_path / "a.png", gray8)), gray8)
    back16 = read_image(write_png(tmp_path / "b.png", gray16))
    assert back16.dtype == np.uint16
    assert np.array_equal(back16, gray16)


def test_png_rgb_and_rgba(tmp_path, rng):
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    assert np.array_equal(read_image(write_png(tmp_path / "rgb.png", rgb)), rgb)
    assert np.array_equal(read_image(write_png(tmp_path / "rgba.png", rgba)), rgba)


def test_tiff_16_bit_gray_and_rgb_keep_full_depth(tmp_path, rng):
    gray = rng.integers(0, 4096, (64, 48), dtype=np.uint16)  # 12-bit camera data
    rgb = rng.integers(0, 65536, (16, 24, 3), dtype=np.uint16)
    assert np.array_equal(read_image(write_tiff(tmp_path / "g.tiff", gray)), gray)
    back = read_image(write_tiff(tmp_path / "rgb.tif", rgb))
    assert back.dtype == np.uint16
    assert np.array_equal(back, rgb)


def test_compressed_tiff(tmp_path, rng):
    gray = rng.integers(0, 65536, (40, 40), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "lzw.tif", gray, compression="zlib")
    assert np.array_equal(read_image(tmp_path / "lzw.tif"), gray)


def test_multipage_tiff_gives_first_page(tmp_path, rng):
    pages = rng.integers(0, 65536, (3, 20, 30), dtype=np.uint16)
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tif:
        for page in pages:
            tif.write(page)
    assert np.array_equal(read_image(tmp_path / "stack.tif"), pages[0])


def test_jpeg(tmp_path):
    image = np.full((32, 32), 128, dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    back = read_image(tmp_path / "a.jpg")
    assert back.shape == (32, 32)
    assert abs(int(back.mean()) - 128) <= 2


def test_to_grayscale_keeps_dtype_and_drops_alpha():
    rgba = np.zeros((4, 4, 4), dtype=np.uint16)
    rgba[..., :3] = 1000
    rgba[..., 3] = 65535
    gray = to_grayscale(rgba)
    assert gray.dtype == np.uint16
    assert gray.shape == (4, 4)
    assert np.all(gray == 1000)
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[..., 1] = 200  # pure green
    assert np.all(to_grayscale(colour) == round(0.587 * 200))


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no data (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.png", b"", "empty"),
        ("garbage.png", b"this is not an image at all" * 10, "not a PNG, JPEG or TIFF"),
        ("truncated.png", None, "cannot decode"),
        ("truncated.tif", None, "TIFF"),
        ("bomb.png", _png_with_header(100_000, 100_000), "over the limit"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:  # a real image cut in half
        image = np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)
        whole = tmp_path / ("whole" + path.suffix)
        (write_png if path.suffix == ".png" else write_tiff)(whole, image)
        data = whole.read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(ImageInputError) as info:
        read_image(path)
    text = str(info.value)
    assert str(path) in text
    assert message in text
    assert "\n" not in text


def test_missing_file(tmp_path):
    with pytest.raises(ImageInputError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = write_png(tmp_path / "big.png", np.zeros((100, 100), dtype=np.uint8))
    with pytest.raises(ImageInputError, match="over the limit"):
        read_image(path, max_pixels=5_000)
    assert read_image(path, max_pixels=10_000).shape == (100, 100)


def test_write_png_is_atomic_and_leaves_no_temp_files(tmp_path):
    write_png(tmp_path / "x.png", np.ones((5, 5), dtype=np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    with pytest.raises(TypeError):
        write_png(tmp_path / "y.png", np.ones((5, 5), dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_written_files_follow_the_umask(tmp_path):
    """Shared lab folders need group- and world-readable outputs under the usual umask 022."""
    import os
    import stat

    from model.image.io import write_png, write_text, write_tiff

    previous = os.umask(0o022)
    try:
        image = np.zeros((8, 8), np.uint8)
        paths = [
            write_png(tmp_path / "a.png", image),
            write_tiff(tmp_path / "a.tif", image),
            write_text(tmp_path / "a.csv", "id\n"),
        ]
        os.umask(0o077)
        private = write_png(tmp_path / "private.png", image)
    finally:
        os.umask(previous)
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


@pytest.mark.parametrize("band_bytes", [1, 37, 1 << 20])
def test_png_written_in_bands_reads_back_exactly(tmp_path, monkeypatch, band_bytes):
    """Bands of one row or a few (a 20000² overlay is written 8 MiB at a time) change no pixel;
    Pillow, OpenCV and our reader agree on every kind of PNG written."""
    monkeypatch.setattr(io, "_PNG_BAND_BYTES", band_bytes)
    rng = np.random.default_rng(band_bytes)
    images = {
        "gray8": rng.integers(0, 256, (23, 17), dtype=np.uint8),
        "gray16": rng.integers(0, 65536, (23, 17), dtype=np.uint16),
        "rgb": rng.integers(0, 256, (23, 17, 3), dtype=np.uint8),
        "rgba": rng.integers(0, 256, (23, 17, 4), dtype=np.uint8),
        "gray_alpha": rng.integers(0, 256, (23, 17, 2), dtype=np.uint8),
    }
    for name, image in images.items():
        path = write_png(tmp_path / f"{name}.png", image)
        np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
        if image.ndim == 2:
            np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), image)
    mask = rng.random((23, 17)) < 0.5
    back = read_image(write_png(tmp_path / "mask.png", mask))
    np.testing.assert_array_equal(back, mask.astype(np.uint8) * 255)
