"""The running service: uvicorn + Celery workers on Postgres, Redis and S3 (moto over HTTP)."""

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from store.database import upgrade_database
from tests.conftest import RedisServer
from tests.service_stack import ServiceStack, stack_environment


@pytest.fixture(scope="module")
def make_stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    make_postgres_database: Callable[[], str],
    redis_server: RedisServer,
    s3_endpoint_url: str,
) -> Iterator[Callable[..., ServiceStack]]:
    """Builds stacks on a fresh database, bucket and queue each; stops them all at the end, and
    removes their files unless a test of the module failed (some hold gigabytes, and the whole
    suite's would fill a small disk)."""
    stacks: list[ServiceStack] = []
    failed_before = request.session.testsfailed

    def make(
        *, workers: int = 1, database_url: str | None = None, **overrides: str
    ) -> ServiceStack:
        """`database_url`: a database of the caller's own (e.g. on a cluster it restarts)."""
        directory = tmp_path_factory.mktemp("stack")
        database_url = database_url or make_postgres_database()
        upgrade_database(database_url)
        env = stack_environment(
            directory,
            database_url=database_url,
            redis_url=redis_server.url,
            s3_endpoint_url=s3_endpoint_url,
            **overrides,
        )
        stack = ServiceStack(env=env, directory=directory)
        stacks.append(stack)
        stack.start_api()
        for _ in range(workers):
            stack.start_worker()
        return stack

    yield make
    for stack in stacks:
        stack.stop()
    if request.session.testsfailed == failed_before:
        for stack in stacks:
            shutil.rmtree(stack.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., ServiceStack]) -> ServiceStack:
    """One API and one worker, shared by the tests of a module."""
    return make_stack()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inputs")
