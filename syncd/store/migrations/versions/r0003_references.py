"""Stable contact references and the journal of writes whose answer was not read.

- ``contact.ref``: a random id per contact, unique, kept for ever (``reference_field``); rows of
  an older store get one each here.
- ``in_flight``: creates and updates handed to the provider whose answer has not been read.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("contact", sa.Column("ref", sa.String(), nullable=True))
    conn = op.get_bind()
    missing = conn.execute(sa.text("SELECT id FROM contact WHERE ref IS NULL")).scalars().all()
    for start in range(0, len(missing), 10_000):
        conn.execute(
            sa.text("UPDATE contact SET ref = :ref WHERE id = :id"),
            [{"ref": uuid.uuid4().hex, "id": i} for i in missing[start : start + 10_000]],
        )
    op.create_index("ix_contact_ref", "contact", ["ref"], unique=True)
    op.create_table(
        "in_flight",
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("data", sa.String(), nullable=False),
        sa.Column("before", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("target", "key"),
    )


def downgrade() -> None:
    op.drop_table("in_flight")
    op.drop_index("ix_contact_ref", table_name="contact")
    with op.batch_alter_table("contact") as batch:
        batch.drop_column("ref")
