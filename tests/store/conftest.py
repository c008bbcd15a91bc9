"""Real backends for the store tests: SQLite files, plus the shared Postgres and S3 fixtures."""

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from store.blobs import BlobStore, LocalBlobStore, S3BlobStore
from store.database import create_db_engine, create_session_factory, upgrade_database

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def migrated_postgres_url(make_postgres_database: Callable[[], str]) -> str:
    url = make_postgres_database()
    upgrade_database(url)
    return url


@pytest.fixture(params=BACKENDS)
def database_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def empty_database_url(
    database_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> str:
    """A URL to a database with no tables yet, on each backend."""
    if database_backend == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.sqlite3'}"
    return request.getfixturevalue("make_postgres_database")()


@pytest.fixture
def engine(
    database_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Engine]:
    """An engine on a migrated database; the tasks table is empty at the start of each test."""
    if database_backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'tasks.sqlite3'}"
        upgrade_database(url)
    else:
        url = request.getfixturevalue("migrated_postgres_url")
    engine = create_db_engine(url)
    yield engine
    if database_backend == "postgres":
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM tasks"))
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture(params=["local", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each implementation in turn; S3 gets a fresh bucket per test."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    endpoint_url = request.getfixturevalue("s3_endpoint_url")
    return S3BlobStore(
        f"amseg-test-{uuid.uuid4().hex[:12]}", endpoint_url=endpoint_url, create_bucket=True
    )
