"""The task table, source of truth for a task's life, and the operations the API and worker use.

Every state change is one conditional UPDATE, so two workers (or a worker and the sweep) that
race on the same task cannot both win.
"""

import base64
import binascii
import enum
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Enum,
    Float,
    Index,
    Integer,
    String,
    Text,
    and_,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from model.errors import AmsegError
from model.segment.tiles import MAX_TILE_SIZE, MIN_TILE_SIZE
from model.train.finetune_job import DEFAULT_MINUTES, FinetuneJob
from store.blobs import TaskBlob, task_blob_key
from store.database import Base, UtcDateTime

MAX_ERROR_LENGTH = 4000
MAX_PAGE_SIZE = 1000
CANCELLED_ERROR = "Cancelled on request."


class TaskStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"


class TaskKind(enum.StrEnum):
    """What a task does: segment one image; number the marks of a segmented image again on
    another grid, from its stored mask (register); fine-tune a model on one image (its
    result is a model that later segment tasks may ask for by the task's id); or make what
    the viewer or an export reads for a FINISHED task that lacks it (views: a task finished
    before workers made tiles, or a GeoJSON asked for the first time), never listed."""

    SEGMENT = "segment"
    REGISTER = "register"
    FINETUNE = "finetune"
    VIEWS = "views"


# Kinds whose result is a segmentation (a mask, and with a grid the ids): they are listed,
# read and downloaded alike.
SEGMENTATION_KINDS = (TaskKind.SEGMENT, TaskKind.REGISTER)


def kind_family(kind: TaskKind) -> tuple[TaskKind, ...]:
    """The kinds a route for `kind` serves: every segmentation kind for a task route."""
    return SEGMENTATION_KINDS if kind in SEGMENTATION_KINDS else (kind,)


# The uploaded file's name, as a task keeps it (api.names cleans it).
MAX_NAME_LENGTH = 120


class TaskParameters(BaseModel):
    """What the caller asked for; None means "the model's own default"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Both or neither: with a grid the marks are registered, without it only segmented.
    rows: int | None = Field(
        default=None, ge=1, le=10_000, description="Grid rows (with cols: register ids)"
    )
    cols: int | None = Field(default=None, ge=1, le=10_000, description="Grid columns")
    model: str | None = Field(
        default=None, max_length=100, description="Model name (default: shipped model)"
    )
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Probability threshold"
    )
    tile_size: int | None = Field(
        default=None, ge=MIN_TILE_SIZE, le=MAX_TILE_SIZE, description="Tile edge, px"
    )
    # Enlarge grids of small marks before the network (amseg predict --accurate); the API
    # fills in Settings.default_accurate when the upload does not say.
    accurate: bool = False
    # An acquisition's imzML came with the image (blob acquisition.imzML, set by the API from
    # the upload, never by a query): its marks are joined to spectra, the grid defaults to it.
    imzml: bool = False
    flip_x: bool = Field(default=False, description="With an imzML: its x runs right to left")
    flip_y: bool = Field(default=False, description="With an imzML: its y runs bottom to top")
    transpose: bool = Field(
        default=False, description="With an imzML: its x runs down the rows (applied first)"
    )

    @model_validator(mode="after")
    def _grid_complete(self) -> "TaskParameters":
        check_grid(self.rows, self.cols)
        return self

    @model_validator(mode="after")
    def _orientation_needs_imzml(self) -> "TaskParameters":
        if (self.flip_x or self.flip_y or self.transpose) and not self.imzml:
            raise PydanticCustomError(
                "orientation_without_imzml",
                "flip_x, flip_y and transpose orient an imzML: send one as the multipart "
                "part 'imzml' (the image in the part 'file')",
            )
        return self

    @property
    def registers(self) -> bool:
        """Whether the marks are numbered: a grid was given, or an imzML to take it from."""
        return self.rows is not None or self.imzml

    def segmentation(self) -> "TaskParameters":
        """Only the settings of a segmentation (what a re-run of any task's image takes)."""
        return TaskParameters.model_validate(
            self.model_dump(include=set(TaskParameters.model_fields))
        )


def check_grid(rows: int | None, cols: int | None) -> None:
    """Both or neither; the error says what to type. (Whether the image can hold the grid is
    the API's check, which knows the image's size: model.register.records.check_grid_fits.)"""
    if (rows is None) != (cols is None):
        raise PydanticCustomError(
            "grid_incomplete",
            "give both rows and columns (number of grid rows and columns, e.g. rows=30&cols=30)",
        )


class RegisterParameters(TaskParameters):
    """A register task's: the grid to number the source task's mask on (required), and
    optionally one mark whose place on the grid is known (`mark_row`, `mark_col` counted from 0
    as in ams.csv, at pixel `mark_x`, `mark_y`). The segmentation settings are the source's:
    they say how the mask was made."""

    mark_x: float | None = Field(
        default=None, ge=0.0, allow_inf_nan=False, description="A known mark's x, px"
    )
    mark_y: float | None = Field(
        default=None, ge=0.0, allow_inf_nan=False, description="A known mark's y, px"
    )
    mark_row: int | None = Field(default=None, ge=0, description="Its grid row, from 0")
    mark_col: int | None = Field(default=None, ge=0, description="Its grid column, from 0")

    @model_validator(mode="after")
    def _grid_and_mark(self) -> "RegisterParameters":
        if (self.rows is None or self.cols is None) and not self.imzml:
            raise PydanticCustomError(
                "grid_missing",
                "a registration needs the grid: give rows and cols (e.g. rows=30&cols=30), "
                "or an imzML to take it from",
            )
        known = (self.mark_x, self.mark_y, self.mark_row, self.mark_col)
        if any(v is not None for v in known) and any(v is None for v in known):
            raise PydanticCustomError(
                "mark_incomplete",
                "give all four of mark_x, mark_y (the mark's centre in pixels), mark_row and "
                "mark_col (its grid row and column, from 0), or none of them",
            )
        if self.has_known_mark and self.rows is None:
            raise PydanticCustomError(
                "mark_without_grid",
                "with a known mark give rows and cols too (the grid the mark's place is on)",
            )
        if self.has_known_mark and (self.mark_row >= self.rows or self.mark_col >= self.cols):
            raise PydanticCustomError(
                "mark_off_grid",
                "mark_row and mark_col count from 0: they must be below rows ({rows}) and "
                "cols ({cols})",
                {"rows": self.rows, "cols": self.cols},
            )
        return self

    @property
    def has_known_mark(self) -> bool:
        return self.mark_row is not None


# A fine-tune job's time budget: long enough for a useful model on a 2-core CPU (5 min), short
# enough to stay far inside the task time limit.
MAX_FINETUNE_MINUTES = 20.0


class FinetuneParameters(BaseModel):
    """What a fine-tune job was asked for. With `labelled` the task's `train_mask` blob holds
    the labels (0 background, 255 mark, 128 not labelled); without it the labels come from the
    acquisition grid (`rows` x `cols`) and the base model's confident marks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_task: str | None = Field(
        default=None, max_length=64, description="The segment task whose image is used"
    )
    labelled: bool = True
    rows: int | None = Field(default=None, ge=1, le=10_000)
    cols: int | None = Field(default=None, ge=1, le=10_000)
    minutes: float = Field(default=DEFAULT_MINUTES, gt=0.0, le=MAX_FINETUNE_MINUTES)
    base: str | None = Field(
        default=None, max_length=100, description="Model to start from (default: shipped model)"
    )

    @model_validator(mode="after")
    def _labels_or_grid(self) -> "FinetuneParameters":
        try:
            self.job.check()
        except AmsegError as error:
            raise PydanticCustomError("finetune_job", str(error)) from None
        return self

    @property
    def job(self) -> FinetuneJob:
        return FinetuneJob(self.labelled, self.rows, self.cols, minutes=self.minutes)


class ViewPart(enum.StrEnum):
    """What a views task makes for its source task."""

    # Every tile pack the viewer reads (image, mask, outline, a re-run's changes) and the
    # mark table, those the source lacks.
    VIEWER = "viewer"
    GEOJSON = "geojson"  # marks.geojson, for QuPath
    LABELS_TIFF = "labels_tiff"  # the ids as a 32-bit TIFF, for napari


class ViewsParameters(BaseModel):
    """A views task's: which part to make for its source task (`source_task`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    part: ViewPart = ViewPart.VIEWER


def utc_now() -> datetime:
    return datetime.now(UTC)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress_range"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        # Newest-first listing pages on (created_at, id).
        Index("ix_tasks_created_at_id", "created_at", "id"),
        Index("ix_tasks_kind_created_at", "kind", "created_at"),
        # Register tasks read their source's image: deleting one looks for the others.
        Index("ix_tasks_input_key", "input_key"),
    )

    # uuid4 draws from os.urandom, so ids cannot be guessed from one another.
    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    status: Mapped[TaskStatus] = mapped_column(
        Enum(
            TaskStatus,
            native_enum=False,
            length=16,
            create_constraint=True,
            name="status",
            validate_strings=True,
        ),
        index=True,
        default=TaskStatus.QUEUED,
    )
    kind: Mapped[TaskKind] = mapped_column(
        Enum(TaskKind, native_enum=False, length=16, name="kind", validate_strings=True),
        default=TaskKind.SEGMENT,
        server_default=TaskKind.SEGMENT.value,
    )
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # The process that holds the claim of the current run (`claimant_id`), so the worker that
    # sees that process die can hand the task back at once instead of waiting for it to go stale.
    claimed_by: Mapped[str | None] = mapped_column(String(255))

    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # When the task's broker message was last sent again, by the sweep or after its worker
    # handed it back (None: only the first send).
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_key: Mapped[str] = mapped_column(String(512))
    input_content_type: Mapped[str] = mapped_column(String(128))
    input_size: Mapped[int] = mapped_column(BigInteger)
    input_sha256: Mapped[str | None] = mapped_column(String(64))
    image_width: Mapped[int] = mapped_column(Integer)
    image_height: Mapped[int] = mapped_column(Integer)
    result_keys: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # A small record of the result for listings (a fine-tune's held-out scores, ...).
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    # The uploaded file's name (cleaned), inherited by the tasks made from this one; downloads
    # are named after it. None: the upload had none.
    name: Mapped[str | None] = mapped_column(String(MAX_NAME_LENGTH))
    # The task this one was made from (rerun, register, fine-tune). No foreign key: the
    # source may be deleted and this one stays.
    source_task: Mapped[UUID | None] = mapped_column()

    @property
    def task_parameters(self) -> TaskParameters:
        """The parameters of a segment task, or of a register task (RegisterParameters)."""
        if self.kind == TaskKind.REGISTER:
            return RegisterParameters.model_validate(self.parameters)
        return TaskParameters.model_validate(self.parameters)

    @property
    def finetune_parameters(self) -> FinetuneParameters:
        """The parameters of a fine-tune task."""
        return FinetuneParameters.model_validate(self.parameters)

    @property
    def views_parameters(self) -> ViewsParameters:
        """The parameters of a views task."""
        return ViewsParameters.model_validate(self.parameters)

    @property
    def is_terminal(self) -> bool:
        return self.status in (TaskStatus.FINISHED, TaskStatus.FAILED)

    def __repr__(self) -> str:
        return f"Task(id={self.id}, status={self.status}, attempts={self.attempts})"


@dataclass(frozen=True)
class TaskPage:
    """One page of tasks, newest first; pass `next_cursor` back for the next page."""

    tasks: list[Task]
    next_cursor: str | None


def parse_task_id(task_id: UUID | str) -> UUID | None:
    """The id as a UUID, or None when it is not one (callers then answer "no such task")."""
    if isinstance(task_id, UUID):
        return task_id
    try:
        return UUID(task_id)
    except (ValueError, TypeError, AttributeError):
        return None


def create_task(
    session: Session,
    *,
    parameters: TaskParameters | FinetuneParameters | ViewsParameters,
    input_content_type: str,
    input_size: int,
    image_width: int,
    image_height: int,
    input_sha256: str | None = None,
    idempotency_key: str | None = None,
    task_id: UUID | None = None,
    name: str | None = None,
    source_task: UUID | None = None,
    input_key: str | None = None,
    result_keys: dict[str, str] | None = None,
) -> tuple[Task, bool]:
    """Queue a new task and return it with True, or the task already holding the key with False.

    Its kind follows from the parameters' type. Pass `task_id` when the input was uploaded
    first under `task_blob_key(task_id, INPUT)`; a register task passes its source's
    `input_key` and starts with the source's mask and tile packs in `result_keys` (shared, not
    copied); a views task passes its source's `input_key` too.
    """
    if idempotency_key is not None and (
        existing := get_task_by_idempotency_key(session, idempotency_key)
    ):
        return existing, False

    task_id = task_id or uuid.uuid4()
    task = Task(
        id=task_id,
        kind=_kind_of(parameters),
        status=TaskStatus.QUEUED,
        progress=0.0,
        attempts=0,
        cancel_requested=False,
        created_at=utc_now(),
        parameters=parameters.model_dump(),
        input_key=input_key or task_blob_key(task_id, TaskBlob.INPUT),
        input_content_type=input_content_type,
        input_size=input_size,
        input_sha256=input_sha256,
        image_width=image_width,
        image_height=image_height,
        result_keys=dict(result_keys or {}),
        idempotency_key=idempotency_key,
        name=name,
        source_task=source_task,
    )
    session.add(task)
    try:
        session.commit()
    except IntegrityError:
        # Another request with the same key committed between our look-up and our insert.
        session.rollback()
        if idempotency_key is not None and (
            existing := get_task_by_idempotency_key(session, idempotency_key)
        ):
            return existing, False
        raise
    return task, True


def _kind_of(parameters: TaskParameters | FinetuneParameters | ViewsParameters) -> TaskKind:
    if isinstance(parameters, FinetuneParameters):
        return TaskKind.FINETUNE
    if isinstance(parameters, ViewsParameters):
        return TaskKind.VIEWS
    if isinstance(parameters, RegisterParameters):
        return TaskKind.REGISTER
    return TaskKind.SEGMENT


def get_task(session: Session, task_id: UUID | str) -> Task | None:
    """The task, freshly read, or None for an unknown or malformed id."""
    if (parsed := parse_task_id(task_id)) is None:
        return None
    return session.get(Task, parsed, populate_existing=True)


def get_task_by_idempotency_key(session: Session, idempotency_key: str) -> Task | None:
    return session.scalars(
        select(Task).where(Task.idempotency_key == idempotency_key)
    ).one_or_none()


def encode_cursor(task: Task) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (created_at, id) a cursor points after; raises ValueError for a malformed one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, task_id = raw.split("|")
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("cursor time has no zone")
        return moment, UUID(task_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise ValueError(f"invalid cursor {cursor!r}; pass the next_cursor of a page") from error


def list_tasks(
    session: Session,
    *,
    limit: int = 50,
    cursor: str | None = None,
    status: TaskStatus | None = None,
    kind: TaskKind = TaskKind.SEGMENT,
) -> TaskPage:
    """Tasks of one kind (segmentations: segment and register tasks) newest first, `limit` at
    a time; stable however many share a creation time."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be 1..{MAX_PAGE_SIZE}, got {limit}")
    query = (
        select(Task)
        .where(Task.kind.in_(kind_family(kind)))
        .order_by(Task.created_at.desc(), Task.id.desc())
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(Task.status == status)
    if cursor is not None:
        after_created_at, after_id = decode_cursor(cursor)
        query = query.where(
            or_(
                Task.created_at < after_created_at,
                and_(Task.created_at == after_created_at, Task.id < after_id),
            )
        )
    tasks = list(session.scalars(query))
    if len(tasks) <= limit:
        return TaskPage(tasks=tasks, next_cursor=None)
    tasks = tasks[:limit]
    return TaskPage(tasks=tasks, next_cursor=encode_cursor(tasks[-1]))


def _update(session: Session, task_id: UUID | str, *conditions: Any, **values: Any) -> bool:
    """Apply `values` to the task if it matches `conditions`; commit; True if a row changed."""
    if (parsed := parse_task_id(task_id)) is None:
        return False
    result = session.execute(
        update(Task)
        .where(Task.id == parsed, *conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def claimant_id(worker_pid: int, pid: int | None = None) -> str:
    """Who holds a claim: process `pid` (default: this one) of the worker whose main process is
    `worker_pid`, on this host. The task id disambiguates equal ids from other pid namespaces."""
    return f"{_worker_claims_prefix(worker_pid)}{pid if pid is not None else os.getpid()}"


def _worker_claims_prefix(worker_pid: int) -> str:
    return f"{socket.gethostname()}:{worker_pid}:"


def mark_running(
    session: Session,
    task_id: UUID | str,
    *,
    stale_after_s: float,
    max_attempts: int,
    claimant: str | None = None,
) -> bool:
    """Claim the task for `claimant` (see `claimant_id`); True only for the one caller that won.

    A task can be claimed while QUEUED, or while RUNNING with a heartbeat older than
    `stale_after_s` (its worker died), as long as it has had fewer than `max_attempts` runs
    and nobody asked to cancel it.
    """
    now = utc_now()
    stale_before = now - timedelta(seconds=stale_after_s)
    return _update(
        session,
        task_id,
        or_(
            Task.status == TaskStatus.QUEUED,
            and_(Task.status == TaskStatus.RUNNING, Task.heartbeat_at < stale_before),
        ),
        Task.attempts < max_attempts,
        Task.cancel_requested.is_(False),
        status=TaskStatus.RUNNING,
        attempts=Task.attempts + 1,
        progress=0.0,
        stage=None,
        error=None,
        started_at=now,
        heartbeat_at=now,
        claimed_by=claimant,
    )


def is_claimable(
    session: Session, task_id: UUID | str, *, stale_after_s: float, max_attempts: int
) -> bool:
    """Whether `mark_running` would claim the task now: a read, so that a worker can drop a
    duplicate message without starting anything (the claim itself still decides)."""
    if (parsed := parse_task_id(task_id)) is None:
        return False
    stale_before = utc_now() - timedelta(seconds=stale_after_s)
    query = select(Task.id).where(
        Task.id == parsed,
        or_(
            Task.status == TaskStatus.QUEUED,
            and_(Task.status == TaskStatus.RUNNING, Task.heartbeat_at < stale_before),
        ),
        Task.attempts < max_attempts,
        Task.cancel_requested.is_(False),
    )
    return session.scalar(query) is not None


def release_claim(
    session: Session,
    task_id: UUID | str,
    *,
    claimant: str,
    max_attempts: int,
    count_attempt: bool = True,
) -> TaskStatus | None:
    """The process `claimant` stopped running the task (it died, or its worker is stopping):
    hand the task back to the queue now, rather than after its heartbeat goes stale.

    The attempt stays counted unless `count_attempt` is False (the worker stopped on purpose),
    so a task that kills its process every time still runs out of attempts. A task that cannot
    run again (cancelled, or that was its last attempt) is FAILED instead. Returns the new
    status, or None when the task is not RUNNING under that claim.
    """
    held = and_(Task.status == TaskStatus.RUNNING, Task.claimed_by == claimant)
    return _give_back(session, task_id, held, max_attempts, count_attempt)


def release_worker_claims(
    session: Session, *, worker_pid: int, max_attempts: int, count_attempt: bool
) -> list[UUID]:
    """`release_claim` for every task a process of the worker `worker_pid` (on this host)
    holds, after that worker ended; returns the ids handed back to the queue."""
    held = and_(
        Task.status == TaskStatus.RUNNING,
        Task.claimed_by.startswith(_worker_claims_prefix(worker_pid), autoescape=True),
    )
    candidates = list(session.scalars(select(Task.id).where(held)))
    return [
        task_id
        for task_id in candidates
        if _give_back(session, task_id, held, max_attempts, count_attempt) == TaskStatus.QUEUED
    ]


def _give_back(
    session: Session, task_id: UUID | str, held: Any, max_attempts: int, count_attempt: bool
) -> TaskStatus | None:
    """QUEUED again if the task may run again, else FAILED; None if `held` does not match."""
    attempts = Task.attempts if count_attempt else Task.attempts - 1
    requeued = _update(
        session,
        task_id,
        held,
        attempts < max_attempts,
        Task.cancel_requested.is_(False),
        status=TaskStatus.QUEUED,
        attempts=attempts,
        stage=None,
        heartbeat_at=None,
        claimed_by=None,
        dispatched_at=utc_now(),  # its caller sends the message again
    )
    if requeued:
        return TaskStatus.QUEUED
    failed = _update(
        session,
        task_id,
        held,
        status=TaskStatus.FAILED,
        stage=None,
        error=case(
            (Task.cancel_requested.is_(True), CANCELLED_ERROR), else_=_gave_up_error(max_attempts)
        ),
        finished_at=utc_now(),
    )
    return TaskStatus.FAILED if failed else None


def _gave_up_error(max_attempts: int) -> str:
    return (
        f"The task did not complete in {max_attempts} attempts (its worker stopped"
        " responding or lost its database or storage); giving up. Submit the image"
        " again to retry."
    )


def report_progress(
    session: Session, task_id: UUID | str, *, progress: float, stage: str | None = None
) -> bool:
    """Record progress (0..1) and a heartbeat; False means stop: the task is no longer ours.

    That is: it is gone, not RUNNING any more, or somebody asked to cancel it.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be within 0..1, got {progress}")
    values: dict[str, Any] = {"progress": progress, "heartbeat_at": utc_now()}
    if stage is not None:
        values["stage"] = stage
    return _update(
        session,
        task_id,
        Task.status == TaskStatus.RUNNING,
        Task.cancel_requested.is_(False),
        **values,
    )


def record_heartbeat(session: Session, task_id: UUID | str) -> bool:
    """Say the worker is alive without changing progress; False means stop, as above."""
    return _update(
        session,
        task_id,
        Task.status == TaskStatus.RUNNING,
        Task.cancel_requested.is_(False),
        heartbeat_at=utc_now(),
    )


def finish_task(
    session: Session,
    task_id: UUID | str,
    *,
    result_keys: dict[str, str],
    summary: dict[str, Any] | None = None,
) -> bool:
    """Mark a RUNNING task FINISHED with its results; True if the task is FINISHED afterwards.

    Finishing an already FINISHED task changes nothing (a re-run of a finished task).
    """
    finished = _update(
        session,
        task_id,
        Task.status == TaskStatus.RUNNING,
        status=TaskStatus.FINISHED,
        progress=1.0,
        stage=None,
        error=None,
        result_keys=result_keys,
        summary=summary,
        finished_at=utc_now(),
    )
    if finished:
        return True
    task = get_task(session, task_id)
    return task is not None and task.status == TaskStatus.FINISHED


def fail_task(session: Session, task_id: UUID | str, *, error: str) -> bool:
    """Mark an unfinished task FAILED with `error`; True if it is FAILED afterwards.

    A FINISHED task stays finished; failing a FAILED task again keeps its first error.
    """
    failed = _update(
        session,
        task_id,
        Task.status.in_((TaskStatus.QUEUED, TaskStatus.RUNNING)),
        status=TaskStatus.FAILED,
        stage=None,
        error=error[:MAX_ERROR_LENGTH],
        finished_at=utc_now(),
    )
    if failed:
        return True
    task = get_task(session, task_id)
    return task is not None and task.status == TaskStatus.FAILED


def request_cancel(session: Session, task_id: UUID | str) -> bool:
    """Ask for the task to stop; False if it is unknown or already over.

    A QUEUED task fails at once; a RUNNING one is flagged, and its worker stops at its next
    progress report and fails it.
    """
    cancelled_while_queued = _update(
        session,
        task_id,
        Task.status == TaskStatus.QUEUED,
        status=TaskStatus.FAILED,
        cancel_requested=True,
        error=CANCELLED_ERROR,
        finished_at=utc_now(),
    )
    return cancelled_while_queued or _update(
        session, task_id, Task.status == TaskStatus.RUNNING, cancel_requested=True
    )


def count_tasks_using_input(session: Session, input_key: str, *, besides: UUID) -> int:
    """How many tasks other than `besides` read the image under `input_key` (a task and the
    register tasks made from it share it; a views task works for its source and goes with
    it, so it does not count)."""
    query = select(func.count()).where(
        Task.input_key == input_key, Task.id != besides, Task.kind != TaskKind.VIEWS
    )
    return session.scalar(query) or 0


def keys_read_by_others(session: Session, input_key: str, *, besides: UUID) -> set[str]:
    """The blobs held by the tasks other than `besides` that read the image under `input_key`:
    that image and every key of their results (a register task reads its source's mask and
    tile packs where they are). Views tasks go with their source and do not count."""
    rows = session.execute(
        select(Task.input_key, Task.result_keys).where(
            Task.input_key == input_key, Task.id != besides, Task.kind != TaskKind.VIEWS
        )
    )
    keys: set[str] = set()
    for key, results in rows:
        keys.add(key)
        keys.update((results or {}).values())
    return keys


def add_result_keys(session: Session, task_id: UUID | str, keys: dict[str, str]) -> bool:
    """Add `keys` to a FINISHED task's results (what a views task made for it); False when the
    task is gone or not FINISHED any more. The row is locked while it is rewritten, so two
    views tasks adding to one task keep both their keys."""
    if (parsed := parse_task_id(task_id)) is None:
        return False
    task = session.get(Task, parsed, with_for_update=True, populate_existing=True)
    if task is None or task.status != TaskStatus.FINISHED:
        session.rollback()
        return False
    task.result_keys = {**task.result_keys, **keys}
    session.commit()
    return True


def latest_views_task(session: Session, source_task: UUID, part: ViewPart) -> Task | None:
    """The newest views task that makes `part` for `source_task`, or None."""
    query = (
        select(Task)
        .where(Task.kind == TaskKind.VIEWS, Task.source_task == source_task)
        .order_by(Task.created_at.desc(), Task.id.desc())
    )
    for task in session.scalars(query):
        if task.views_parameters.part == part:
            return task
    return None


def delete_views_tasks(session: Session, source_task: UUID) -> int:
    """Remove the views tasks of a deleted task (a running one stops at its next heartbeat);
    how many went."""
    result = session.execute(
        delete(Task).where(Task.kind == TaskKind.VIEWS, Task.source_task == source_task)
    )
    session.commit()
    return result.rowcount


def delete_task(session: Session, task_id: UUID | str) -> bool:
    """Remove the task row; True if there was one. Its blobs are the caller's to delete."""
    if (parsed := parse_task_id(task_id)) is None:
        return False
    result = session.execute(delete(Task).where(Task.id == parsed))
    session.commit()
    return result.rowcount == 1


def find_tasks_to_redispatch(
    session: Session, *, stale_after_s: float, max_attempts: int
) -> list[UUID]:
    """QUEUED tasks whose broker message may have been lost, oldest first, for a periodic
    sweep: created, and last sent, longer than `stale_after_s` ago (the enqueue after the
    commit never happened, or the broker lost it), while they have runs left.

    Most of them are only waiting their turn: the sweep re-sends one only when the broker
    holds no message for it. The age keeps the race with a worker that just took the message
    (and has not claimed the task yet) to at most one duplicate per stale period.
    """
    cutoff = utc_now() - timedelta(seconds=stale_after_s)
    query = (
        select(Task.id)
        .where(
            Task.status == TaskStatus.QUEUED,
            Task.created_at < cutoff,
            or_(Task.dispatched_at.is_(None), Task.dispatched_at < cutoff),
            Task.attempts < max_attempts,
            Task.cancel_requested.is_(False),
        )
        .order_by(Task.created_at, Task.id)
    )
    return list(session.scalars(query))


def queued_task_ids(session: Session) -> list[UUID]:
    """Every QUEUED task, oldest first."""
    query = select(Task.id).where(Task.status == TaskStatus.QUEUED)
    return list(session.scalars(query.order_by(Task.created_at, Task.id)))


def release_stale_tasks(session: Session, *, stale_after_s: float, max_attempts: int) -> list[UUID]:
    """Hand back to the queue the RUNNING tasks whose heartbeat is older than `stale_after_s`
    (their worker died, or lost the database) while they have runs left; the lost attempt stays
    counted. Returns their ids, oldest first: their messages are the caller's to send again.

    A worker that was only starved finds the task no longer RUNNING at its next heartbeat and
    stops it."""
    cutoff = utc_now() - timedelta(seconds=stale_after_s)
    stale = and_(
        Task.status == TaskStatus.RUNNING,
        Task.heartbeat_at < cutoff,
        Task.attempts < max_attempts,
        Task.cancel_requested.is_(False),
    )
    query = select(Task.id).where(stale).order_by(Task.created_at, Task.id)
    return [
        task_id
        for task_id in list(session.scalars(query))
        if _update(
            session,
            task_id,
            stale,
            status=TaskStatus.QUEUED,
            stage=None,
            heartbeat_at=None,
            claimed_by=None,
            dispatched_at=utc_now(),
        )
    ]


def release_all_claims(session: Session, *, max_attempts: int) -> list[UUID]:
    """Hand every RUNNING task back to the queue, its attempt not counted, oldest first: for
    `amseg up` when it starts, when no worker of it can be running any task."""
    held = Task.status == TaskStatus.RUNNING
    query = select(Task.id).where(held).order_by(Task.created_at, Task.id)
    return [
        task_id
        for task_id in list(session.scalars(query))
        if _give_back(session, task_id, held, max_attempts, count_attempt=False)
        == TaskStatus.QUEUED
    ]


def mark_dispatched(session: Session, task_id: UUID | str) -> bool:
    """Record that the task's message was sent again now; True if the task exists."""
    return _update(session, task_id, dispatched_at=utc_now())


def release_task(session: Session, task_id: UUID | str) -> bool:
    """Hand a RUNNING task back to the queue after a passing infrastructure failure.

    The attempt stays counted, so a task that keeps failing this way still runs out of attempts.
    """
    return _update(
        session,
        task_id,
        Task.status == TaskStatus.RUNNING,
        status=TaskStatus.QUEUED,
        stage=None,
        heartbeat_at=None,
    )


def fail_abandoned_tasks(
    session: Session, *, stale_after_s: float, max_attempts: int
) -> list[UUID]:
    """Fail RUNNING tasks that went stale on their last allowed attempt (or were cancelled),
    and QUEUED tasks with no attempt left (handed back after their last one), which nobody
    could claim any more.

    Returns the ids it failed, so the sweep can log them.
    """
    cutoff = utc_now() - timedelta(seconds=stale_after_s)
    abandoned = or_(
        and_(
            Task.status == TaskStatus.RUNNING,
            Task.heartbeat_at < cutoff,
            or_(Task.attempts >= max_attempts, Task.cancel_requested.is_(True)),
        ),
        and_(Task.status == TaskStatus.QUEUED, Task.attempts >= max_attempts),
    )
    candidates = list(session.scalars(select(Task.id).where(abandoned)))
    failed = [
        task_id
        for task_id in candidates
        if _update(
            session,
            task_id,
            abandoned,
            status=TaskStatus.FAILED,
            stage=None,
            error=case(
                (Task.cancel_requested.is_(True), CANCELLED_ERROR),
                else_=_gave_up_error(max_attempts),
            ),
            finished_at=utc_now(),
        )
    ]
    return failed
