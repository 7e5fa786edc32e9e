"""Opening the store: one SQLAlchemy engine per URL, its schema brought to the latest migration.

SQLite (one file, the default) and PostgreSQL (several replicas may share it) run the same
Alembic migrations (``store/migrations``). Opening a store upgrades it: a new database is created
from nothing, an older one gains what later versions added, and one made before syncd had
migrations is adopted as it is (see the first revision).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, create_engine

from syncd.errors import FatalError
from syncd.store.schema import HEAD, MIGRATIONS

#: Seconds a SQLite connection waits for the write lock before "database is locked": long
#: against the longest write transaction of a cycle (one chunk of ``mirror.CHUNK`` rows,
#: milliseconds) and of the inbox (one file), so writers take turns instead of failing.
SQLITE_BUSY_TIMEOUT = 30.0

#: Replicas starting at once against a new PostgreSQL store take turns to migrate it
#: (an arbitrary constant: the key of a transaction-level advisory lock).
_MIGRATION_LOCK = 0x73796E6364


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    raw = url.removeprefix("sqlite:///")
    if raw in ("", ":memory:"):
        return None
    return Path(raw)


def open_engine(url: str) -> Engine:
    """Create the engine, the file (owner-only) and the tables, upgraded to the latest schema."""
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # The store holds the company's audience and consent records: owner-only from birth.
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
    connect_args: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT}
    else:
        options["pool_pre_ping"] = True  # a server restart must not fail the next cycle
    try:
        engine = create_engine(url, connect_args=connect_args, **options)
    except ModuleNotFoundError as exc:
        raise FatalError(
            f"[store] url: the database driver {exc.name!r} is not installed "
            "(for PostgreSQL: pip install 'syncd[postgres]')"
        ) from None
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    upgrade(engine)
    return engine


def upgrade(engine: Engine) -> None:
    """Bring the store's schema to the latest revision (nothing to do is one quick query)."""
    with engine.begin() as conn:
        if _at_head(conn):
            return
        # Alembic is imported only to migrate: every command opens the store, and importing it
        # costs a `syncd run-once` more than a small cycle does
        from alembic import command
        from alembic.config import Config as AlembicConfig

        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            if _at_head(conn):
                return  # another replica migrated it while this one waited
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _at_head(conn: Connection) -> bool:
    """The store is at the newest revision (``schema.HEAD``), read from Alembic's own table."""
    if not inspect(conn).has_table("alembic_version"):
        return False
    current = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    return current == {HEAD}


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
