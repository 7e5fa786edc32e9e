"""Consent per list (DESIGN §9).

- ``membership.state``: ``active``, or ``unsubscribed`` when the person left that list only
  (``store.models.Membership``). Existing memberships start ``active``: until now a per-list
  opt-out could only be kept as the contact's own status, which stays as it is.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "membership",
        sa.Column("state", sa.String(), nullable=False, server_default="active"),
    )


def downgrade() -> None:
    with op.batch_alter_table("membership") as batch:
        batch.drop_column("state")
