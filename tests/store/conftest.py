"""Real backends for the store tests: SQLite files, a local Postgres, and moto's S3 over HTTP."""

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from store.blobs import BlobStore, LocalBlobStore, S3BlobStore
from store.database import create_db_engine, create_session_factory, upgrade_database

POSTGRES_HOST, POSTGRES_PORT, POSTGRES_ADMIN_DATABASE = "127.0.0.1", 5432, "test"
POSTGRES_USERS = ("postgres", "root")

BACKENDS = ["sqlite", "postgres"]


def _connect_postgres() -> str | None:
    """The conninfo of a user that can log in, or None when no server answers."""
    for user in POSTGRES_USERS:
        conninfo = (
            f"host={POSTGRES_HOST} port={POSTGRES_PORT} dbname={POSTGRES_ADMIN_DATABASE}"
            f" user={user} connect_timeout=2"
        )
        try:
            with psycopg.connect(conninfo):
                return conninfo
        except psycopg.OperationalError:
            continue
    return None


def _start_postgres_cluster() -> str:
    """Try to start the Debian cluster; returns why it could not, or "" on success."""
    clusters = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") is None or not clusters.is_dir():
        return "no PostgreSQL server is installed (pg_ctlcluster, /etc/postgresql)"
    for version in sorted(path.name for path in clusters.iterdir()):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    return ""


@pytest.fixture(scope="session")
def postgres_admin_conninfo() -> str:
    """A connection to the local Postgres' `test` database; skips when none can be had."""
    conninfo = _connect_postgres()
    if conninfo is None:
        if why_not := _start_postgres_cluster():
            pytest.skip(f"Postgres tests skipped: {why_not}")
        for _ in range(20):
            if (conninfo := _connect_postgres()) is not None:
                break
            time.sleep(0.5)
    if conninfo is None:
        pytest.skip(
            f"Postgres tests skipped: nothing accepts connections on {POSTGRES_HOST}:"
            f"{POSTGRES_PORT} as {' or '.join(POSTGRES_USERS)}, even after pg_ctlcluster start"
        )
    return conninfo


@pytest.fixture(scope="session")
def make_postgres_database(postgres_admin_conninfo: str) -> Iterator[Callable[[], str]]:
    """Creates empty, uniquely named databases; drops them all when the session ends."""
    admin = psycopg.connect(postgres_admin_conninfo, autocommit=True)
    created: list[str] = []
    user = admin.info.user

    def make() -> str:
        name = f"amseg_test_{uuid.uuid4().hex[:12]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql+psycopg://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"

    yield make
    for name in created:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


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


@pytest.fixture(scope="session")
def s3_endpoint_url() -> Iterator[str]:
    """moto's S3 served over real HTTP on loopback, with dummy credentials in the environment."""
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("AWS_ACCESS_KEY_ID", "testing")
        environment.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        environment.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            environment.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(params=["local", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each implementation in turn; S3 gets a fresh bucket per test."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    endpoint_url = request.getfixturevalue("s3_endpoint_url")
    return S3BlobStore(
        f"amseg-test-{uuid.uuid4().hex[:12]}", endpoint_url=endpoint_url, create_bucket=True
    )
