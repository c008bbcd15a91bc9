"""Alembic environment: migrates the task store at the URL the caller or the settings give."""

from logging.config import fileConfig

from alembic import context
from sqlalchemy.pool import NullPool

import store.tasks  # noqa: F401 - registers the tables on Base.metadata
from store.database import Base, create_db_engine
from store.settings import get_settings

config = context.config
target_metadata = Base.metadata

# Embedded callers (tests, the API's start-up) keep their own logging set-up.
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    return config.attributes.get("database_url") or get_settings().database_url


def configure_options() -> dict:
    # Batch mode turns ALTERs into copy-and-move on SQLite, which cannot alter most things;
    # on Postgres it emits ordinary ALTER statements.
    return {"target_metadata": target_metadata, "render_as_batch": True, "compare_type": True}


def run_migrations_offline() -> None:
    """Print the SQL instead of running it (`alembic upgrade head --sql`)."""
    context.configure(url=database_url(), literal_binds=True, **configure_options())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_db_engine(database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, **configure_options())
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
