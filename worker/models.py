"""Where a worker finds the model a task asks for: the shipped one, a directory of MODELS_DIR,
or a fine-tuned model stored by a fine-tune task, fetched from the blob store once."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from model.errors import AmsegError
from store.blobs import MODEL_RESULTS, BlobNotFoundError, BlobStore, task_blob_key
from store.settings import Settings
from store.tasks import parse_task_id


class ModelDirectories:
    """Model names to local directories (None: the model shipped with amseg)."""

    def __init__(self, settings: Settings, blobs: BlobStore) -> None:
        self.settings = settings
        self.blobs = blobs
        self.cache = settings.data_dir / "models"

    def __call__(self, name: str | None) -> Path | None:
        model_id = parse_task_id(name) if name is not None else None
        if model_id is None:
            return self.settings.model_dir_for(name)
        directory = self.cache / str(model_id)
        if not directory.is_dir():
            self._fetch(str(model_id), directory)
        return directory

    def _fetch(self, model_id: str, directory: Path) -> None:
        """Download the model's files into a fresh folder, then rename it into place: a
        concurrent worker either sees the whole model or none of it."""
        self.cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model_id}.", dir=self.cache))
        try:
            for blob in MODEL_RESULTS:
                with (staging / blob.value).open("wb") as handle:
                    for chunk in self.blobs.iter_chunks(task_blob_key(model_id, blob)):
                        handle.write(chunk)
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
