"""Errors as problem details: an unreachable database is a 503 to come back after, logged as
one line per burst; anything else unexpected stays a 500. (The real outage, a Postgres restart
under load, is in test_chaos.py.)"""

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from api.problems import DATABASE_RETRY_AFTER_S, PROBLEM_JSON, install_problem_handlers

REFUSED = psycopg.OperationalError(
    'connection to server at "127.0.0.1", port 5432 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?"
)
DATABASE_ERRORS = {
    "operational": OperationalError("SELECT 1", {}, REFUSED),
    "interface": InterfaceError("SELECT 1", {}, psycopg.InterfaceError("connection closed")),
    "pool": PoolTimeoutError("QueuePool limit of size 5 overflow 10 reached"),
}


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/database/{name}")
    def database(name: str) -> None:
        raise DATABASE_ERRORS[name]

    @app.get("/bug")
    def bug() -> None:
        raise RuntimeError("a bug")

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("name", sorted(DATABASE_ERRORS))
def test_unreachable_database_is_503_with_retry_after(client: TestClient, name: str) -> None:
    response = client.get(f"/database/{name}")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.headers["retry-after"] == str(DATABASE_RETRY_AFTER_S)
    body = response.json()
    assert body["type"].endswith("/database-unavailable")
    assert body["status"] == 503
    assert "SELECT" not in body["detail"] and "5432" not in body["detail"]


def test_other_errors_stay_500(client: TestClient) -> None:
    response = client.get("/bug")
    assert response.status_code == 500
    assert response.json()["type"].endswith("/internal-error")
