"""Engine, sessions and migrations for the task database (Postgres, or SQLite for a laptop)."""

import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, Dialect, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

REPO_ROOT = Path(__file__).resolve().parents[1]
SQLITE_BUSY_TIMEOUT_MS = 10_000
# A Postgres that does not answer at all (a network partition, not a refused connection) must
# fail a request in seconds, not after the TCP timeout with every pool thread stuck.
POSTGRES_CONNECT_TIMEOUT_S = 5

# Lost connections, a server that refuses or restarts, a pool with no connection free: passing
# trouble. The API answers 503 (come back) instead of 500; workers retry; both log one line.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)

# Explicit constraint names, so migrations (and SQLite batch mode) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no time zones and hands back naive values; storing UTC and re-attaching it on
    the way out keeps comparisons and arithmetic the same as on Postgres.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"refusing a naive datetime {value!r}; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def create_db_engine(database_url: str, **engine_options: Any) -> Engine:
    """An engine for `database_url`; SQLite gets WAL, a busy timeout and cross-thread use."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
            url = url.update_query_dict({"connect_timeout": str(POSTGRES_CONNECT_TIMEOUT_S)})
        return create_engine(url, pool_pre_ping=True, **engine_options)

    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        **engine_options,
    )

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets the API read while a worker writes; the busy timeout makes a second writer
        # wait for the first instead of failing with "database is locked".
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the API serialises them afterwards)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration for this repository's migrations, aimed at `database_url`."""
    config = Config(str(REPO_ROOT / "alembic.ini"))
    # Passed as an attribute rather than an ini option: ini values treat "%" as interpolation.
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` up to `revision` (the latest by default)."""
    command.upgrade(alembic_config(database_url), revision)


class ThrottledWarning:
    """Logs the first of a burst of alike failures, then at most one line per `every_s` with
    how many it left out: an outage answered per request must not bury the log."""

    def __init__(self, logger: logging.Logger, every_s: float = 30.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._last = -float("inf")
        self._left_out = 0
        self._lock = threading.Lock()

    def warn(self, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.every_s:
                self._left_out += 1
                return
            left_out, self._left_out, self._last = self._left_out, 0, now
        more = f" ({left_out} more since the last such line)" if left_out else ""
        self.logger.warning("%s%s", message, more)


def describe_database_error(error: BaseException) -> str:
    """One line for the log: the driver's own first line, without SQLAlchemy's SQL and links."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[0]}"
