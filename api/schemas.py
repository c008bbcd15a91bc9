"""Request queries and response bodies of the API."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.train.finetune_job import DEFAULT_MINUTES
from store.tasks import (
    MAX_FINETUNE_MINUTES,
    RegisterParameters,
    Task,
    TaskKind,
    TaskParameters,
    TaskStatus,
)


class TaskQuery(TaskParameters):
    """The query of `POST /tasks`: the task's parameters, each checked once, by TaskParameters."""

    accurate: bool | None = Field(
        default=None,
        description="Enlarge grids of small marks 2x first: sharper outlines, 4x the network "
        "time on those images (default: ACCURATE_SEGMENTATION, else on only for the gpu queue)",
    )
    name: str | None = Field(
        default=None,
        max_length=1000,
        description="The slide's name, e.g. its file name (a multipart upload's file name is "
        "used when this is not given); downloads are named after it",
    )

    # Not a query parameter (so `?imzml=` is refused as unknown): the upload says whether an
    # imzML came, as the multipart part `imzml`.
    imzml: ClassVar[bool] = False

    @model_validator(mode="after")
    def _orientation_needs_imzml(self) -> TaskQuery:
        return self  # the body says whether an imzML came: task_parameters checks it

    def task_parameters(self, default_accurate: bool, imzml: bool = False) -> TaskParameters:
        """The task's parameters; `imzml`: an acquisition came with the image. Raises
        ValidationError for orientation flags without one."""
        accurate = default_accurate if self.accurate is None else self.accurate
        given = self.model_dump(exclude={"accurate", "name"})
        return TaskParameters(**given, accurate=accurate, imzml=imzml)


class RegisterQuery(BaseModel):
    """The query of `POST /tasks/{id}/register`: the grid (default: the source task's) and
    optionally one mark's known place; checked by RegisterParameters."""

    model_config = ConfigDict(extra="forbid")

    rows: int | None = Field(default=None, ge=1, le=10_000, description="Grid rows")
    cols: int | None = Field(default=None, ge=1, le=10_000, description="Grid columns")
    mark_x: float | None = Field(
        default=None,
        ge=0.0,
        allow_inf_nan=False,
        description="A mark whose grid place you know: its centre's x, px",
    )
    mark_y: float | None = Field(
        default=None, ge=0.0, allow_inf_nan=False, description="Its centre's y, px"
    )
    mark_row: int | None = Field(
        default=None, ge=0, le=9_999, description="Its grid row, from 0 (as in ams.csv)"
    )
    mark_col: int | None = Field(
        default=None, ge=0, le=9_999, description="Its grid column, from 0"
    )
    flip_x: bool | None = Field(
        default=None, description="The imzML's x runs right to left (default: the task's)"
    )
    flip_y: bool | None = Field(
        default=None, description="The imzML's y runs bottom to top (default: the task's)"
    )
    transpose: bool | None = Field(
        default=None, description="The imzML's x runs down the rows (default: the task's)"
    )

    def parameters(self, source: Task, new_imzml: bool = False) -> RegisterParameters:
        """The register task's parameters: the source's segmentation settings (how its mask
        was made), this grid or else the source's, the known mark, and the imzML (a new one,
        or the source's) oriented as given or as the source's was. Raises ValidationError."""
        settings = source.task_parameters.segmentation().model_dump()
        given = self.model_dump(exclude={"flip_x", "flip_y", "transpose"})
        if self.rows is None and self.cols is None:  # the same grid, e.g. with a known mark
            given |= {"rows": settings["rows"], "cols": settings["cols"]}
        orientation = self.model_dump(include={"flip_x", "flip_y", "transpose"})
        given |= {flag: value for flag, value in orientation.items() if value is not None}
        given["imzml"] = new_imzml or settings["imzml"]
        return RegisterParameters(**(settings | given))


class TaskLinks(BaseModel):
    self: str
    mask: str
    overlay: str
    labels: str | None = None
    ams_csv: str | None = None
    qc: str | None = None
    marks_geojson: str | None = None
    labels_tiff: str | None = None
    source_task: str | None = None


class ImageInfo(BaseModel):
    width: int
    height: int
    content_type: str
    size_bytes: int


class TaskCreated(BaseModel):
    id: str
    status: TaskStatus
    links: TaskLinks


class JobState(BaseModel):
    """What tasks and fine-tunes (models) share: the life of a job on the queue."""

    id: str
    status: TaskStatus
    progress: float = Field(ge=0.0, le=1.0)
    stage: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    parameters: dict
    name: str | None = Field(
        default=None,
        description="The uploaded file's name (inherited from the source task); downloads are "
        "named after it",
    )


def job_state(task: Task, parameters: BaseModel) -> dict:
    """The JobState fields of a task row; `parameters` as the row's kind reads them."""
    return {
        "id": str(task.id),
        "status": task.status,
        "progress": task.progress,
        "stage": task.stage,
        "error": task.error,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "attempts": task.attempts,
        "parameters": parameters.model_dump(),  # every key, also for older rows
        "name": task.name,
    }


class TaskPublic(JobState):
    kind: TaskKind = Field(
        description="segment: the image was segmented; register: an earlier task's mask was "
        "registered again (on another grid), see source_task"
    )
    source_task: str | None = Field(
        default=None, description="The task this one was made from (rerun, register)"
    )
    image: ImageInfo
    summary: dict | None = Field(
        default=None,
        description="Once FINISHED: marks found; with a grid also expected, missing, extra "
        "components and warnings (the whole QC is at links.qc)",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Why the result may be doubtful (registration), empty when it looks sound",
    )
    links: TaskLinks


class TaskPage(BaseModel):
    data: list[TaskPublic]
    next_cursor: str | None
    links: dict[str, str | None]


class ComponentHealth(BaseModel):
    ok: bool
    detail: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: ComponentHealth
    broker: ComponentHealth
    storage: ComponentHealth


def task_links(task: Task) -> TaskLinks:
    base = f"/tasks/{task.id}"
    registered = task.parameters.get("rows") is not None or task.parameters.get("imzml", False)
    return TaskLinks(
        self=base,
        mask=f"/masks/{task.id}",
        overlay=f"{base}/overlay.png",
        labels=f"{base}/labels" if registered else None,
        ams_csv=f"{base}/ams.csv" if registered else None,
        qc=f"{base}/qc" if registered else None,
        marks_geojson=f"{base}/marks.geojson" if registered else None,
        labels_tiff=f"{base}/labels.tiff" if registered else None,
        source_task=f"/tasks/{task.source_task}" if task.source_task else None,
    )


def task_public(task: Task) -> TaskPublic:
    return TaskPublic(
        **job_state(task, task.task_parameters),
        kind=task.kind,
        source_task=str(task.source_task) if task.source_task else None,
        image=ImageInfo(
            width=task.image_width,
            height=task.image_height,
            content_type=task.input_content_type,
            size_bytes=task.input_size,
        ),
        summary=task.summary,
        warnings=(task.summary or {}).get("warnings", []),
        links=task_links(task),
    )


class ModelQuery(BaseModel):
    """The query of `POST /models`: the task whose image to learn from, and the job's limits."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(max_length=64, description="A task whose image the model learns from")
    rows: int | None = Field(
        default=None, ge=1, le=10_000, description="Grid rows (label-free: default the task's)"
    )
    cols: int | None = Field(default=None, ge=1, le=10_000, description="Grid columns")
    minutes: float = Field(
        default=DEFAULT_MINUTES,
        gt=0.0,
        le=MAX_FINETUNE_MINUTES,
        description="Upper bound of the fine-tune's time (it runs a fixed number of steps)",
    )
    base: str | None = Field(
        default=None, max_length=100, description="Model to start from (default: shipped model)"
    )


class ModelLinks(BaseModel):
    self: str
    card: str | None = None
    source_task: str | None = None


class ModelPublic(JobState):
    summary: dict | None = Field(description="Held-out scores and time, once FINISHED")
    links: ModelLinks


class ModelPage(BaseModel):
    data: list[ModelPublic]
    next_cursor: str | None
    links: dict[str, str | None]


def model_public(task: Task) -> ModelPublic:
    parameters = task.finetune_parameters
    finished = task.status == TaskStatus.FINISHED
    return ModelPublic(
        **job_state(task, parameters),
        summary=task.summary,
        links=ModelLinks(
            self=f"/models/{task.id}",
            card=f"/models/{task.id}/model_card.json" if finished else None,
            source_task=f"/tasks/{parameters.source_task}" if parameters.source_task else None,
        ),
    )
