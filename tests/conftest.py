"""Shared pytest fixtures: real crops, a local Postgres (and private clusters that tests may
restart), moto's S3 over HTTP, a Redis server."""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from moto.server import ThreadedMotoServer

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
POSTGRES_HOST, POSTGRES_PORT, POSTGRES_ADMIN_DATABASE = "127.0.0.1", 5432, "test"
POSTGRES_USERS = ("postgres", "root")


@pytest.fixture
def real_crops() -> list[Path]:
    """The real microscopy crops beside the checkout (skips when they are absent)."""
    crops = sorted(REAL_DATA.glob("*.png"))
    if not crops:
        pytest.skip(f"real crops not found in {REAL_DATA}")
    return crops


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on a free loopback port, with AOF on, that tests may restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of the tests' own (the machine's may hold other data, and tests restart it)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (`make test` installs it with apt)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def postgres_bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, or Debian's /usr/lib/postgresql/<newest>/bin."""
    if (initdb := shutil.which("initdb")) and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    return versions[-1].parent if versions else None


class PostgresCluster:
    """A private PostgreSQL cluster (initdb in a temporary folder, a free loopback port, trust
    auth) that tests may stop and start; the machine's own Postgres is left alone.

    Postgres refuses to run as root, so as root the cluster belongs to the `postgres` user."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="amseg-postgres-"))
        self.owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.owner is not None:
            os.chown(self.directory, self.owner.pw_uid, self.owner.pw_gid)
        self.data = self.directory / "data"
        self._pg("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync",
                 "-E", "UTF8", "--locale=C")  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _pg(self, program: str, *args: object) -> None:
        command = [str(self.bin_dir / program), *map(str, args)]
        as_owner = {}
        if self.owner is not None:
            as_owner = dict(user=self.owner.pw_uid, group=self.owner.pw_gid, extra_groups=[])
        done = subprocess.run(
            command, cwd=self.directory, capture_output=True, text=True, timeout=120, **as_owner
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        # No fsync: a test cluster need not survive a power cut, and it is much faster.
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = self.directory / "postgres.log"
        self._pg("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session at once and shuts down cleanly; `immediate` is a crash."""
        self._pg("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A started private Postgres cluster for tests that restart their database."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl on PATH or in /usr/lib/postgresql/*/"
            "bin) to start a private cluster; `make test` installs them"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a `postgres` user to own a private cluster")
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
