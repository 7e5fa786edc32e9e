"""Provider webhooks: each target's path token, and the keys its webhooks named.

- ``hook_token``: the unguessable segment of ``/hooks/{target}/{token}``, one per target.
- ``hook_queue``: keys to re-read (or opt out), one row per (target, key, kind), so a webhook
  delivered twice queues its key once.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

S = sa.String


def upgrade() -> None:
    op.create_table(
        "hook_token",
        sa.Column("target", S(), nullable=False),
        sa.Column("token", S(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("target"),
    )
    op.create_table(
        "hook_queue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", S(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.Column("kind", S(), nullable=False),
        sa.Column("queued_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ux_hook_queue_key", "hook_queue", ["target", "key", "kind"], unique=True)


def downgrade() -> None:
    op.drop_table("hook_queue")
    op.drop_table("hook_token")
