"""Every table of the store, and the Alembic migrations that create and upgrade them.

The tables are all declared in ``syncd.store.models``; ``metadata()`` is the schema they make
together, which the migrations are compared with (``tests/store/test_migrations.py`` fails when a
model changes without a migration).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData
from sqlmodel import SQLModel

import syncd.store.models  # noqa: F401 - declares every table on SQLModel.metadata

MIGRATIONS = Path(__file__).with_name("migrations")
#: the newest migration's revision: a store at it is opened without loading Alembic
#: (``tests/store/test_migrations.py`` checks that it is the head Alembic finds)
HEAD = "0012"


def metadata() -> MetaData:
    """Every table of the store."""
    return SQLModel.metadata
