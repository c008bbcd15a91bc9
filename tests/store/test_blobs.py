"""Blob stores, local directory and S3 (moto over HTTP), held to the same behaviour."""

import io
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from store.blobs import (
    BlobNotFoundError,
    BlobStore,
    InvalidBlobKeyError,
    LocalBlobStore,
    S3BlobStore,
    TaskBlob,
    create_blob_store,
    task_blob_key,
    task_prefix,
)
from store.settings import Settings

BAD_KEYS = ["", "/etc/passwd", "../outside", "tasks/../../outside", "a//b", "a\\b", "tasks/.", "a/"]


class FailingStream(io.RawIOBase):
    """Yields some bytes, then breaks, like a client that drops the connection mid-upload."""

    def __init__(self, good_bytes: int) -> None:
        self.remaining = good_bytes

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            raise ConnectionResetError("client went away")
        chunk = min(self.remaining, size if size > 0 else self.remaining)
        self.remaining -= chunk
        return b"x" * chunk


def test_task_blob_keys_are_deterministic() -> None:
    task_id = uuid.UUID("12345678-1234-4234-8234-123456789abc")

    assert task_blob_key(task_id, TaskBlob.INPUT) == f"tasks/{task_id}/input"
    assert task_blob_key(str(task_id), TaskBlob.MASK) == f"tasks/{task_id}/mask.png"
    assert [blob.value for blob in TaskBlob] == [
        "input", "acquisition.imzML", "mask.png", "labels.png", "labels.tiff", "ams.csv",
        "overlay.png", "qc.json", "diff.png", "views/image.tiles", "views/mask.tiles",
        "views/outline.tiles", "views/diff.tiles", "views/marks.json", "exports/marks.geojson",
        "exports/labels.tiff", "train_mask.png", "model.safetensors", "model_card.json",
        "openvino/manifest.json", "openvino/fp32/model.xml", "openvino/fp32/model.bin",
        "openvino/int8/model.xml", "openvino/int8/model.bin",
    ]  # fmt: skip
    assert TaskBlob.QC.content_type == "application/json"
    assert TaskBlob.LABELS_TIFF.content_type == "image/tiff"
    assert TaskBlob.INPUT.content_type is None
    with pytest.raises(ValueError):
        task_prefix("../../etc")


def test_put_then_get_bytes_and_chunks(blob_store: BlobStore) -> None:
    data = bytes(range(256)) * 1000
    blob_store.put_bytes("tasks/a/mask.png", data, content_type="image/png")

    assert blob_store.exists("tasks/a/mask.png")
    assert blob_store.get_bytes("tasks/a/mask.png") == data
    assert b"".join(blob_store.iter_chunks("tasks/a/mask.png", chunk_size=10_000)) == data


def test_ranges_and_tails_read_part_of_a_blob(blob_store: BlobStore) -> None:
    key = "tasks/ranges/views/image.tiles"
    data = bytes(range(256)) * 5
    blob_store.put_bytes(key, data)
    assert blob_store.get_range(key, 0, 10) == data[:10]
    assert blob_store.get_range(key, 1000, 100) == data[1000:1100]
    assert blob_store.get_range(key, 1250, 100) == data[1250:]  # fewer at the end
    assert blob_store.get_tail(key, 30) == (data[-30:], len(data))
    assert blob_store.get_tail(key, 10_000) == (data, len(data))  # all of a shorter blob
    with pytest.raises(BlobNotFoundError):
        blob_store.get_range("tasks/ranges/missing", 0, 1)
    with pytest.raises(BlobNotFoundError):
        blob_store.get_tail("tasks/ranges/missing", 1)
    with pytest.raises(ValueError):
        blob_store.get_range(key, -1, 5)


def test_put_replaces_the_earlier_blob(blob_store: BlobStore) -> None:
    blob_store.put_bytes("tasks/a/qc.json", b"first")
    blob_store.put_bytes("tasks/a/qc.json", b"second")

    assert blob_store.get_bytes("tasks/a/qc.json") == b"second"


def test_put_stream_stores_everything_and_reports_the_size(blob_store: BlobStore) -> None:
    data = b"0123456789" * 300_000  # 3 MB, several local chunks

    size = blob_store.put_stream("tasks/b/input", io.BytesIO(data), content_type="image/tiff")

    assert size == len(data)
    assert blob_store.get_bytes("tasks/b/input") == data


def test_put_file_stores_a_multipart_sized_file_and_reports_its_size(
    blob_store: BlobStore, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB: past boto3's multipart threshold
    path = tmp_path / "upload"
    path.write_bytes(data)

    size = blob_store.put_file("tasks/f/input", path, content_type="image/png")

    assert size == len(data)
    assert blob_store.get_bytes("tasks/f/input") == data
    assert list(blob_store.list_keys("tasks/f/")) == ["tasks/f/input"]


def test_a_broken_upload_leaves_no_blob_and_keeps_the_old_one(blob_store: BlobStore) -> None:
    # 9 MB is past boto3's multipart threshold, so S3 sees a started multipart upload.
    blob_store.put_bytes("tasks/c/input", b"complete earlier upload")

    with pytest.raises(ConnectionResetError):
        blob_store.put_stream("tasks/c/input", FailingStream(good_bytes=9_000_000))
    with pytest.raises(ConnectionResetError):
        blob_store.put_stream("tasks/c/other", FailingStream(good_bytes=1000))

    assert blob_store.get_bytes("tasks/c/input") == b"complete earlier upload"
    assert not blob_store.exists("tasks/c/other")
    assert list(blob_store.list_keys("tasks/c/")) == ["tasks/c/input"]


def test_missing_blobs_raise_not_found(blob_store: BlobStore) -> None:
    assert not blob_store.exists("tasks/none/mask.png")
    with pytest.raises(BlobNotFoundError):
        blob_store.get_bytes("tasks/none/mask.png")
    with pytest.raises(BlobNotFoundError):
        blob_store.iter_chunks("tasks/none/mask.png")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_could_escape_the_store_are_refused(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidBlobKeyError):
        blob_store.put_bytes(key, b"x")
    with pytest.raises(InvalidBlobKeyError):
        blob_store.get_bytes(key)


def test_delete_prefix_removes_only_that_task(blob_store: BlobStore) -> None:
    for name in ("input", "mask.png", "qc.json"):
        blob_store.put_bytes(f"tasks/one/{name}", b"1")
    blob_store.put_bytes("tasks/one-other/input", b"2")  # shares the string prefix "tasks/one"

    assert blob_store.delete_prefix("tasks/one/") == 3

    assert list(blob_store.list_keys("tasks/one/")) == []
    assert list(blob_store.list_keys("tasks/")) == ["tasks/one-other/input"]
    assert blob_store.delete_prefix("tasks/one/") == 0
    with pytest.raises(InvalidBlobKeyError):
        blob_store.delete_prefix("")


def test_list_keys_matches_string_prefixes_like_s3(blob_store: BlobStore) -> None:
    for key in ("tasks/ab/input", "tasks/abc/input", "tasks/b/input"):
        blob_store.put_bytes(key, b"x")

    assert sorted(blob_store.list_keys("tasks/ab")) == ["tasks/ab/input", "tasks/abc/input"]


def test_s3_lists_and_deletes_more_than_one_page(s3_endpoint_url: str) -> None:
    """The old system stopped at the first 1000 objects of a listing."""
    store = S3BlobStore("amseg-test-many", endpoint_url=s3_endpoint_url, create_bucket=True)
    keys = [f"tasks/many/tile-{index:04d}" for index in range(1005)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda key: store.put_bytes(key, b"."), keys))
    store.put_bytes("tasks/other/input", b"keep")

    assert sorted(store.list_keys("tasks/many/")) == keys
    assert store.delete_prefix("tasks/many/") == len(keys)
    assert list(store.list_keys("tasks/many/")) == []
    assert store.exists("tasks/other/input")


def test_s3_presigned_url_downloads_without_credentials(s3_endpoint_url: str) -> None:
    store = S3BlobStore("amseg-test-presign", endpoint_url=s3_endpoint_url, create_bucket=True)
    store.put_bytes("tasks/p/mask.png", b"\x89PNG fake", content_type="image/png")

    url = store.presigned_url("tasks/p/mask.png", expires_in_s=60)

    assert url is not None and url.startswith(s3_endpoint_url)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\x89PNG fake"
        assert response.headers["Content-Type"] == "image/png"
    with pytest.raises(ValueError, match="expires_in_s"):
        store.presigned_url("tasks/p/mask.png", expires_in_s=8 * 24 * 3600)


def test_s3_presigned_url_is_signed_for_the_public_endpoint(s3_endpoint_url: str) -> None:
    public = s3_endpoint_url.replace("127.0.0.1", "localhost")
    store = S3BlobStore(
        "amseg-test-public",
        endpoint_url=s3_endpoint_url,
        public_endpoint_url=public,
        create_bucket=True,
    )

    assert store.presigned_url("tasks/p/mask.png").startswith(public)


def test_local_store_has_no_presigned_urls_and_writes_no_stray_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put_bytes("tasks/l/mask.png", b"png")
    with pytest.raises(ConnectionResetError):
        store.put_stream("tasks/l/input", FailingStream(good_bytes=10))

    assert store.presigned_url("tasks/l/mask.png") is None
    assert [path.name for path in (tmp_path / "tasks" / "l").iterdir()] == ["mask.png"]
    assert store.path_for("tasks/l/mask.png").read_bytes() == b"png"


def test_local_store_refuses_a_symlink_pointing_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalBlobStore(tmp_path / "blobs")
    (tmp_path / "blobs" / "tasks").symlink_to(outside)

    with pytest.raises(InvalidBlobKeyError):
        store.put_bytes("tasks/x/input", b"x")
    assert list(outside.iterdir()) == []


def test_create_blob_store_follows_the_settings(tmp_path: Path, s3_endpoint_url: str) -> None:
    local = create_blob_store(Settings(_env_file=None, data_dir=tmp_path, s3_bucket=None))
    s3 = create_blob_store(
        Settings(_env_file=None, s3_bucket="amseg-test-settings", s3_endpoint_url=s3_endpoint_url),
        create_bucket=True,
    )

    assert isinstance(local, LocalBlobStore) and local.root == (tmp_path / "blobs").resolve()
    assert isinstance(s3, S3BlobStore)
    s3.put_bytes("tasks/s/qc.json", b"{}")
    assert s3.get_bytes("tasks/s/qc.json") == b"{}"


def test_copy_makes_an_independent_blob(blob_store: BlobStore) -> None:
    blob_store.put_bytes("tasks/a/input", b"slide bytes" * 1000)
    blob_store.copy("tasks/a/input", "tasks/b/input")
    blob_store.delete_prefix("tasks/a/")
    assert blob_store.get_bytes("tasks/b/input") == b"slide bytes" * 1000
    with pytest.raises(BlobNotFoundError):
        blob_store.copy("tasks/a/input", "tasks/c/input")
    assert not blob_store.exists("tasks/c/input")
