"""`download_image`: where the worker decodes an upload the API only checked the header of."""

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

from model.errors import ImageInputError
from store.blobs import LocalBlobStore
from store.settings import Settings
from tests.service_stack import png_bytes
from worker.jobs import WorkerContext, download_image

IMAGE = np.random.default_rng(5).integers(0, 255, (120, 160), dtype=np.uint8)


@pytest.fixture
def context(tmp_path: Path) -> WorkerContext:
    settings = Settings(data_dir=tmp_path, max_pixels=1_000_000)
    return WorkerContext(
        settings=settings,
        sessions=None,  # download_image needs only the blobs and the settings
        blobs=LocalBlobStore(settings.blob_dir),
        load_segmenter=lambda name: None,
    )


def tiff_bytes(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, **options)
    return buffer.getvalue()


def download(context: WorkerContext, data: bytes, tmp_path: Path) -> np.ndarray:
    context.blobs.put_bytes("tasks/t/input", data)
    return download_image(context, "tasks/t/input", tmp_path / "scratch", "the uploaded image")


def test_a_good_upload_decodes_to_its_pixels(context: WorkerContext, tmp_path: Path) -> None:
    np.testing.assert_array_equal(download(context, png_bytes(IMAGE), tmp_path), IMAGE)
    tiff = tiff_bytes(IMAGE, compression="zlib")
    np.testing.assert_array_equal(download(context, tiff, tmp_path), IMAGE)


def test_truncated_pixel_data_is_an_input_error(context: WorkerContext, tmp_path: Path) -> None:
    data = png_bytes(IMAGE)
    with pytest.raises(ImageInputError, match="truncated") as caught:
        download(context, data[: len(data) // 2], tmp_path)
    assert str(caught.value).startswith("the uploaded image")
    assert str(tmp_path) not in str(caught.value)


def test_a_corrupt_compressed_tiff_is_an_input_error_not_a_crash(
    context: WorkerContext, tmp_path: Path
) -> None:
    # The codec raises its own error type (not OSError/ValueError); it must still read as the
    # image's fault, so the task fails with a message instead of an "internal error".
    data = bytearray(tiff_bytes(IMAGE, compression="zlib"))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x5a" * 64
    with pytest.raises(ImageInputError, match="damaged") as caught:
        download(context, bytes(data), tmp_path)
    assert str(caught.value).startswith("the uploaded image")
    assert str(tmp_path) not in str(caught.value)


def test_the_pixel_limit_holds_in_the_worker_too(context: WorkerContext, tmp_path: Path) -> None:
    big = np.zeros((1100, 1000), np.uint8)  # 1.1 MP, over this context's 1 MP
    with pytest.raises(ImageInputError, match="MP"):
        download(context, png_bytes(big), tmp_path)
