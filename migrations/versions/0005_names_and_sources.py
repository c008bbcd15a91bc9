"""Tasks keep the uploaded file's name and the task they were made from (a rerun, a register
task, a fine-tune); register tasks read their source's image, so tasks are found by input.
A register task is kind "register" (kind is a plain string column: no constraint to change).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER most things in place (a no-op wrapper on Postgres).
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("name", sa.String(length=120), nullable=True))
        batch.add_column(sa.Column("source_task", sa.Uuid(), nullable=True))
        batch.create_index("ix_tasks_input_key", ["input_key"])


def downgrade() -> None:
    # Register tasks cannot be read by an older version: they go with the downgrade.
    op.execute("DELETE FROM tasks WHERE kind = 'register'")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_input_key")
        batch.drop_column("source_task")
        batch.drop_column("name")
