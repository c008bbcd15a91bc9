"""Alembic migrations on SQLite and Postgres: up, down, up again, and in step with the model."""

import io

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from store.database import Base, alembic_config, create_db_engine
from store.tasks import Task

TASK_COLUMNS = {column.name for column in Task.__table__.columns}


def table_columns(database_url: str) -> dict[str, set[str]]:
    engine = create_db_engine(database_url)
    try:
        inspector = inspect(engine)
        return {
            table: {column["name"] for column in inspector.get_columns(table)}
            for table in inspector.get_table_names()
        }
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    config = alembic_config(empty_database_url)

    command.upgrade(config, "head")
    assert table_columns(empty_database_url)["tasks"] == TASK_COLUMNS

    command.downgrade(config, "base")
    assert "tasks" not in table_columns(empty_database_url)

    command.upgrade(config, "head")
    assert table_columns(empty_database_url)["tasks"] >= {
        "id", "status", "progress", "heartbeat_at", "idempotency_key", "cancel_requested",
    }  # fmt: skip


def test_model_matches_migrations(empty_database_url: str) -> None:
    command.upgrade(alembic_config(empty_database_url), "head")
    engine = create_db_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()

    assert differences == []


def test_offline_sql_can_be_generated(empty_database_url: str) -> None:
    """`alembic upgrade head --sql`, for a DBA who applies migrations by hand."""
    config = alembic_config(empty_database_url)
    config.output_buffer = io.StringIO()

    command.upgrade(config, "head", sql=True)

    assert "CREATE TABLE tasks" in config.output_buffer.getvalue()
