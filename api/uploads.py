"""Receiving an uploaded image without ever holding it in memory.

The body streams to a temporary file a megabyte at a time; the image is then checked from its
header only (format, width, height, bit depth): the pixel limit stops decompression bombs, and
no pixel is decoded in the API, so its memory does not grow with what is uploaded. The worker
decodes the image: truncated or corrupt pixel data fails the task there, with a message in the
task's `error`. The client's Content-Type is not trusted; the bytes are sniffed.

`api.body_guard` keeps broken, slow and too many clients from holding the API.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio
import tifffile
from fastapi import Request
from starlette.datastructures import UploadFile

from api.acquisitions import IMZML_PART, save_imzml_part
from api.problems import Problem
from model.image.io import sniff_format

IMAGE_CONTENT_TYPES = {"image/png": "png", "image/tiff": "tiff", "image/jpeg": "jpeg"}
MULTIPART = "multipart/form-data"
UPLOAD_MEDIA_TYPES = frozenset((*IMAGE_CONTENT_TYPES, MULTIPART))
# The upload reaches its file in pieces this big: memory per upload stays about this much.
WRITE_CHUNK = 1024 * 1024

_PNG_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Channels once decoded as the worker reads them: a palette becomes RGB, gray + alpha RGBA.
_PNG_DECODED_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}
# JPEG frame headers (SOF0..SOF15 but DHT, JPG and DAC), and markers without a length.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset((0x01, *range(0xD0, 0xD8)))
# Real files have a handful of segments before the frame header; a crafted one must not keep
# a thread busy walking millions of them (or of stray bytes).
_JPEG_MAX_STEPS = 100_000


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def is_upload(method: str, content_type: str | None) -> bool:
    """Whether a request sends an image to be stored (what `receive_upload` accepts)."""
    return method == "POST" and media_type(content_type) in UPLOAD_MEDIA_TYPES


@dataclass
class ReceivedImage:
    path: Path
    content_type: str
    size: int
    sha256: str
    width: int
    height: int
    filename: str | None = None  # the multipart part's file name, as the client sent it
    imzml: Path | None = None  # the acquisition's imzML, the multipart part `imzml` if sent


@dataclass(frozen=True)
class ImageHeader:
    kind: str  # "png", "jpeg" or "tiff"
    width: int
    height: int
    pixel_bytes: int = 1  # a pixel's size once decoded: channels x bytes a sample

    @property
    def decoded_bytes(self) -> int:
        return self.width * self.height * self.pixel_bytes


class _HeaderError(Exception):
    """The image's header cannot be read or describes no usable image."""


async def receive_upload(
    request: Request, scratch_dir: Path, *, with_imzml: bool = False
) -> ReceivedImage:
    """Store the request's image (raw body or multipart field `file`) as `scratch_dir/upload`
    and check its header; raises Problem (413/415/422) for anything that is not a usable image.
    `with_imzml`: a multipart body may also carry the acquisition's imzML as the part `imzml`,
    stored as `scratch_dir/acquisition.imzML` (api.acquisitions checks its first bytes).
    """
    media = media_type(request.headers.get("content-type"))
    if media not in UPLOAD_MEDIA_TYPES:
        raise Problem(
            415,
            f"unsupported content type {media or '(none)'!r}: send the image as the raw body "
            "with Content-Type image/png, image/tiff or image/jpeg, or as the "
            "multipart/form-data field 'file'",
            kind="unsupported-media-type",
        )
    path = scratch_dir / "upload"
    filename = imzml = None
    try:
        with path.open("wb") as handle:
            upload = _HashedFile(handle)
            if media == MULTIPART:
                filename, imzml = await _copy_multipart(
                    request, upload, scratch_dir if with_imzml else None
                )
            else:
                await _copy_stream(request, upload)
            await upload.flush()
        if upload.size == 0:
            raise Problem(422, "the uploaded image is empty (0 bytes)", kind="empty-upload")
        settings = request.app.state.settings
        header = await anyio.to_thread.run_sync(
            check_header, path, media, settings.max_pixels, settings.max_decoded_bytes
        )
        return ReceivedImage(
            path=path,
            content_type=f"image/{header.kind}",
            size=upload.size,
            sha256=upload.digest.hexdigest(),
            width=header.width,
            height=header.height,
            filename=filename,
            imzml=imzml,
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise


class _HashedFile:
    """Writes the upload to its file a megabyte at a time, in a thread (not on the event
    loop), and hashes it on the way."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self.pending = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        self.pending += chunk
        if len(self.pending) >= WRITE_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        if self.pending:
            data, self.pending = bytes(self.pending), bytearray()
            await anyio.to_thread.run_sync(self.handle.write, data)


async def _copy_stream(request: Request, upload: _HashedFile) -> None:
    async for chunk in request.stream():
        if chunk:
            await upload.write(chunk)


async def _copy_multipart(
    request: Request, upload: _HashedFile, imzml_dir: Path | None
) -> tuple[str | None, Path | None]:
    """Copy the `file` part, and with `imzml_dir` the `imzml` part when sent; the file's name
    as sent and where the imzML went."""
    try:
        # Starlette spools a file part to an unnamed temporary file past 1 MB.
        form = await request.form(max_files=1 if imzml_dir is None else 2, max_fields=16)
    except Problem:  # the body guard's 408, 413 or client-closed, raised while reading
        raise
    except Exception as error:  # malformed multipart framing
        raise Problem(422, f"malformed multipart body: {error}", kind="invalid-multipart") from None
    try:
        field = form.get("file")
        if not isinstance(field, UploadFile):
            raise Problem(
                422, "the multipart body has no file field named 'file'", kind="missing-file"
            )
        while chunk := await field.read(WRITE_CHUNK):
            await upload.write(chunk)
        imzml = form.get(IMZML_PART) if imzml_dir is not None else None
        if imzml is not None:
            imzml = await save_imzml_part(imzml, imzml_dir / "acquisition.imzML")
        return field.filename, imzml
    finally:
        await form.close()


def check_header(
    path: Path, media: str, max_pixels: int, max_bytes: int | None = None
) -> ImageHeader:
    """The image's format and size from its first bytes, without decoding a pixel; raises
    Problem 415 (not an image, or not the declared one), 413 (too many pixels, or too many
    bytes once decoded) or 422."""
    with path.open("rb") as handle:
        kind = sniff_format(handle.read(16))
        if kind is None:
            raise Problem(415, "the upload is not a PNG, JPEG or TIFF image", kind="not-an-image")
        declared = IMAGE_CONTENT_TYPES.get(media)
        if declared is not None and declared != kind:
            raise Problem(
                415,
                f"Content-Type says {media} but the body is a {kind.upper()} image",
                kind="content-type-mismatch",
            )
        handle.seek(0)
        read_size = {"png": _png_size, "jpeg": _jpeg_size, "tiff": _tiff_size}[kind]
        try:
            width, height, pixel_bytes = read_size(handle)
        except _HeaderError as error:
            raise Problem(
                422, f"the {kind.upper()} header cannot be read: {error}", kind="unreadable-image"
            ) from None
    if width <= 0 or height <= 0:
        raise Problem(
            422, f"the image header says it has no pixels ({width}x{height})", kind="no-pixels"
        )
    if width * height > max_pixels:
        raise Problem(
            413,
            f"{width}x{height} = {width * height / 1e6:.0f} MP is over the limit of "
            f"{max_pixels / 1e6:.0f} MP (MAX_PIXELS)",
            kind="too-many-pixels",
        )
    header = ImageHeader(kind=kind, width=width, height=height, pixel_bytes=pixel_bytes)
    if max_bytes is not None and header.decoded_bytes > max_bytes:
        raise Problem(
            413,
            f"{width}x{height} with {pixel_bytes} bytes a pixel decodes to "
            f"{header.decoded_bytes / 1e9:.1f} GB, over the limit of {max_bytes / 1e9:.1f} GB "
            "(MAX_DECODED_BYTES); convert it to 8- or 16-bit gray or RGB",
            kind="too-many-bytes",
        )
    return header


def _png_size(handle: BinaryIO) -> tuple[int, int, int]:
    """Width, height and decoded bytes a pixel; PNG puts its header (IHDR) first, at a fixed
    place."""
    data = handle.read(33)
    if len(data) < 33:
        raise _HeaderError("the file ends inside its header")
    length, chunk_type, width, height, bit_depth, color_type = struct.unpack(">I4sIIBB", data[8:26])
    if chunk_type != b"IHDR" or length != 13:
        raise _HeaderError("the first chunk is not IHDR")
    if bit_depth not in _PNG_BIT_DEPTHS.get(color_type, ()):
        raise _HeaderError(f"bit depth {bit_depth} with colour type {color_type} is not valid")
    sample_bytes = 2 if bit_depth == 16 else 1
    return width, height, _PNG_DECODED_CHANNELS[color_type] * sample_bytes


def _jpeg_size(handle: BinaryIO) -> tuple[int, int, int]:
    """Width, height and decoded bytes a pixel, from the frame header (SOFn): walk the
    segments to it, seeking over each segment's data."""
    handle.seek(2)  # after SOI
    for _ in range(_JPEG_MAX_STEPS):
        byte = handle.read(1)
        if not byte:
            raise _HeaderError("the file ends before its frame header")
        if byte != b"\xff":
            continue  # a stray byte between segments: libjpeg skips them too
        marker = handle.read(1)
        if marker == b"\xff":  # a fill byte: the marker comes later
            handle.seek(-1, os.SEEK_CUR)
            continue
        code = marker[0] if marker else 0xD9
        if code in _JPEG_STANDALONE_MARKERS or code == 0x00:
            continue
        if code in (0xD9, 0xDA):  # end of image, start of scan
            raise _HeaderError("no frame header before the image data")
        length_bytes = handle.read(2)
        if len(length_bytes) < 2 or int.from_bytes(length_bytes, "big") < 2:
            raise _HeaderError("a segment has no valid length")
        if code in _JPEG_FRAME_MARKERS:
            frame = handle.read(6)
            if len(frame) < 6:
                raise _HeaderError("the file ends inside its frame header")
            precision, height, width, components = struct.unpack(">BHHB", frame)
            return width, height, components * (2 if precision > 8 else 1)
        handle.seek(int.from_bytes(length_bytes, "big") - 2, os.SEEK_CUR)
    raise _HeaderError(f"no frame header in the first {_JPEG_MAX_STEPS} markers and bytes")


def _tiff_size(handle: BinaryIO) -> tuple[int, int, int]:
    """Width, height and decoded bytes a pixel (every sample, extra ones included): tifffile
    reads the first page's tags, not its pixel data."""
    try:
        with tifffile.TiffFile(handle) as tif:
            if not tif.pages:
                raise _HeaderError("the file has no pages")
            page = tif.pages.first
            shape, dtype = page.shape, page.dtype
    except _HeaderError:
        raise
    except Exception as error:  # tifffile raises many kinds on a damaged file
        raise _HeaderError(str(error) or type(error).__name__) from None
    if len(shape) < 2:
        raise _HeaderError(f"the first page is not an image (shape {shape})")
    if dtype is None or dtype.kind not in "uifb":
        raise _HeaderError(f"unsupported pixel type {dtype}")
    # The same axes as model.image.io.read_image: (H, W), (H, W, samples) or (samples, H, W).
    samples_last = len(shape) == 3 and shape[-1] in (3, 4)
    height, width = (shape[0], shape[1]) if samples_last or len(shape) == 2 else shape[-2:]
    pixel_bytes = math.prod(shape) // max(height * width, 1) * dtype.itemsize
    return int(width), int(height), max(int(pixel_bytes), 1)
