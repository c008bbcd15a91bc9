"""read_gray: the gray image the pipeline uses, equal to to_grayscale(read_image(...)) for every
TIFF layout (strips, one strip, tiles, planes, compressions, byte orders, 1-bit) and for PNG and
JPEG; its peak memory near the gray image's size, not the colour image's; the decoded size
checked from the header before a pixel is decoded (issue 37)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from model.errors import ImageInputError, ImageTooLargeError
from model.image.gray import read_gray
from model.image.io import read_image, to_grayscale

RNG = np.random.default_rng(37)
RGB8 = RNG.integers(0, 256, (301, 257, 3), dtype=np.uint8)
RGB16 = RNG.integers(0, 65536, (301, 257, 3), dtype=np.uint16)
GRAY16 = RNG.integers(0, 65536, (301, 257), dtype=np.uint16)
RGBA_FLOAT = RNG.random((301, 257, 4))
PLANAR = {"planarconfig": "separate", "photometric": "rgb"}

TIFF_LAYOUTS = {
    "gray16 zlib strips": (GRAY16, {"rowsperstrip": 16, "compression": "zlib"}),
    "rgb8 strips": (RGB8, {"rowsperstrip": 16}),
    "rgb8 one strip": (RGB8, {}),
    "rgb16 planar strips": (np.moveaxis(RGB16, -1, 0), {**PLANAR, "rowsperstrip": 32}),
    "rgb16 planar one strip": (np.moveaxis(RGB16, -1, 0), PLANAR),
    "rgba float64 zlib tiles": (
        RGBA_FLOAT,
        {"tile": (64, 64), "compression": "zlib", "photometric": "rgb", "extrasamples": [2]},
    ),
    "rgb8 planar tiles": (np.moveaxis(RGB8, -1, 0), {**PLANAR, "tile": (32, 64)}),
    "rgb8 jpeg strips": (RGB8, {"compression": "jpeg", "rowsperstrip": 16}),
    "gray8 predictor": (RGB8[..., 0], {"compression": "zlib", "predictor": True}),
    "1-bit": (RGB8[..., 0] > 128, {}),
    "rgb16 big-endian": (RGB16, {"byteorder": ">"}),
    "rgb16 equal channels": (np.repeat(GRAY16[..., None], 3, -1), {"rowsperstrip": 16}),
    "float32 lzw strips": (RGBA_FLOAT[..., 0].astype(np.float32), {"compression": "lzw"}),
}


def reference(path: Path) -> np.ndarray:
    gray = to_grayscale(read_image(path))
    return gray.astype(np.uint8) * 255 if gray.dtype == np.bool_ else gray


@pytest.mark.parametrize("layout", TIFF_LAYOUTS, ids=str)
def test_every_tiff_layout_reads_as_its_gray_image(tmp_path: Path, layout: str) -> None:
    image, options = TIFF_LAYOUTS[layout]
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, **options)

    gray = read_gray(path)

    expected = reference(path)
    assert (gray.dtype, gray.shape) == (expected.dtype, expected.shape)
    if gray.dtype.kind == "f":  # luma in float32 either way; equal channels may skip it
        np.testing.assert_allclose(gray, expected, rtol=1e-6)
    else:
        np.testing.assert_array_equal(gray, expected)


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("rgb.png", RGB8),
        ("rgba.png", np.dstack([RGB8, RGB8[..., 0]])),
        ("gray16.png", GRAY16),
        ("rgb.jpg", RGB8),
    ],
)
def test_png_and_jpeg_read_as_their_gray_image(tmp_path: Path, name: str, image) -> None:
    path = tmp_path / name
    Image.fromarray(image).save(path)
    np.testing.assert_array_equal(read_gray(path), reference(path))
    Image.fromarray(RGB8).convert("P").save(palette := tmp_path / "palette.png")
    np.testing.assert_array_equal(read_gray(palette), reference(palette))


def test_the_decoded_size_is_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, RGBA_FLOAT, photometric="rgb", extrasamples=[2])
    decoded = RGBA_FLOAT.nbytes
    assert read_gray(path, max_bytes=decoded).shape == RGBA_FLOAT.shape[:2]
    with pytest.raises(ImageTooLargeError, match="decodes to"):
        read_gray(path, max_bytes=decoded - 1)


def test_a_truncated_uncompressed_tiff_says_so(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, RGB16)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageInputError, match=r"cut\.tif"):
        read_gray(path)


# Peak memory, measured in a fresh process: its peak (VmHWM, reset after the imports) over its
# size before reading.
PROBE = """
import sys
import model.image.gray as gray
from model.image.io import read_image, to_grayscale
gray.BAND_BYTES = 4 * 2**20

def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from here
base_kb = status_kb("VmRSS")
if sys.argv[2] == "gray":
    image = gray.read_gray(sys.argv[1])
else:
    image = to_grayscale(read_image(sys.argv[1]))
print(status_kb("VmHWM") - base_kb, image.nbytes // 1024)
"""
BIG = (2500, 2500, 4)  # RGBA float64: 200 MB decoded, 50 MB as gray
RGBA = {"photometric": "rgb", "extrasamples": [2]}
MEMORY_LAYOUTS = {
    "zlib strips": {**RGBA, "compression": "zlib", "rowsperstrip": 64},
    "zlib tiles": {**RGBA, "compression": "zlib", "tile": (256, 256)},
    "uncompressed, one strip": RGBA,
}


def peak_rise_kb(path: Path, how: str) -> tuple[int, int]:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), how], capture_output=True, text=True, check=True
    )
    rise, gray = run.stdout.split()
    return int(rise), int(gray)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("layout", MEMORY_LAYOUTS, ids=str)
def test_peak_memory_stays_near_the_gray_image(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros(BIG), **MEMORY_LAYOUTS[layout])
    decoded_kb = np.prod(BIG) * 8 // 1024

    rise, gray = peak_rise_kb(path, "gray")

    assert rise < gray + 64 * 1024, f"peak rose {rise} KB for a {gray} KB gray image"
    assert rise < decoded_kb / 2  # the colour image (200 MB) was never held
