"""SQL sources (DESIGN §9, sources are readers): each row's fingerprint as last read, and the
last read of each source.

- ``source_row``: per source and key, the fingerprint the next read is diffed against.
- ``source_run``: per source, the last read's time, counts, error and cursor.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

S = sa.String


def upgrade() -> None:
    op.create_table(
        "source_row",
        sa.Column("source", S(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.Column("fingerprint", S(), nullable=False),
        sa.PrimaryKeyConstraint("source", "key"),
    )
    op.create_table(
        "source_run",
        sa.Column("source", S(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("last_read_at", sa.Float(), nullable=True),
        sa.Column("last_success_at", sa.Float(), nullable=True),
        sa.Column("last_full_at", sa.Float(), nullable=True),
        sa.Column("cursor", S(), nullable=True),
        sa.Column("mode", S(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("error", S(), nullable=False),
        sa.PrimaryKeyConstraint("source"),
    )


def downgrade() -> None:
    op.drop_table("source_run")
    op.drop_table("source_row")
