"""What a model reference names, decided here only: the API checks a task's `model` (or a
fine-tune's `base`) with `check_model_usable` before it queues the task, and the worker finds
the model's files with `resolve_model` (worker.models).

A reference is "default" (or none: the model shipped with amseg), the id of a fine-tune made
by `POST /models` (its files are in the blob store), or the name of a directory of MODELS_DIR.
The service never takes a path: a name is looked up inside MODELS_DIR only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from sqlalchemy.orm import Session

from model.errors import AmsegError
from store.settings import DEFAULT_MODEL_NAME, Settings
from store.tasks import TaskKind, TaskStatus, get_task, parse_task_id


class UnknownModelError(AmsegError):
    """A reference that names no usable model; the message says which ones there are."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved reference: at most one of `directory` and `finetune_id` is set; neither
    means the shipped model."""

    name: str
    directory: Path | None = None  # a MODELS_DIR model
    finetune_id: UUID | None = None  # a fine-tune's task id

    @property
    def is_default(self) -> bool:
        return self.directory is None and self.finetune_id is None


def resolve_model(settings: Settings, name: str | None) -> ModelRef:
    """The model `name` refers to; raises UnknownModelError for a name MODELS_DIR lacks.
    Whether a fine-tune id is a FINISHED model is `check_model_usable`'s question."""
    if name is None or name == DEFAULT_MODEL_NAME:
        return ModelRef(DEFAULT_MODEL_NAME)
    if (model_id := parse_task_id(name)) is not None:
        return ModelRef(name, finetune_id=model_id)
    try:
        return ModelRef(name, directory=settings.model_dir_for(name))
    except ValueError as error:
        raise UnknownModelError(str(error)) from None


def check_model_usable(session: Session, settings: Settings, name: str | None) -> ModelRef:
    """`resolve_model`, and a fine-tune must exist and be FINISHED: a task queued now can use
    the model. Raises UnknownModelError in words."""
    ref = resolve_model(settings, name)
    if ref.finetune_id is None:
        return ref
    task = get_task(session, ref.finetune_id)
    status = None if task is None or task.kind != TaskKind.FINETUNE else task.status
    if status == TaskStatus.FINISHED:
        return ref
    detail = f"no model with id {name!r}" if status is None else f"model {name} is {status}"
    raise UnknownModelError(f"{detail}; use a FINISHED model")
