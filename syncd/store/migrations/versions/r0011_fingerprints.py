"""Each side as last read, so that a cycle with nothing new reads and compares nearly nothing.

- ``local_seen``: per contact and target, the projection a cycle made of it. Triggers delete a
  contact's rows whenever the contact or one of its memberships is written, by whatever code (or
  person at a SQL prompt): a row that is there is still right, a member without one is projected
  again.
- ``remote_seen``: per target and key, the export row last read, with a fingerprint of its raw
  cells: a row read again with the same fingerprint is not parsed again.
- ``export_order``: per target, the fingerprints of the last complete export in its order, as
  one blob: the next export is checked against it row by row, and the store is asked only
  about rows that are not where they were.
- ``seen_salt``: per target and side, what else shaped those rows (field mapping, capabilities,
  the reading code's version); when it changes, that side's rows go.
- ``dirty``: the keys whose local, base or remote row was written since the last comparison,
  filled by triggers on the three tables. Only these keys can differ: a cycle compares them, not
  the whole list, and clears those found equal.
- ``stage_new`` / ``stage_gone``: a cycle's scratch for the export rows that are new and the
  fingerprints no longer there, folded into ``remote_seen`` once the export has completed.
- ``stage_local`` / ``stage_remote`` go: ``local_seen`` and ``remote_seen`` are the two sides.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

S = sa.String

# SQLite: one trigger per table and event; nested triggers fire (only recursion into the same
# trigger is off). No "INSERT OR IGNORE" in a body: the outer statement's conflict handling
# (an upsert's) would replace it, so a key already dirty is skipped by its own condition.
SQLITE_TRIGGERS = [
    *(
        f"CREATE TRIGGER {table}_{event.lower()}_forget AFTER {event} ON {table} FOR EACH ROW "
        f"BEGIN DELETE FROM local_seen WHERE contact_id = {row}.{column}; END"
        for table, column in (("contact", "id"), ("membership", "contact_id"))
        for event, row in (("INSERT", "NEW"), ("UPDATE", "OLD"), ("DELETE", "OLD"))
    ),
    *(
        f"CREATE TRIGGER {table}_{event.lower()}_dirty AFTER {event} ON {table} FOR EACH ROW BEGIN "
        + " ".join(
            f"INSERT INTO dirty (target, key) SELECT {row}.target, {row}.key "
            f"WHERE {row}.key IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM dirty WHERE target = {row}.target AND key = {row}.key);"
            for row in rows
        )
        + " END"
        for table in ("base", "local_seen", "remote_seen")
        for event, rows in (("INSERT", ("NEW",)), ("UPDATE", ("OLD", "NEW")), ("DELETE", ("OLD",)))
    ),
]
# PostgreSQL: a function per purpose, one trigger per table for every event.
POSTGRES = [
    """
    CREATE FUNCTION syncd_forget_local() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_TABLE_NAME = 'contact' THEN
        DELETE FROM local_seen WHERE contact_id = COALESCE(OLD.id, NEW.id);
        IF TG_OP = 'UPDATE' THEN DELETE FROM local_seen WHERE contact_id = NEW.id; END IF;
      ELSE
        IF TG_OP <> 'INSERT' THEN DELETE FROM local_seen WHERE contact_id = OLD.contact_id; END IF;
        IF TG_OP <> 'DELETE' THEN DELETE FROM local_seen WHERE contact_id = NEW.contact_id; END IF;
      END IF;
      RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION syncd_mark_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP <> 'INSERT' AND OLD.key IS NOT NULL THEN
        INSERT INTO dirty (target, key) VALUES (OLD.target, OLD.key) ON CONFLICT DO NOTHING;
      END IF;
      IF TG_OP <> 'DELETE' AND NEW.key IS NOT NULL THEN
        INSERT INTO dirty (target, key) VALUES (NEW.target, NEW.key) ON CONFLICT DO NOTHING;
      END IF;
      RETURN NULL;
    END $$
    """,
    *(
        f"CREATE TRIGGER {table}_forget AFTER INSERT OR UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION syncd_forget_local()"
        for table in ("contact", "membership")
    ),
    *(
        f"CREATE TRIGGER {table}_dirty AFTER INSERT OR UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION syncd_mark_dirty()"
        for table in ("base", "local_seen", "remote_seen")
    ),
]


def _trigger_names() -> list[str]:
    events = ("insert", "update", "delete")
    names = [f"{t}_{e}_forget" for t in ("contact", "membership") for e in events]
    return names + [f"{t}_{e}_dirty" for t in ("base", "local_seen", "remote_seen") for e in events]


def upgrade() -> None:
    op.create_table(
        "local_seen",
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("target", S(), nullable=False),
        sa.Column("key", S(), nullable=True),
        sa.Column("digest", S(), nullable=True),
        sa.Column("data", S(), nullable=True),
        sa.PrimaryKeyConstraint("contact_id", "target"),
    )
    op.create_index("ix_local_seen_target_key", "local_seen", ["target", "key"])
    op.create_table(
        "remote_seen",
        sa.Column("target", S(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.Column("fp", sa.BigInteger(), nullable=False),
        sa.Column("digest", S(), nullable=False),
        sa.Column("data", S(), nullable=False),
        sa.Column("raw_status", S(), nullable=False),
        sa.Column("opted_out_elsewhere", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("target", "key"),
    )
    op.create_index("ix_remote_seen_target_fp", "remote_seen", ["target", "fp"])
    op.create_table(
        "export_order",
        sa.Column("target", S(), nullable=False),
        sa.Column("fps", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("target"),
    )
    op.create_table(
        "seen_salt",
        sa.Column("target", S(), nullable=False),
        sa.Column("side", S(), nullable=False),
        sa.Column("salt", S(), nullable=False),
        sa.PrimaryKeyConstraint("target", "side"),
    )
    op.create_table(
        "dirty",
        sa.Column("target", S(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.PrimaryKeyConstraint("target", "key"),
    )
    op.create_table(
        "stage_new",
        sa.Column("target", S(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("key", S(), nullable=False),
        sa.Column("fp", sa.BigInteger(), nullable=False),
        sa.Column("digest", S(), nullable=False),
        sa.Column("data", S(), nullable=False),
        sa.Column("raw_status", S(), nullable=False),
        sa.Column("opted_out_elsewhere", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("target", "seq"),
    )
    op.create_table(
        "stage_gone",
        sa.Column("target", S(), nullable=False),
        sa.Column("fp", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("target", "fp"),
    )
    op.drop_table("stage_local")
    op.drop_table("stage_remote")
    # the keys whose local delete waits for more exports: compared every cycle, found by index
    op.create_index(
        "ix_base_unseen",
        "base",
        ["target", "key"],
        sqlite_where=sa.text("unseen > 0"),
        postgresql_where=sa.text("unseen > 0"),
    )
    # every key of every base is compared once more by the first cycle after the upgrade
    op.execute("INSERT INTO dirty (target, key) SELECT target, key FROM base")
    for statement in POSTGRES if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("contact", "membership"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_forget ON {table}")
        for table in ("base", "local_seen", "remote_seen"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_dirty ON {table}")
        op.execute("DROP FUNCTION IF EXISTS syncd_forget_local()")
        op.execute("DROP FUNCTION IF EXISTS syncd_mark_dirty()")
    else:
        for name in _trigger_names():
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    for side, extra in (
        ("stage_local", []),
        (
            "stage_remote",
            [
                sa.Column("raw_status", S(), nullable=False),
                sa.Column("opted_out_elsewhere", sa.Boolean(), nullable=False, server_default="0"),
            ],
        ),
    ):
        op.create_table(
            side,
            sa.Column("target", S(), nullable=False),
            sa.Column("key", S(), nullable=False),
            sa.Column("digest", S(), nullable=False),
            sa.Column("data", S(), nullable=False),
            *extra,
            sa.PrimaryKeyConstraint("target", "key"),
        )
    op.drop_index("ix_base_unseen", "base")
    for table in ("stage_gone", "stage_new", "dirty", "seen_salt", "export_order"):
        op.drop_table(table)
    op.drop_index("ix_remote_seen_target_fp", "remote_seen")
    op.drop_table("remote_seen")
    op.drop_index("ix_local_seen_target_key", "local_seen")
    op.drop_table("local_seen")
