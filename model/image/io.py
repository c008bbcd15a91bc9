"""Reading and writing microscopy images at their full bit depth, with clear errors for bad files.

PNG and JPEG are decoded by Pillow, TIFF by tifffile (8/16-bit, gray/RGB/RGBA, first page of a
multi-page file). The size is checked from the header before any pixel is decoded, so an
oversized image or a decompression bomb is refused without allocating it.
"""

from __future__ import annotations

import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile
from PIL import Image

from model.errors import ImageInputError, ImageTooLargeError

DEFAULT_MAX_PIXELS = 400_000_000
"""Largest image (width x height) accepted unless the caller says otherwise (400 MP)."""

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def sniff_format(head: bytes) -> str | None:
    """Name the image format ("png", "jpeg", "tiff") from a file's first bytes, or None."""
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    return None


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image at its native dtype: (H, W) for gray, (H, W, C) for RGB/RGBA.

    Raises ImageInputError naming the file when it is missing, empty, not a PNG/JPEG/TIFF,
    truncated or corrupt, or larger than `max_pixels`.
    """
    path = Path(path)
    kind = image_kind(path)
    try:
        if kind == "tiff":
            image = _read_tiff(path, max_pixels)
        else:
            image = _read_with_pillow(path, kind, max_pixels)
    except ImageInputError:
        raise
    except (OSError, ValueError, SyntaxError, IndexError, KeyError, MemoryError) as error:
        raise ImageInputError(f"{path}: cannot decode the {kind.upper()} data ({error})") from error
    return _check_array(path, image)


def image_kind(path: Path) -> str:
    """The format, "png", "jpeg" or "tiff", from the first bytes; ImageInputError naming the
    file when it is missing, empty or none of these."""
    if not path.is_file():
        raise ImageInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageInputError(f"{path}: the file is empty (0 bytes)")
    with path.open("rb") as handle:
        kind = sniff_format(handle.read(16))
    if kind is None:
        raise ImageInputError(f"{path}: not a PNG, JPEG or TIFF image")
    return kind


def _check_size(path: Path, height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageInputError(f"{path}: the image has no pixels ({width}x{height})")
    if height * width > max_pixels:
        raise ImageTooLargeError(
            f"{path}: {width}x{height} = {height * width / 1e6:.0f} MP is over the limit of "
            f"{max_pixels / 1e6:.0f} MP"
        )


def _read_with_pillow(path: Path, kind: str, max_pixels: int) -> np.ndarray:
    formats = ["PNG"] if kind == "png" else ["JPEG"]
    with warnings.catch_warnings():
        # Our own pixel limit applies; Pillow's bomb check would fire first on big slides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path, formats=formats) as img:
                _check_size(path, img.height, img.width, max_pixels)
                img.load()
                return _pillow_to_array(img)
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit


def _pillow_to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16)
    if mode == "I":
        data = np.asarray(img)
        # 16-bit PNGs decode to mode "I" (int32); keep them 16-bit when the values fit.
        if data.size and data.min() >= 0 and data.max() <= 65535:
            return data.astype(np.uint16)
        return data.astype(np.float32)
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode in ("LA", "PA"):
        return np.asarray(img.convert("RGBA"))
    return np.asarray(img.convert("RGB"))


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise ImageInputError(f"{path}: the TIFF file has no pages")
            page = tif.pages.first
            shape = page.shape
            if len(shape) < 2:
                raise ImageInputError(f"{path}: the TIFF page is not an image (shape {shape})")
            samples_last = len(shape) == 3 and shape[-1] in (3, 4)
            height, width = (shape[0], shape[1]) if samples_last or len(shape) == 2 else shape[-2:]
            _check_size(path, height, width, max_pixels)
            data = page.asarray()
    except tifffile.TiffFileError as error:
        raise ImageInputError(f"{path}: not a readable TIFF file ({error})") from error
    if data.ndim == 3 and data.shape[0] in (3, 4) and data.shape[-1] not in (3, 4):
        data = np.moveaxis(data, 0, -1)  # planar RGB -> interleaved
    return data


def _check_array(path: Path, image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ImageInputError(f"{path}: unsupported image shape {image.shape}")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if image.dtype.kind not in "uif":
        raise ImageInputError(f"{path}: unsupported pixel type {image.dtype}")
    return image


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """Gray view of an image at its own dtype: alpha is dropped, RGB becomes luminance."""
    if image.ndim == 2:
        return image
    rgb = image[..., :3]
    if np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if image.dtype.kind in "ui":
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(luma), info.min, info.max).astype(image.dtype)
    return luma.astype(image.dtype)


def _atomic_target(path: Path) -> Path:
    """A temporary file beside `path`, with the permissions a plain open() would give it
    (mkstemp makes files private, which breaks shared lab folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def _current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere it can only be read by setting it; set it straight back
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically (temp file + rename): a reader never sees half."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# write_png compresses this many bytes of rows at a time: a 20000² RGB overlay is written
# without a second copy of it (Pillow copies an RGB image into 4 bytes a pixel first).
_PNG_BAND_BYTES = 8 * 2**20
_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray+alpha, RGB, RGBA


def write_png(path: str | os.PathLike, image: np.ndarray, *, compress_level: int = 1) -> Path:
    """Write a bool/uint8/uint16 gray or uint8 RGB(A) array as PNG, atomically (temp file +
    rename), compressing bands of rows as it goes (no copy of the image is made).

    `compress_level` 1 keeps large masks fast to write; PNG stays lossless at every level.
    """
    path = Path(path)
    if image.dtype not in (np.bool_, np.uint8, np.uint16):
        raise TypeError(f"write_png needs uint8 or uint16, got {image.dtype}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.ndim not in (2, 3) or channels not in _PNG_COLOUR_TYPES:
        raise TypeError(f"write_png needs a gray or RGB(A) image, got shape {image.shape}")
    if image.dtype == np.uint16 and image.ndim != 2:
        raise TypeError("16-bit PNGs are written as single-channel images only")
    tmp = _atomic_target(path)
    try:
        with tmp.open("wb") as out:
            _write_png_stream(out, image, channels, compress_level)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_png_stream(out: BinaryIO, image: np.ndarray, channels: int, level: int) -> None:
    """The PNG file: header, the rows (filter "none") deflated band by band, end."""
    height, width = image.shape[:2]
    bit_depth = 16 if image.dtype == np.uint16 else 8
    row_bytes = width * channels * bit_depth // 8
    out.write(b"\x89PNG\r\n\x1a\n")
    header = struct.pack(">IIBBBBB", width, height, bit_depth, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    out.write(_png_chunk(b"IHDR", header))
    deflate = zlib.compressobj(level)
    step = max(1, _PNG_BAND_BYTES // max(row_bytes, 1))
    for top in range(0, height, step):
        band = image[top : top + step]
        if band.dtype == np.bool_:
            band = band.view(np.uint8) * np.uint8(255)
        elif band.dtype == np.uint16:
            band = band.astype(">u2")  # PNG stores 16-bit samples big-endian
        rows = np.empty((len(band), 1 + row_bytes), dtype=np.uint8)
        rows[:, 0] = 0  # each row starts with its filter type
        rows[:, 1:] = np.ascontiguousarray(band).reshape(len(band), -1).view(np.uint8)
        if data := deflate.compress(rows):
            out.write(_png_chunk(b"IDAT", data))
    out.write(_png_chunk(b"IDAT", deflate.flush()))
    out.write(_png_chunk(b"IEND", b""))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    checksum = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def write_tiff(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an array as a (BigTIFF when needed) TIFF file, atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        tifffile.imwrite(tmp, np.ascontiguousarray(image), bigtiff=image.nbytes > 2**31)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


LABEL_TILE = 256  # label TIFFs are tiled: written tile by tile, read by region


def write_labels_tiff(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an id image as a uint32, zlib-compressed, tiled TIFF, atomically; napari opens a
    32-bit integer image as labels. A uint16 image is widened a tile at a time, never whole."""
    path = Path(path)
    height, width = labels.shape
    step = LABEL_TILE

    def tiles():
        for top in range(0, height, step):
            for left in range(0, width, step):
                yield labels[top : top + step, left : left + step].astype(np.uint32)

    tmp = _atomic_target(path)
    try:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(height, width),
            dtype=np.uint32,
            tile=(step, step),
            compression="zlib",
            photometric="minisblack",
            bigtiff=height * width * 4 > 2**31,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
