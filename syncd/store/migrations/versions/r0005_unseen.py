"""Local deletes whose absence at the provider is not trusted yet.

- ``base.unseen``: how many complete exports have lacked a key that the local side deleted;
  its base is dropped only once ``reconcile.ABSENCE_EXPORTS`` have (``store.models.Base``).
  Existing rows start at 0.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("base", sa.Column("unseen", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("base") as batch:
        batch.drop_column("unseen")
