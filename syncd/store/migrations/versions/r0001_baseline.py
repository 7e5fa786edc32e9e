"""The schema as it was before migrations: the mirror, runs, inbox ledger, outbox, push jobs.

Stores made before syncd had migrations were created table by table as the code met them, so
they may hold all of these tables, or only the older ones, or miss an index added later. This
revision therefore creates only what is missing; on such a store it adopts what is there (the
equivalent of ``alembic stamp``) and fills the gaps, and on an empty database it creates it all.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

S = sa.String  # syncd keeps text as VARCHAR without a length (SQLModel's default for str)


def _table(name: str, *columns: sa.Column[object] | sa.Constraint, **kw: Any) -> None:
    if not sa.inspect(op.get_bind()).has_table(name):
        op.create_table(name, *columns, **kw)


def _index(name: str, table: str, columns: list[str], unique: bool = False) -> None:
    existing = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(table)}
    if name not in existing:
        op.create_index(name, table, columns, unique=unique)


def upgrade() -> None:
    _table(
        "contact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", S(), nullable=True),
        sa.Column("phone", S(), nullable=True),
        sa.Column("fields", S(), nullable=False),
        sa.Column("tags", S(), nullable=False),
        sa.Column("status", S(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _index("ix_contact_email", "contact", ["email"], unique=True)
    _index("ix_contact_phone", "contact", ["phone"], unique=True)
    _table(
        "membership",
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("list_name", S(), nullable=False),
        sa.ForeignKeyConstraint(["contact_id"], ["contact.id"]),
        sa.PrimaryKeyConstraint("contact_id", "list_name"),
    )
    _index("ix_membership_list_name", "membership", ["list_name"])
    for name in ("base", "stage_local"):
        _table(
            name,
            sa.Column("target", S(), nullable=False),
            sa.Column("key", S(), nullable=False),
            sa.Column("digest", S(), nullable=False),
            sa.Column("data", S(), nullable=False),
            sa.PrimaryKeyConstraint("target", "key"),
        )
    _table(
        "stage_remote",
        sa.Column("target", S(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.Column("digest", S(), nullable=False),
        sa.Column("data", S(), nullable=False),
        sa.Column("raw_status", S(), nullable=False),
        sa.PrimaryKeyConstraint("target", "key"),
    )
    _table(
        "stage_diff",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("target", S(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.Column("local", S(), nullable=True),
        sa.Column("base", S(), nullable=True),
        sa.Column("remote", S(), nullable=True),
        sa.Column("raw_status", S(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    _index("ix_stage_diff_target", "stage_diff", ["target"])
    _table(
        "run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", S(), nullable=False),
        sa.Column("started_at", S(), nullable=False),
        sa.Column("finished_at", S(), nullable=True),
        sa.Column("outcome", S(), nullable=False),
        sa.Column("summary", S(), nullable=False),
        sa.Column("message", S(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _index("ix_run_target", "run", ["target"])
    _table(
        "rejection",
        sa.Column("target", S(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.Column("digest", S(), nullable=False),
        sa.Column("code", S(), nullable=False),
        sa.Column("message", S(), nullable=False),
        sa.Column("retryable", sa.Boolean(), nullable=False),
        sa.Column("at", S(), nullable=False),
        sa.PrimaryKeyConstraint("target", "key"),
    )
    _table(
        "conflict",
        sa.Column("target", S(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.Column("fields", S(), nullable=False),
        sa.Column("local", S(), nullable=True),
        sa.Column("remote", S(), nullable=True),
        sa.Column("base", S(), nullable=True),
        sa.Column("resolution", S(), nullable=True),
        sa.Column("at", S(), nullable=False),
        sa.PrimaryKeyConstraint("target", "key"),
    )
    _table(
        "ingested_file",
        sa.Column("sha256", S(), nullable=False),
        sa.Column("name", S(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("applied_at", S(), nullable=False),
        sa.Column("dest", S(), nullable=False),
        sa.Column("lists", S(), nullable=False),
        sa.Column("report", S(), nullable=False),
        sa.Column("settled_at", S(), nullable=True),
        sa.PrimaryKeyConstraint("sha256"),
    )
    _table(
        "outbox_event",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hour", S(), nullable=False),
        sa.Column("body", S(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sqlite_autoincrement=True,  # a flushed event's number is never reused
    )
    _index("ix_outbox_event_hour", "outbox_event", ["hour"])
    _table(
        "push_job",
        sa.Column("id", S(), nullable=False),
        sa.Column("target", S(), nullable=False),
        sa.Column("state", S(), nullable=False),
        sa.Column("created_at", S(), nullable=False),
        sa.Column("expires_at", S(), nullable=False),
        sa.Column("parts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _index("ix_push_job_target", "push_job", ["target"])
    _table(
        "push_job_part",
        sa.Column("job_id", S(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("file_secret", S(), nullable=False),
        sa.Column("callback_secret", S(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("content_type", S(), nullable=False),
        sa.Column("requestid", S(), nullable=True),
        sa.Column("state", S(), nullable=False),
        sa.Column("result", S(), nullable=False),
        sa.Column("callback_at", S(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "part"),
    )
    _table(
        "push_job_row",
        sa.Column("job_id", S(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.Column("target", S(), nullable=False),
        sa.Column("op", S(), nullable=False),
        sa.Column("base", S(), nullable=True),
        sa.Column("digest", S(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "key"),
    )
    _index("ix_push_job_row_target_key", "push_job_row", ["target", "key"])


def downgrade() -> None:
    for name in (
        "push_job_row",
        "push_job_part",
        "push_job",
        "outbox_event",
        "ingested_file",
        "conflict",
        "rejection",
        "run",
        "stage_diff",
        "stage_remote",
        "stage_local",
        "base",
        "membership",
        "contact",
    ):
        op.drop_table(name)
