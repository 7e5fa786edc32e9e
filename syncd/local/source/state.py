"""What the mirror remembers of each ``[[source]]``: every row's fingerprint as last applied
(``source_row``) and the last read (``source_run``), both declared in ``syncd.store.models``.

The fingerprints are what a read is diffed against; they change only in the transaction that
applies the read, so a failed read leaves the next one the same diff to find.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlmodel import col

from syncd.store.models import SourceRow, SourceRun

CHUNK = 500  # keys per IN (...) list and rows per bulk insert

_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int = CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class LastRead:
    """The ``source_run`` row as a value (all defaults for a source never read)."""

    generation: int = 0
    last_read_at: float | None = None
    last_success_at: float | None = None
    last_full_at: float | None = None
    cursor: Any = None  # {"kind": ..., "value": ...} as ``syncd.local.source.cursor`` writes it
    mode: str = ""
    rows: int = 0
    created: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    rejected: int = 0
    seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def last_read(conn: Connection, source: str) -> LastRead:
    table = SourceRun.__table__  # type: ignore[attr-defined]
    row = conn.execute(select(table).where(table.c.source == source)).first()
    if row is None:
        return LastRead()
    values = {name: row._mapping[name] for name in LastRead.__slots__}
    values["cursor"] = None if values["cursor"] is None else json.loads(values["cursor"])
    return LastRead(**values)


def save_read(conn: Connection, source: str, read: LastRead) -> None:
    """Write the ``source_run`` row (inserted the first time)."""
    values = read.to_dict()
    values["cursor"] = None if read.cursor is None else json.dumps(read.cursor)
    done = conn.execute(
        update(SourceRun).where(col(SourceRun.source) == source).values(**values)
    ).rowcount
    if not done:
        conn.execute(insert(SourceRun).values(source=source, **values))


def fingerprints(
    conn: Connection, source: str, keys: Sequence[str] | None = None
) -> dict[str, str]:
    """Key -> fingerprint of every row last applied (``keys``: of these keys only)."""
    base = select(col(SourceRow.key), col(SourceRow.fingerprint)).where(
        col(SourceRow.source) == source
    )
    if keys is None:
        return {key: fp for key, fp in conn.execute(base).all()}  # fetchall: fast for a million
    found: dict[str, str] = {}
    for chunk in chunks(sorted(set(keys))):
        found.update(
            {key: fp for key, fp in conn.execute(base.where(col(SourceRow.key).in_(chunk)))}
        )
    return found


def store_fingerprints(
    conn: Connection, source: str, applied: dict[str, str], gone: Iterable[str]
) -> None:
    """Replace the fingerprints of ``applied`` keys and forget the ``gone`` ones."""
    stale = sorted(set(applied) | set(gone))
    for chunk in chunks(stale):
        conn.execute(
            delete(SourceRow).where(col(SourceRow.source) == source, col(SourceRow.key).in_(chunk))
        )
    rows = [{"source": source, "key": k, "fingerprint": fp} for k, fp in applied.items()]
    for part in chunks(rows, 5000):
        conn.execute(insert(SourceRow), list(part))


def forget(conn: Connection, source: str) -> None:
    """Drop every fingerprint of the source (its next read is a first read)."""
    conn.execute(delete(SourceRow).where(col(SourceRow.source) == source))
