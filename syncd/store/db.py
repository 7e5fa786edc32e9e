"""Opening the store: one SQLAlchemy engine per URL, tables created on first use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from syncd.store import models  # registers the tables


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    raw = url.removeprefix("sqlite:///")
    if raw in ("", ":memory:"):
        return None
    return Path(raw)


def open_engine(url: str) -> Engine:
    """Create the engine, the file (owner-only) and the tables."""
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # The store holds the company's audience and consent records: owner-only from birth.
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect_args = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, connect_args=connect_args)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    SQLModel.metadata.create_all(engine)
    upgrade(engine)
    return engine


def upgrade(engine: Engine) -> None:
    """Bring a store made by an older syncd up to the current tables.

    ``create_all`` makes missing tables but never alters an existing one. The one change so far:
    ``contact.ref`` (nullable), added with its unique index and filled with a fresh random
    reference for every contact that has none. Idempotent; a no-op on a current store.
    """
    columns = {c["name"] for c in inspect(engine).get_columns("contact")}
    with engine.begin() as conn:
        if "ref" not in columns:
            conn.execute(text("ALTER TABLE contact ADD COLUMN ref VARCHAR"))
            conn.execute(text("CREATE UNIQUE INDEX IF NOT EXISTS ix_contact_ref ON contact (ref)"))
        missing = conn.execute(text("SELECT id FROM contact WHERE ref IS NULL")).scalars().all()
        if missing:
            conn.execute(
                text("UPDATE contact SET ref = :ref WHERE id = :id"),
                [{"ref": models.new_ref(), "id": i} for i in missing],
            )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One all-or-nothing unit of work: commits on success, rolls back on any error."""
    with Session(engine) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
