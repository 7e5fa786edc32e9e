"""Every table of the store, and the Alembic migrations that create and upgrade them.

The tables are declared beside the code that owns them (``store/models.py``, ``inbox/ledger.py``,
``outbox.py``); ``metadata()`` gathers them all, so that the migrations can be compared with the
models (``tests/store/test_migrations.py`` fails when a model changes without a migration).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData
from sqlmodel import SQLModel

MIGRATIONS = Path(__file__).with_name("migrations")


def metadata() -> MetaData:
    # Imported here, not at the top: inbox and outbox import the store themselves.
    from syncd.local import outbox  # noqa: F401 - registers outbox_event
    from syncd.local.inbox import ledger  # noqa: F401 - registers ingested_file
    from syncd.store import models  # noqa: F401 - registers the mirror's tables

    return SQLModel.metadata
