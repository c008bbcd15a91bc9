"""Where a worker finds the model a task asks for: the shipped one, a directory of MODELS_DIR,
or a fine-tuned model stored by a fine-tune task, fetched from the blob store once. What a
name refers to is store.model_refs' decision, shared with the API."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from model.errors import AmsegError
from model.segment.shipped_ir import SHIPPED_DIR
from store.blobs import (
    MODEL_IR,
    MODEL_IR_INT8,
    MODEL_RESULTS,
    BlobNotFoundError,
    BlobStore,
    task_blob_key,
)
from store.model_refs import resolve_model
from store.settings import Settings


class ModelDirectories:
    """Model names to local directories (None: the model shipped with amseg)."""

    def __init__(self, settings: Settings, blobs: BlobStore) -> None:
        self.settings = settings
        self.blobs = blobs
        self.cache = settings.data_dir / "models"

    def __call__(self, name: str | None) -> Path | None:
        """Raises UnknownModelError (an AmsegError: the task fails with it) for an unknown name."""
        ref = resolve_model(self.settings, name)
        if ref.finetune_id is None:
            return ref.directory
        directory = self.cache / str(ref.finetune_id)
        if not directory.is_dir():
            self._fetch(str(ref.finetune_id), directory)
        return directory

    def _fetch(self, model_id: str, directory: Path) -> None:
        """Download the model's files into a fresh folder, then rename it into place: a
        concurrent worker either sees the whole model or none of it."""
        self.cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model_id}.", dir=self.cache))
        try:
            for blob in MODEL_RESULTS:
                self._download(task_blob_key(model_id, blob), staging / blob.value)
            self._fetch_ir(model_id, staging)
            staging.chmod(0o755)
            try:
                os.replace(staging, directory)
            except OSError:
                if not directory.is_dir():  # not a lost race with another worker
                    raise
        except BlobNotFoundError:
            raise AmsegError(f"model {model_id} is gone (deleted?); use another model") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _fetch_ir(self, model_id: str, staging: Path) -> None:
        """The model's OpenVINO IRs, when its fine-tune stored them, each whole or not at all:
        without the fp32 one a worker without PyTorch cannot run the model; without the int8
        one, it runs in bf16 or fp32 (or quantizes it, where NNCF is installed)."""
        try:
            for blob in MODEL_IR:
                self._download(task_blob_key(model_id, blob), staging / blob.value)
        except BlobNotFoundError:
            shutil.rmtree(staging / SHIPPED_DIR, ignore_errors=True)
            return
        try:
            for blob in MODEL_IR_INT8:
                self._download(task_blob_key(model_id, blob), staging / blob.value)
        except BlobNotFoundError:
            shutil.rmtree(staging / SHIPPED_DIR / "int8", ignore_errors=True)

    def _download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            for chunk in self.blobs.iter_chunks(key):
                handle.write(chunk)
