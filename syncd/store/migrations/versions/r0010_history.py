"""Per-key history of cycles, for ``syncd explain``.

- ``history``: one row per key a cycle wrote or held (its case, what was sent and the answer),
  and per contact a local write changed (which file or request).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

S = sa.String


def upgrade() -> None:
    op.create_table(
        "history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", S(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("target", S(), nullable=True),
        sa.Column("key", S(), nullable=False),
        sa.Column("case", S(), nullable=False),
        sa.Column("sent", S(), nullable=True),
        sa.Column("outcome", S(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_history_at", "history", ["at"])
    op.create_index("ix_history_key", "history", ["key", "id"])


def downgrade() -> None:
    op.drop_table("history")
