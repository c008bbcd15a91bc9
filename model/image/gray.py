"""Reading an image as the one gray channel the pipeline uses, without ever holding the colour
image: `read_gray(path)` equals `to_grayscale(read_image(path))` (exactly for integer images)
while its peak memory stays near the gray image's size.

A TIFF is decoded a band of strips or tiles at a time and each band turned gray before the
next is read; an uncompressed strip is read in bands of rows. A TIFF compressed as one big
strip is decoded a strip at a time, so its peak is that strip (bounded by `max_bytes`). PNG and
JPEG are decoded whole by Pillow, then turned gray a band at a time. The decoded size (pixels x
channels x bytes a sample) is checked from the header against `max_bytes` before any pixel is.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from model.errors import ImageInputError, ImageTooLargeError
from model.image.io import (
    DEFAULT_MAX_PIXELS,
    _check_size,
    _pillow_to_array,
    image_kind,
    to_grayscale,
)

# A band of the colour image holds about this much at a time.
BAND_BYTES = 32 * 2**20
# Bytes a pixel takes once Pillow's mode is read as read_image reads it (palettes become RGB).
_PILLOW_PIXEL_BYTES = {"1": 1, "L": 1, "P": 3, "RGB": 3, "RGBA": 4, "LA": 4, "PA": 4, "I": 4}
_PILLOW_PIXEL_BYTES |= {"F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "CMYK": 3, "YCbCr": 3}


def read_gray(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> np.ndarray:
    """The image as one gray channel at its own dtype ((H, W); 1-bit images as 0/255 uint8).

    Raises ImageInputError naming the file for a missing, empty, unreadable or unsupported
    image, and ImageTooLargeError when it has more than `max_pixels` pixels or would decode
    to more than `max_bytes` bytes in colour.
    """
    path = Path(path)
    kind = image_kind(path)
    try:
        if kind == "tiff":
            gray = _tiff_gray(path, max_pixels, max_bytes)
        else:
            gray = _pillow_gray(path, kind, max_pixels, max_bytes)
    except ImageInputError:
        raise
    except tifffile.TiffFileError as error:
        raise ImageInputError(f"{path}: not a readable TIFF file ({error})") from error
    except (OSError, ValueError, SyntaxError, IndexError, KeyError) as error:
        raise ImageInputError(f"{path}: cannot decode the {kind.upper()} data ({error})") from error
    if gray.dtype == np.bool_:
        return gray.view(np.uint8) * np.uint8(255)
    if gray.dtype.kind not in "uif":
        raise ImageInputError(f"{path}: unsupported pixel type {gray.dtype}")
    return gray


def check_decoded_bytes(path: Path, description: str, size: int, max_bytes: int | None) -> None:
    """Raise ImageTooLargeError when an image would decode to more than `max_bytes`."""
    if max_bytes is not None and size > max_bytes:
        raise ImageTooLargeError(
            f"{path}: {description} decodes to {size / 1e9:.1f} GB, over the limit of "
            f"{max_bytes / 1e9:.1f} GB"
        )


def _tiff_gray(path: Path, max_pixels: int, max_bytes: int | None) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise ImageInputError(f"{path}: the TIFF file has no pages")
        page = tif.pages.first
        layout = _TiffLayout(path, page)
        _check_size(path, layout.height, layout.width, max_pixels)
        description = f"{layout.width}x{layout.height} x {layout.samples} x {page.dtype}"
        check_decoded_bytes(path, description, layout.decoded_bytes, max_bytes)
        gray = np.empty((layout.height, layout.width), dtype=page.dtype)
        for rows, band in layout.bands(tif.filehandle):
            gray[rows] = to_grayscale(band[..., 0] if band.shape[-1] == 1 else band)
    return gray


class _TiffLayout:
    """Where a TIFF page's pixels are: its strips or tiles, chunky or one plane a sample."""

    def __init__(self, path: Path, page: tifffile.TiffPage) -> None:
        separate, depth, height, width, contig = page.shaped
        self.samples = separate * contig
        if depth != 1 or self.samples not in (1, 3, 4) or page.dtype is None:
            raise ImageInputError(f"{path}: unsupported image shape {page.shape}")
        self.path, self.page, self.height, self.width = path, page, height, width
        self.separate, self.contig = separate, contig
        if page.is_tiled:
            self.segment_rows, self.segment_cols = page.tilelength, page.tilewidth
        else:
            self.segment_rows, self.segment_cols = min(page.rowsperstrip or height, height), width
        self.rows_of_segments = math.ceil(height / self.segment_rows)
        self.cols_of_segments = math.ceil(width / self.segment_cols)
        count = separate * self.rows_of_segments * self.cols_of_segments
        if len(page.dataoffsets) != count:
            raise ImageInputError(
                f"{path}: the TIFF page has {len(page.dataoffsets)} strips "
                f"or tiles where its size needs {count}"
            )

    @property
    def decoded_bytes(self) -> int:
        return self.height * self.width * self.samples * self.page.dtype.itemsize

    def bands(self, handle: tifffile.FileHandle) -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, pixels (rows, width, samples)) for every band, top to bottom."""
        raw = self.page.compression == 1 and self.page.predictor == 1 and not self.page.is_tiled
        raw = raw and self.page.bitspersample in (8, 16, 32, 64) and self.page.fillorder == 1
        for row in range(self.rows_of_segments):
            top = row * self.segment_rows
            bottom = min(top + self.segment_rows, self.height)
            if raw:
                yield from self._raw_bands(handle, row, top, bottom)
            else:
                yield slice(top, bottom), self._decoded_band(handle, row, top, bottom)

    def _decoded_band(self, handle: tifffile.FileHandle, row: int, top: int, bottom: int):
        band = np.zeros((bottom - top, self.width, self.samples), dtype=self.page.dtype)
        for sample in range(self.separate):
            for col in range(self.cols_of_segments):
                index = (sample * self.rows_of_segments + row) * self.cols_of_segments + col
                segment = self._decode(handle, index)
                if segment is None:
                    continue  # an empty strip or tile: zeros, as tifffile fills them
                left = col * self.segment_cols
                right = min(left + self.segment_cols, self.width)
                pixels = segment[0, : bottom - top, : right - left]
                channels = slice(sample, sample + 1) if self.separate > 1 else slice(None)
                band[:, left:right, channels] = pixels
        return band

    def _decode(self, handle: tifffile.FileHandle, index: int) -> np.ndarray | None:
        offset, count = self.page.dataoffsets[index], self.page.databytecounts[index]
        data = None
        if offset and count:
            handle.seek(offset)
            data = handle.read(count)
        segment, _, _ = self.page.decode(data, index, jpegtables=self.page.jpegtables)
        return segment

    def _raw_bands(self, handle, row: int, top: int, bottom: int):
        """An uncompressed strip, read straight from the file in bands of rows."""
        dtype = self.page.dtype.newbyteorder(self.page.parent.byteorder)
        row_bytes = self.width * self.contig * dtype.itemsize
        step = max(1, BAND_BYTES // max(row_bytes * self.separate, 1))
        for start in range(top, bottom, step):
            stop = min(start + step, bottom)
            band = np.empty((stop - start, self.width, self.samples), dtype=self.page.dtype)
            for sample in range(self.separate):
                index = sample * self.rows_of_segments + row
                handle.seek(self.page.dataoffsets[index] + (start - top) * row_bytes)
                data = handle.read((stop - start) * row_bytes)
                if len(data) < (stop - start) * row_bytes:
                    raise ImageInputError(f"{self.path}: the TIFF file ends inside its pixels")
                pixels = np.frombuffer(data, dtype=dtype).reshape(stop - start, self.width, -1)
                channels = slice(sample, sample + 1) if self.separate > 1 else slice(None)
                band[..., channels] = pixels
            yield slice(start, stop), band


def _pillow_gray(path: Path, kind: str, max_pixels: int, max_bytes: int | None) -> np.ndarray:
    with warnings.catch_warnings():
        # Our own pixel limit applies; Pillow's bomb check would fire first on big slides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path, formats=["PNG" if kind == "png" else "JPEG"]) as img:
                _check_size(path, img.height, img.width, max_pixels)
                size = img.width * img.height * _PILLOW_PIXEL_BYTES.get(img.mode, 3)
                check_decoded_bytes(path, f"{img.width}x{img.height} {img.mode}", size, max_bytes)
                img.load()
                return _pillow_bands_to_gray(img)
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit


def _pillow_bands_to_gray(img: Image.Image) -> np.ndarray:
    """Gray modes as one array; colour ones a band of rows at a time, as read_image would
    give them (palettes as RGB, gray+alpha as RGBA) then to_grayscale."""
    if img.mode in ("L", "F", "I;16", "I;16B", "I;16L", "I", "1"):
        return _pillow_to_array(img)
    width, height = img.size
    gray = None
    step = max(1, BAND_BYTES // max(width * 4, 1))
    for top in range(0, height, step):
        bottom = min(top + step, height)
        band = to_grayscale(_pillow_to_array(img.crop((0, top, width, bottom))))
        if gray is None:
            gray = np.empty((height, width), dtype=band.dtype)
        gray[top:bottom] = band
    return gray
