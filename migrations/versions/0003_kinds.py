"""Tasks of two kinds (segment an image, fine-tune a model), and a summary of each result.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER most things in place (a no-op wrapper on Postgres).
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="segment"))
        batch.add_column(sa.Column("summary", sa.JSON(), nullable=True))
        batch.create_index("ix_tasks_kind_created_at", ["kind", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_kind_created_at")
        batch.drop_column("summary")
        batch.drop_column("kind")
