"""Blob storage for task inputs and results: S3 (or MinIO) via boto3, or a local directory.

Keys are deterministic (`tasks/<id>/mask.png`), so running a task twice overwrites the same
objects instead of leaving copies behind.
"""

import contextlib
import os
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO
from uuid import UUID

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from store.settings import Settings

CHUNK_SIZE = 1024 * 1024
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 refuses longer expiries
S3_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys per request
# Parts of a multipart upload sent at once (boto3's default is 10 of 8 MB each): a stream's
# parts are held in memory until sent, and several uploads may run in one API process.
_TRANSFER = TransferConfig(max_concurrency=4)
_MISSING_KEY_CODES = {"404", "NoSuchKey", "NotFound"}


class TaskBlob(StrEnum):
    """The files a task owns, named as they appear under `tasks/<id>/`."""

    INPUT = "input"
    # An acquisition's imzML sent with the image (its spectrum positions; no .ibd).
    IMZML = "acquisition.imzML"
    MASK = "mask.png"
    LABELS = "labels.png"
    # The ids of a grid beyond 65 535 nodes (uint32), instead of labels.png.
    LABELS_TIFF = "labels.tiff"
    AMS = "ams.csv"
    OVERLAY = "overlay.png"
    QC = "qc.json"
    # A re-run's changes against the task it was made from (model.compare's codes).
    DIFF = "diff.png"
    # What the web viewer reads, made by the worker (the API decodes no image): each layer's
    # tile pyramid as a tile pack (model/image/tilepack.py) and the mark table as JSON.
    VIEW_IMAGE = "views/image.tiles"
    VIEW_MASK = "views/mask.tiles"
    VIEW_OUTLINE = "views/outline.tiles"
    VIEW_DIFF = "views/diff.tiles"
    VIEW_MARKS = "views/marks.json"
    # Exports made by a worker on the first request: QuPath's GeoJSON, and the ids as a 32-bit
    # TIFF for a grid whose ids are stored as labels.png.
    EXPORT_GEOJSON = "exports/marks.geojson"
    EXPORT_LABELS_TIFF = "exports/labels.tiff"
    # A fine-tune task's labels (its input image is INPUT) and its result, a model directory.
    TRAIN_MASK = "train_mask.png"
    MODEL_WEIGHTS = "model.safetensors"
    MODEL_CARD = "model_card.json"
    # Its OpenVINO IR (model/segment/shipped_ir.py), paths inside the model directory: what
    # lets a worker without PyTorch run it. A fine-tune worker without OpenVINO stores none.
    MODEL_IR_MANIFEST = "openvino/manifest.json"
    MODEL_IR_XML = "openvino/fp32/model.xml"
    MODEL_IR_BIN = "openvino/fp32/model.bin"
    # ... and its int8 IR, where the fine-tune made one (model/train/tuned_ir.py)
    MODEL_IR_INT8_XML = "openvino/int8/model.xml"
    MODEL_IR_INT8_BIN = "openvino/int8/model.bin"

    @property
    def content_type(self) -> str | None:
        """The media type to serve a result with; None for the input, whose type is recorded."""
        suffix = self.value.rpartition(".")[2]
        return {
            "png": "image/png",
            "tiff": "image/tiff",
            "csv": "text/csv",
            "json": "application/json",
            "imzML": "application/xml",
            "geojson": "application/geo+json",
        }.get(suffix)


# What a task was given, what a segment task makes, what a fine-tune task makes.
TASK_INPUTS = (TaskBlob.INPUT, TaskBlob.IMZML, TaskBlob.TRAIN_MASK)
SEGMENT_RESULTS = (TaskBlob.MASK, TaskBlob.LABELS, TaskBlob.AMS, TaskBlob.OVERLAY, TaskBlob.QC)
MODEL_RESULTS = (TaskBlob.MODEL_WEIGHTS, TaskBlob.MODEL_CARD)
MODEL_IR = (TaskBlob.MODEL_IR_MANIFEST, TaskBlob.MODEL_IR_XML, TaskBlob.MODEL_IR_BIN)
MODEL_IR_INT8 = (TaskBlob.MODEL_IR_INT8_XML, TaskBlob.MODEL_IR_INT8_BIN)
# What a register task reads where its source stored it (not copied): the image, the mask and
# their tile packs. They stay while any task reads them (api.routes.common.delete_blobs).
SHARED_RESULTS = (TaskBlob.MASK, TaskBlob.VIEW_IMAGE, TaskBlob.VIEW_MASK, TaskBlob.VIEW_OUTLINE)


def task_prefix(task_id: UUID | str) -> str:
    """The prefix under which every blob of one task lives."""
    return f"tasks/{UUID(str(task_id))}/"


def task_blob_key(task_id: UUID | str, blob: TaskBlob) -> str:
    """The key of one of a task's blobs, e.g. `tasks/<id>/mask.png`."""
    return task_prefix(task_id) + blob.value


class InvalidBlobKeyError(ValueError):
    """A key that is empty, absolute, or could step outside the store."""


class BlobNotFoundError(LookupError):
    """No blob is stored under the key."""


def check_key(key: str) -> str:
    """Return `key` if it is a plain relative path of non-hidden segments, else raise."""
    segments = key.split("/")
    if (
        not key
        or "\\" in key
        or "\x00" in key
        or any(not segment or segment.startswith(".") for segment in segments)
    ):
        # Refusing every dot-segment rules out "..", "." and the local store's temp files.
        raise InvalidBlobKeyError(
            f"invalid blob key {key!r}: use relative segments joined by '/', none empty or"
            " starting with '.'"
        )
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` if it names a key or folder (trailing '/'); never the whole store."""
    check_key(prefix.removesuffix("/"))
    return prefix


class BlobStore(ABC):
    """Where task inputs and results live; the API and the worker see the same store."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        """Store `data` under `key`, replacing any earlier blob; readers never see half of it."""

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str | None = None) -> int:
        """Store everything `stream` yields under `key` (atomically) and return its size."""

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> int:
        """Store the file at `path` under `key` (atomically) and return its size; the file is
        read piece by piece, never whole into memory."""
        with path.open("rb") as stream:
            return self.put_stream(key, stream, content_type=content_type)

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole blob under `key`; raises BlobNotFoundError."""

    @abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of the blob from `start` (fewer at its end); raises
        BlobNotFoundError."""

    @abstractmethod
    def get_tail(self, key: str, length: int) -> tuple[bytes, int]:
        """The blob's last `length` bytes (all of it when shorter) and its whole size; raises
        BlobNotFoundError."""

    @abstractmethod
    def copy(self, source: str, target: str) -> None:
        """Store a copy of the blob under `source` as `target`; raises BlobNotFoundError."""

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The blob under `key` in chunks; raises BlobNotFoundError before the first chunk."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key starting with `prefix`, however many there are."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with `prefix` and return how many went."""

    @abstractmethod
    def presigned_url(self, key: str, expires_in_s: int = 3600) -> str | None:
        """A URL that downloads the blob without credentials, or None if the store has none."""


class _CountingReader:
    """Passes reads through and counts the bytes, so S3 uploads can report their size."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.bytes_read += len(data)
        return data


class S3BlobStore(BlobStore):
    """Blobs in an S3 bucket; `endpoint_url` points it at MinIO or another S3 server."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create_bucket: bool = False,
    ) -> None:
        self.bucket = bucket
        self.region = region
        # Path-style addressing: MinIO and moto serve buckets under the path, not a subdomain.
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
        )

        def client(endpoint: str | None) -> BaseClient:
            return boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=config,
            )

        self._client = client(endpoint_url)
        self._signing_client = client(public_endpoint_url) if public_endpoint_url else self._client
        if create_bucket:
            self.create_bucket_if_missing()

    @classmethod
    def from_settings(cls, settings: Settings, *, create_bucket: bool = False) -> "S3BlobStore":
        if settings.s3_bucket is None:
            raise ValueError("S3_BUCKET is not set")
        secret = settings.aws_secret_access_key
        return cls(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            create_bucket=create_bucket,
        )

    def create_bucket_if_missing(self) -> None:
        """Create the bucket unless it already exists (for development and tests)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            if error.response["Error"]["Code"] not in _MISSING_KEY_CODES | {"NoSuchBucket"}:
                raise
        options = {}
        if self.region != "us-east-1":  # us-east-1 refuses an explicit location constraint
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with contextlib.suppress(self._client.exceptions.BucketAlreadyOwnedByYou):
            self._client.create_bucket(Bucket=self.bucket, **options)

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self._client.put_object(Bucket=self.bucket, Key=check_key(key), Body=data, **extra)

    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str | None = None) -> int:
        reader = _CountingReader(stream)
        extra = {"ContentType": content_type} if content_type else {}
        # Large streams go up as a multipart upload, which S3 only publishes once complete; a
        # stream is read a part at a time into memory, so few parts are in flight at once.
        self._client.upload_fileobj(
            reader, self.bucket, check_key(key), ExtraArgs=extra, Config=_TRANSFER
        )
        return reader.bytes_read

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> int:
        extra = {"ContentType": content_type} if content_type else {}
        # From a file name boto3 reads each part from disk as it sends it, not into memory.
        self._client.upload_file(
            str(path), self.bucket, check_key(key), ExtraArgs=extra, Config=_TRANSFER
        )
        return path.stat().st_size

    def _get_object(self, key: str, **options: str) -> dict:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=check_key(key), **options)
        except ClientError as error:
            if error.response["Error"]["Code"] in _MISSING_KEY_CODES:
                raise BlobNotFoundError(key) from error
            raise

    def get_bytes(self, key: str) -> bytes:
        return self._get_object(key)["Body"].read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length <= 0:
            raise ValueError(f"a range needs start >= 0 and length > 0, got {start}, {length}")
        response = self._get_object(key, Range=f"bytes={start}-{start + length - 1}")
        return response["Body"].read()

    def get_tail(self, key: str, length: int) -> tuple[bytes, int]:
        if length <= 0:
            raise ValueError(f"a tail needs length > 0, got {length}")
        response = self._get_object(key, Range=f"bytes=-{length}")
        data = response["Body"].read()
        # "bytes first-last/size"; a server that ignores the range sends the whole object.
        total = response.get("ContentRange", "").rpartition("/")[2]
        return data, int(total) if total.isdigit() else len(data)

    def copy(self, source: str, target: str) -> None:
        # A managed copy: one request server-side, multipart beyond 5 GB.
        origin = {"Bucket": self.bucket, "Key": check_key(source)}
        try:
            self._client.copy(origin, self.bucket, check_key(target))
        except ClientError as error:
            if error.response["Error"]["Code"] in _MISSING_KEY_CODES:
                raise BlobNotFoundError(source) from error
            raise

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        body = self._get_object(key)["Body"]  # fetched now, so a missing key raises here
        return body.iter_chunks(chunk_size)

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=check_key(key))
        except ClientError as error:
            if error.response["Error"]["Code"] in _MISSING_KEY_CODES:
                return False
            raise
        return True

    def list_keys(self, prefix: str) -> Iterator[str]:
        # ListObjectsV2 returns at most 1000 keys a call; the paginator follows the rest.
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=check_prefix(prefix)):
            for item in page.get("Contents", []):
                yield item["Key"]

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        batch: list[str] = []
        for key in self.list_keys(prefix):
            batch.append(key)
            if len(batch) == S3_DELETE_BATCH:
                deleted += self._delete_batch(batch)
                batch = []
        if batch:
            deleted += self._delete_batch(batch)
        return deleted

    def _delete_batch(self, keys: list[str]) -> int:
        response = self._client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        if errors := response.get("Errors"):
            first = errors[0]
            raise OSError(
                f"S3 refused to delete {len(errors)} objects, e.g. {first['Key']}:"
                f" {first.get('Code')} {first.get('Message')}"
            )
        return len(keys)

    def presigned_url(self, key: str, expires_in_s: int = 3600) -> str | None:
        if not 0 < expires_in_s <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires_in_s must be 1..{MAX_PRESIGN_SECONDS}, got {expires_in_s}")
        return self._signing_client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": check_key(key)},
            ExpiresIn=expires_in_s,
        )


class LocalBlobStore(BlobStore):
    """Blobs as files under one directory; writes go to a temp file that is renamed into place."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        """The file that holds `key` (for serving it directly); refuses keys outside the root."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink inside the root pointing out
            raise InvalidBlobKeyError(f"blob key {key!r} resolves outside the store")
        return path

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        self._write_atomically(key, lambda file: file.write(data))

    def put_stream(self, key: str, stream: BinaryIO, *, content_type: str | None = None) -> int:
        def copy(file: BinaryIO) -> int:
            size = 0
            while chunk := stream.read(CHUNK_SIZE):
                file.write(chunk)
                size += len(chunk)
            return size

        return self._write_atomically(key, copy)

    def copy(self, source: str, target: str) -> None:
        try:
            with self.path_for(source).open("rb") as stream:
                self.put_stream(target, stream)
        except FileNotFoundError as error:
            raise BlobNotFoundError(source) from error

    def _write_atomically(self, key: str, write: Callable[[BinaryIO], int]) -> int:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory, so the rename stays on one filesystem and is atomic; the leading dot
        # keeps it out of listings (keys may not start with ".").
        temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.part")
        try:
            with open(temp, "wb") as file:
                size = write(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return size

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path_for(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as error:
            raise BlobNotFoundError(key) from error

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length <= 0:
            raise ValueError(f"a range needs start >= 0 and length > 0, got {start}, {length}")
        try:
            with open(self.path_for(key), "rb") as file:
                file.seek(start)
                return file.read(length)
        except (FileNotFoundError, IsADirectoryError) as error:
            raise BlobNotFoundError(key) from error

    def get_tail(self, key: str, length: int) -> tuple[bytes, int]:
        if length <= 0:
            raise ValueError(f"a tail needs length > 0, got {length}")
        try:
            with open(self.path_for(key), "rb") as file:
                size = os.fstat(file.fileno()).st_size
                file.seek(max(size - length, 0))
                return file.read(length), size
        except (FileNotFoundError, IsADirectoryError) as error:
            raise BlobNotFoundError(key) from error

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        try:
            file = open(self.path_for(key), "rb")  # noqa: SIM115 - closed by the generator
        except (FileNotFoundError, IsADirectoryError) as error:
            raise BlobNotFoundError(key) from error

        def chunks() -> Iterator[bytes]:
            with file:
                while chunk := file.read(chunk_size):
                    yield chunk

        return chunks()

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def list_keys(self, prefix: str) -> Iterator[str]:
        check_prefix(prefix)
        # Walk only the deepest folder the prefix names, then match keys as strings like S3.
        folder = self.root / prefix.rpartition("/")[0]
        if not folder.is_dir():
            return
        for directory, subdirectories, files in os.walk(folder):
            subdirectories[:] = sorted(name for name in subdirectories if name[0] != ".")
            for name in sorted(files):
                if name.startswith("."):
                    continue
                key = (Path(directory) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list_keys(prefix))
        for key in keys:
            self.path_for(key).unlink(missing_ok=True)
        if prefix.endswith("/") and (folder := self.root / prefix).is_dir():
            shutil.rmtree(folder, ignore_errors=True)  # also sweeps temp files of dead writers
        return len(keys)

    def presigned_url(self, key: str, expires_in_s: int = 3600) -> str | None:
        check_key(key)
        return None


def create_blob_store(settings: Settings, *, create_bucket: bool = False) -> BlobStore:
    """The store the settings describe: S3 when a bucket is set, else a folder in `data_dir`."""
    if settings.uses_s3:
        return S3BlobStore.from_settings(settings, create_bucket=create_bucket)
    return LocalBlobStore(settings.blob_dir)
