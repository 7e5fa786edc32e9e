"""Webhook deliveries and the ingest API's idempotency keys (DESIGN §9, sinks delivered).

- ``webhook_delivery``: one row per change event and matching ``[[webhook]]``, recorded with the
  event; deleted on a 2xx answer, kept as ``dead`` once retries are exhausted.
- ``webhook_endpoint``: endpoints that answered 410 Gone.
- ``ingest_request``: ``POST /v1/contacts`` answers by ``Idempotency-Key``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

S = sa.String


def upgrade() -> None:
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("webhook", S(), nullable=False),
        sa.Column("event_id", S(), nullable=False),
        sa.Column("event_type", S(), nullable=False),
        sa.Column("target", S(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.Column("body", S(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("state", S(), nullable=False),
        sa.Column("claimed_by", S(), nullable=True),
        sa.Column("claimed_until", sa.Float(), nullable=True),
        sa.Column("last_error", S(), nullable=False),
        sa.Column("dead_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_webhook_delivery_due", "webhook_delivery", ["state", "next_attempt_at"])
    op.create_index(
        "ix_webhook_delivery_contact", "webhook_delivery", ["webhook", "target", "key", "id"]
    )
    op.create_index("ix_webhook_delivery_event_id", "webhook_delivery", ["event_id"])
    op.create_table(
        "webhook_endpoint",
        sa.Column("name", S(), nullable=False),
        sa.Column("url", S(), nullable=False),
        sa.Column("disabled_at", sa.Float(), nullable=False),
        sa.Column("reason", S(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "ingest_request",
        sa.Column("key", S(), nullable=False),
        sa.Column("body_sha256", S(), nullable=False),
        sa.Column("answer", S(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_ingest_request_created_at", "ingest_request", ["created_at"])


def downgrade() -> None:
    op.drop_table("ingest_request")
    op.drop_table("webhook_endpoint")
    op.drop_table("webhook_delivery")
