"""The database layer: engines, and how an outage is logged."""

import logging

import psycopg
from sqlalchemy.exc import OperationalError

from store.database import (
    POSTGRES_CONNECT_TIMEOUT_S,
    ThrottledWarning,
    create_db_engine,
    describe_database_error,
)

REFUSED = OperationalError(
    "SELECT 1",
    {},
    psycopg.OperationalError(
        'connection to server at "127.0.0.1", port 5432 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?"
    ),
)


def test_postgres_gives_up_connecting_in_seconds() -> None:
    """A partitioned Postgres must fail requests fast, not after the TCP timeout."""
    engine = create_db_engine("postgresql+psycopg://amseg@10.255.255.1/amseg")
    assert engine.url.query["connect_timeout"] == str(POSTGRES_CONNECT_TIMEOUT_S)
    own = create_db_engine("postgresql+psycopg://amseg@db/amseg?connect_timeout=30")
    assert own.url.query["connect_timeout"] == "30"  # the operator's own choice stays


def test_database_error_is_described_in_one_line() -> None:
    described = describe_database_error(REFUSED)
    assert described.startswith("OperationalError: connection to server")
    assert "\n" not in described and "SELECT" not in described


def test_throttled_warning_logs_a_burst_once_then_counts(caplog) -> None:
    throttle = ThrottledWarning(logging.getLogger("test.throttle"), every_s=3600)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        for _ in range(5):
            throttle.warn("database unreachable")
        assert [r.getMessage() for r in caplog.records] == ["database unreachable"]
        throttle.every_s = 0.0  # the period is over: the next line says what it left out
        throttle.warn("database unreachable")
    assert caplog.records[-1].getMessage() == (
        "database unreachable (4 more since the last such line)"
    )
