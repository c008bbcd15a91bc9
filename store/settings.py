"""The one settings object shared by the API and the worker, read from the environment and `.env`.

Embedded defaults run everything on a laptop (SQLite and a local blob directory); setting
`DATABASE_URL`, `REDIS_URL` and `S3_*` switches to Postgres, Redis and S3/MinIO.
"""

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_API_KEY_LENGTH = 16
MIN_API_KEY_DISTINCT = 8  # "aaaaaaaaaaaaaaaa" is 16 characters, and no key
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DEFAULT_MODEL_NAME = "default"


class Settings(BaseSettings):
    """Service configuration; field names match the environment variables case-insensitively."""

    # hide_input_in_errors: a refused setting (a weak API key, a password in a URL) is never
    # echoed back in the error.
    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Path("./amseg-data")
    # `amseg up`: everything under data_dir (SQLite, local blobs, filesystem broker), whatever
    # DATABASE_URL, REDIS_URL or S3_BUCKET say.
    embedded: bool = False
    # Empty means "SQLite file under data_dir", filled in by the validator below.
    database_url: str = ""
    redis_url: str | None = None

    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    # Presigned URLs are signed for a host; inside docker-compose the endpoint the services
    # use (http://minio:9000) is not the one a browser can reach, so sign with this one.
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None

    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    max_pixels: int = Field(default=400_000_000, gt=0)
    # What an image may take once decoded (pixels x channels x bytes a sample, read from its
    # header): a small file of 100 MP RGBA float64 decodes to 3.2 GB. 400 MP of 16-bit RGB
    # (2.4 GB) passes; the worker turns images gray as it reads them, so it holds far less.
    max_decoded_bytes: int = Field(default=3_000_000_000, gt=0)
    # A request body that sends nothing for this long is dropped with 408, so a stalled client
    # cannot hold a connection and an upload slot forever.
    upload_idle_timeout_s: float = Field(default=30.0, gt=0)
    # Uploads one API process receives at once; one more is answered 503 with Retry-After.
    # Each holds a file of up to MAX_UPLOAD_BYTES on the API's disk (memory: about 1 MB).
    max_concurrent_uploads: int = Field(default=64, ge=1)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    # Host names the API answers to besides IP addresses and localhost (a rebound DNS name
    # must not reach it); `*` for any. `amseg serve --host NAME` adds NAME.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Where the API is reachable from, when something in front of it decides (docker-compose
    # passes the address it publishes the port on); None: the address it listens on. Beyond
    # this machine an API key is required.
    published_address: str | None = None
    # The umask of the service's processes, so the database, uploads and results under
    # DATA_DIR are private (directories 0700, files 0600); 022 shares them read-only.
    data_umask: str = Field(default="077", pattern=r"^0?[0-7]{3}$")

    # A RUNNING task whose heartbeat (every quarter of this) is older is taken to be orphaned;
    # with the sweep's interval this bounds how soon a dead worker's task runs again (~13 s).
    # Too short only costs work: a task taken from a live but starved worker stops there, and
    # its result is still written once (the claim decides).
    task_stale_after_s: float = Field(default=10.0, gt=0)
    task_max_attempts: int = Field(default=3, ge=1, le=100)
    # The API upgrades the database when it starts; turn off where a separate step migrates
    # (docker-compose's `migrate` service) so that API replicas never race on it.
    migrate_on_start: bool = True
    # How often the API looks for tasks whose message or worker was lost.
    sweep_interval_s: float = Field(default=3.0, gt=0)

    # What one API process keeps in memory of the viewer's tiles (the worker stores them as
    # tile packs): the packs' indexes (8 bytes a tile) and the tiles sent last, least
    # recently used out. 0 keeps nothing: every tile is read from the blob store.
    view_cache_bytes: int = Field(default=64 * 1024**2, ge=0)

    # Queue the API sends tasks to; CPU workers consume "cpu", GPU workers "gpu,cpu".
    task_queue: str = Field(default="cpu", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Per-task limits: the soft one raises inside the task so it can record FAILED; the hard
    # one kills the process. The broker redelivers unacknowledged messages after the
    # visibility timeout, so it must outlast the hard limit or a running task is duplicated.
    task_soft_time_limit_s: int = Field(default=1800, gt=0)
    task_time_limit_s: int = Field(default=1900, gt=0)
    broker_visibility_timeout_s: int = Field(default=7200, gt=0)

    # Named models a task may ask for: sub-directories of models_dir; "default" is the model
    # shipped with amseg. None: only the default.
    models_dir: Path | None = None
    # Device for the worker's network: auto (CUDA when present), cpu or cuda.
    worker_device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda)$")
    # What the API records for a task that does not say `?accurate=`: enlarge grids of small
    # marks 2x before the network (`amseg predict --accurate`: sharper outlines for 4x the
    # network time on those images). None: on when tasks go to the "gpu" queue, which
    # has the time. Decided at upload, so a task gives the same mask on any worker.
    accurate_segmentation: bool | None = None

    @property
    def default_accurate(self) -> bool:
        """`accurate` of a task whose upload does not say (see accurate_segmentation)."""
        if self.accurate_segmentation is not None:
            return self.accurate_segmentation
        return self.task_queue == "gpu"

    @field_validator("api_keys", "allowed_hosts", mode="before")
    @classmethod
    def split_api_keys(cls, value: object) -> object:
        """Accept `API_KEYS=key1,key2` (and ALLOWED_HOSTS) as well as a list."""
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def refuse_weak_api_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if (
                len(key) < MIN_API_KEY_LENGTH
                or len(set(key)) < MIN_API_KEY_DISTINCT
                or any(char.isspace() for char in key)
            ):
                raise ValueError(
                    f"every API key must be at least {MIN_API_KEY_LENGTH} characters, of"
                    f" {MIN_API_KEY_DISTINCT} different ones at least, without spaces; generate"
                    " one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        return keys

    @field_validator("database_url")
    @classmethod
    def use_psycopg_driver(cls, url: str) -> str:
        """Point bare `postgresql://` URLs at psycopg 3, the only Postgres driver installed."""
        for bare in ("postgres://", "postgresql://"):
            if url.startswith(bare):
                return "postgresql+psycopg://" + url.removeprefix(bare)
        if url and not url.startswith(("sqlite", "postgresql")):
            scheme = url.partition("://")[0] if "://" in url else "no scheme"
            # Not the URL itself: it may hold a password.
            raise ValueError(f"DATABASE_URL must be a sqlite:// or postgresql:// URL, not {scheme}")
        return url

    @field_validator("s3_endpoint_url", "s3_public_endpoint_url")
    @classmethod
    def require_http_endpoint(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in {"http", "https"}:
            raise ValueError(f"S3 endpoints must be http:// or https:// URLs, got {url!r}")
        return url

    @model_validator(mode="after")
    def fill_defaults_and_check_credentials(self) -> Self:
        if self.embedded:
            self.database_url, self.redis_url, self.s3_bucket = "", None, None
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'amseg.sqlite3').resolve()}"
        if not self.task_soft_time_limit_s < self.task_time_limit_s:
            raise ValueError("TASK_SOFT_TIME_LIMIT_S must be below TASK_TIME_LIMIT_S")
        if not self.task_time_limit_s < self.broker_visibility_timeout_s:
            raise ValueError(
                "BROKER_VISIBILITY_TIMEOUT_S must exceed TASK_TIME_LIMIT_S, or the broker hands"
                " a running task to a second worker"
            )
        # Half a key pair silently falls back to other credentials in boto3; refuse it instead.
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
        return self

    @property
    def uses_s3(self) -> bool:
        """Whether blobs go to S3 (a bucket is configured) rather than under `data_dir`."""
        return self.s3_bucket is not None

    @property
    def broker_url(self) -> str:
        """Redis when configured, else kombu's filesystem transport under data_dir (embedded)."""
        return self.redis_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        """Where the embedded filesystem broker keeps its message files."""
        return self.data_dir / "broker"

    def model_dir_for(self, name: str | None) -> Path | None:
        """The directory of a named model; None for the default one shipped with amseg.

        Raises ValueError for a name that is not a sub-directory of models_dir holding a
        model (so a request can never point the worker at an arbitrary path).
        """
        if name is None or name == DEFAULT_MODEL_NAME:
            return None
        if MODEL_NAME.match(name) and self.models_dir is not None:
            directory = self.models_dir / name
            if (directory / "model.safetensors").is_file():
                return directory
        known = [DEFAULT_MODEL_NAME]
        if self.models_dir is not None and self.models_dir.is_dir():
            known += sorted(
                p.name for p in self.models_dir.iterdir() if (p / "model.safetensors").is_file()
            )
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(known)}")

    @property
    def blob_dir(self) -> Path:
        """Where the local blob store keeps its files when no bucket is configured."""
        return self.data_dir / "blobs"


def describe_settings_error(error: ValidationError) -> str:
    """One line naming each refused setting and why, without its value."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in item["loc"]).upper()
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {message}" if name else message)
    return "; ".join(problems)


def apply_data_umask(settings: Settings) -> None:
    """Make what this process writes from now on follow DATA_UMASK."""
    os.umask(int(settings.data_umask, 8))


class SettingsError(ValueError):
    """Settings that cannot be used, said in one line that shows no value."""


def load_settings(**overrides: object) -> Settings:
    """The settings (the environment, `overrides` over it) for a service process, with
    DATA_UMASK applied; SettingsError when one is refused."""
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(describe_settings_error(error)) from None
    apply_data_umask(settings)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
