"""Contacts syncd took off a list while the provider keeps them in the account.

- ``off_list``: their remote state when they left, so that a return to the list removes the
  tags dropped locally meanwhile (``store.models.OffList``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "off_list",
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("data", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("target", "key"),
    )


def downgrade() -> None:
    op.drop_table("off_list")
