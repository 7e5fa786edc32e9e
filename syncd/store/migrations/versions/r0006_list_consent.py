"""Consent per list (DESIGN §9).

- ``membership.state``: ``active``, or ``unsubscribed`` when the person left that list only
  (``store.models.Membership``). Existing memberships start ``active``: until now a per-list
  opt-out could only be kept as the contact's own status, which stays as it is.
- ``stage_remote.opted_out_elsewhere`` / ``stage_diff.opted_out_elsewhere``: the export shows
  an opt-out of the contact from another list (``providers.base.RemoteContact``).

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
    op.add_column(
        "stage_remote",
        sa.Column("opted_out_elsewhere", sa.Boolean(), nullable=False, server_default="0"),
    )
    op.add_column("stage_diff", sa.Column("opted_out_elsewhere", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("membership") as batch:
        batch.drop_column("state")
    for table in ("stage_remote", "stage_diff"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("opted_out_elsewhere")
