"""What every kind of task's run shares: the worker's context, progress reports that stop a
run whose task is no longer ours, and reading inputs from and writing results to the blob store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from model.errors import ImageInputError
from model.image.gray import read_gray
from store.blobs import BlobStore, TaskBlob, task_blob_key
from store.settings import Settings
from store.tasks import report_progress
from worker.models import ModelDirectories


class TaskStopped(Exception):
    """The task was cancelled, deleted or taken over while this worker ran it."""


@dataclass
class WorkerContext:
    """What a worker process needs, built once per process (after the fork)."""

    settings: Settings
    sessions: sessionmaker[Session]
    blobs: BlobStore
    # Loads (and caches) the segmenter for a model name; None means the default model.
    load_segmenter: Callable[[str | None], object]
    # The directory of a model name (None: the shipped model); fine-tunes start from it.
    # Default: worker.models.ModelDirectories on these settings and blobs.
    model_dir: Callable[[str | None], Path | None] | None = None

    def model_dir_for(self, name: str | None) -> Path | None:
        if self.model_dir is None:
            self.model_dir = ModelDirectories(self.settings, self.blobs)
        return self.model_dir(name)


def progress_reporter(context: WorkerContext, task_id: UUID) -> Callable[..., None]:
    """`progress(value, stage=None)`: record it, or raise TaskStopped when the task is no
    longer ours (cancelled, deleted or taken over)."""

    def progress(value: float, stage: str | None = None) -> None:
        with context.sessions() as session:
            if not report_progress(session, task_id, progress=value, stage=stage):
                raise TaskStopped("cancelled, deleted or taken over")

    return progress


def download_image(context: WorkerContext, key: str, path: Path, name: str) -> np.ndarray:
    """Fetch the blob under `key` to `path` and decode it as one gray channel (what every task
    uses: the colour image is never held whole); errors name `name`, not the file.

    The API checked only the upload's header, so this is where damaged pixel data shows: any
    error of the decoders (a truncated file, a corrupt compressed stream) is the image's fault
    and becomes an ImageInputError, which fails the task with that message."""
    with path.open("wb") as handle:
        for chunk in context.blobs.iter_chunks(key):
            handle.write(chunk)
    try:
        settings = context.settings
        return read_gray(path, max_pixels=settings.max_pixels, max_bytes=settings.max_decoded_bytes)
    except ImageInputError as error:
        raise type(error)(str(error).replace(str(path), name)) from None
    except MemoryError:
        raise
    except Exception as error:  # e.g. imagecodecs' DeflateError on a corrupt TIFF strip
        detail = str(error).replace(str(path), name) or type(error).__name__
        raise ImageInputError(
            f"{name}: the image data is damaged and cannot be decoded ({detail}); "
            "check the file and upload it again"
        ) from None


def store_results(
    context: WorkerContext, task_id: UUID, outputs: dict[TaskBlob, Path]
) -> dict[str, str]:
    """Upload each output under the task's deterministic key; the keys by blob name."""
    result_keys = {}
    for blob, path in outputs.items():
        key = task_blob_key(task_id, blob)
        context.blobs.put_file(key, path, content_type=blob.content_type)
        result_keys[blob.value] = key
    return result_keys
