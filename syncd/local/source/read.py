"""Reading a ``[[source]]``: its query, read-only, in one transaction, streamed, within a time.

``read_source`` yields one ``SourceRecord`` per result row, in the order the database returns
them, and raises ``SourceReadFailed`` (having yielded part of the rows, perhaps) when the query
fails, the connection drops or ``timeout`` passes: the caller applies nothing until the last row
is in (``syncd.local.source.pull``).

Per database
------------
- PostgreSQL: ``REPEATABLE READ`` and ``READ ONLY`` (one snapshot for the whole read; a query
  that writes is refused by the server), ``statement_timeout`` set for the transaction, rows
  through a server-side cursor (``stream_results``), a batch at a time.
- SQLite: ``PRAGMA query_only`` (writes refused), the read inside ``BEGIN`` ... ``ROLLBACK`` (one
  snapshot), and a progress handler that interrupts the query once ``timeout`` has passed.
- MySQL / MariaDB (``mysql+pymysql://``, documented, not tested here): ``REPEATABLE READ``,
  ``SET TRANSACTION READ ONLY`` and ``max_execution_time``, rows through an unbuffered cursor.
- Every database: the deadline is checked between rows too, so a slow stream ends as well.

Values
------
A row becomes the values a contact file's record would hold (``syncd.local.ingest.read``):
column names as the query names them, the reserved ones (``email``, ``phone``, ``tags``,
``lists``, ``unsubscribed_lists``, ``status``, ``delete``) folded to lower case; numbers,
text, booleans and NULL as they are; a whole ``Decimal`` as an integer, another as its text;
dates and times in ISO 8601; a UUID as its text; an array (PostgreSQL) as a list; binary data
makes the row bad. Consent: a ``status`` column is read like a file's; an ``unsubscribed``
column (a boolean, 0/1, or true/false/yes/no text) is consent as a flag: true means status
``unsubscribed``, false or NULL says nothing. A status ``active`` is never taken from a source
(see ``syncd.local.source``), so neither spelling can re-subscribe anyone.
"""

from __future__ import annotations

import datetime as dt
import decimal
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL, create_engine, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from syncd.config import SourceConfig
from syncd.errors import SourceReadFailed
from syncd.local.ingest.check import flag
from syncd.local.ingest.read import RESERVED
from syncd.logs import redact, register_secret

BATCH = 1000  # rows fetched per round trip from a server-side cursor
_CONSENT_COLUMN = "unsubscribed"
# a file's yes/no words and the one-letter ones a database's boolean may be written as
_FLAG_WORDS = (
    frozenset({"1", "true", "yes", "t", "y"}),
    frozenset({"", "0", "false", "no", "f", "n"}),
)
_SUBQUERY = "syncd_source"


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One result row as contact-file values."""

    line: int  # the row's position in the result, from 1
    values: Mapping[str, Any]
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Shape:
    """The result's columns: as the query names them, as contact-file columns, and where the
    key and the cursor are."""

    names: tuple[str, ...]
    columns: tuple[str, ...]
    key_at: int
    cursor_at: int | None

    def record(self, line: int, row: Sequence[Any]) -> SourceRecord:
        """The row as a contact file's record would hold it (conversions: module docstring)."""
        return _record(line, self.columns, row)


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows as the database driver returns them, the first one at ``first_line``."""

    shape: Shape
    first_line: int
    rows: Sequence[Sequence[Any]]


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() > self.at


def register_url(source: SourceConfig) -> None:
    """Keep the source's URL and its password out of every log line."""
    url = source.url.get_secret_value()
    register_secret(url)
    password = make_url(url).password
    if password:
        register_secret(str(password))


def masked_url(source: SourceConfig) -> str:
    """Where the source reads, fit to show: the URL without user, password or query options
    (``postgresql+psycopg://db.internal:5432/app``)."""
    url = make_url(source.url.get_secret_value())
    shown = URL.create(url.drivername, host=url.host, port=url.port, database=url.database)
    return shown.render_as_string(hide_password=True)


def statement(source: SourceConfig, dialect_quote: Any, since: bool) -> str:
    """The SQL run: the query itself, or (``since``) its rows from the cursor value on."""
    query = source.query.strip().rstrip(";")
    if not since or source.cursor_column is None:
        return query
    column = dialect_quote(source.cursor_column)
    return f"SELECT * FROM ({query}) AS {_SUBQUERY} WHERE {_SUBQUERY}.{column} >= :since"


def read_source(source: SourceConfig, since: Any = None) -> Iterator[Batch]:
    """Stream the source's rows in batches (``since``: only those with the cursor column at or
    past it). Rows stay as the driver returns them until ``Shape.record`` converts one: an
    unchanged row is never converted."""
    register_url(source)
    deadline = _Deadline(source.timeout)
    try:
        engine = create_engine(source.url.get_secret_value(), poolclass=NullPool)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise SourceReadFailed(_why(source, exc)) from None
    try:
        with engine.connect() as conn:
            yield from _read(conn, source, since, deadline)
    except SourceReadFailed:
        raise
    except SQLAlchemyError as exc:
        if deadline.passed():
            raise SourceReadFailed(_timed_out(source)) from None
        raise SourceReadFailed(_why(source, exc)) from None
    finally:
        engine.dispose()


def _read(
    conn: Connection, source: SourceConfig, since: Any, deadline: _Deadline
) -> Iterator[Batch]:
    dialect = conn.dialect.name
    options: dict[str, Any] = {"stream_results": True, "yield_per": BATCH}
    if dialect == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    elif dialect == "mysql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
        conn.exec_driver_sql(f"SET SESSION max_execution_time = {int(source.timeout * 1000)}")
    elif dialect == "sqlite":
        conn.exec_driver_sql("PRAGMA query_only = ON")
        raw = conn.connection.driver_connection
        if raw is not None:
            # Any non-zero answer interrupts the statement: the query's own time is bounded too.
            raw.set_progress_handler(lambda: int(deadline.passed()), 10_000)
    sql = statement(source, conn.dialect.identifier_preparer.quote, since is not None)
    params = {} if since is None else {"since": since}
    if conn.in_transaction():
        conn.commit()  # the session settings above began one; the read gets its own
    trans = conn.begin()
    try:
        if dialect == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(source.timeout * 1000)}")
        elif dialect == "sqlite":
            conn.exec_driver_sql("BEGIN")  # pysqlite opens none for a SELECT by itself
        result = conn.execution_options(**options).execute(text(sql), params)
        shape = _shape(source, tuple(result.keys()))
        line = 1
        while rows := result.fetchmany(BATCH):
            if deadline.passed():
                raise SourceReadFailed(_timed_out(source))
            yield Batch(shape, line, rows)
            line += len(rows)
        if deadline.passed():
            raise SourceReadFailed(_timed_out(source))
    finally:
        # A read-only read has nothing to commit; the rollback also ends SQLite's BEGIN.
        trans.rollback()


def _shape(source: SourceConfig, names: tuple[str, ...]) -> Shape:
    columns = tuple(_column_name(n) for n in names)
    if source.key not in columns:
        raise SourceReadFailed(
            f"source {source.name}: the query returns no {source.key!r} column (its key); "
            f"it returns {', '.join(names) or 'no columns'}"
        )
    cursor_at = None
    if source.cursor_column is not None:
        if source.cursor_column not in names:
            raise SourceReadFailed(
                f"source {source.name}: the query returns no column {source.cursor_column!r} "
                "(cursor_column)"
            )
        cursor_at = names.index(source.cursor_column)
    return Shape(names, columns, columns.index(source.key), cursor_at)


def _column_name(name: str) -> str:
    lowered = name.lower()
    return lowered if lowered in RESERVED or lowered == _CONSENT_COLUMN else name


def _record(line: int, columns: Sequence[str], row: Sequence[Any]) -> SourceRecord:
    values: dict[str, Any] = {}
    problem = None
    for name, raw in zip(columns, row, strict=True):
        try:
            values[name] = _value(raw)
        except ValueError as exc:
            problem = f"column {name}: {exc}"
    if _CONSENT_COLUMN in values:
        given = values.pop(_CONSENT_COLUMN)
        unsubscribed = flag(given, _FLAG_WORDS)
        if unsubscribed is None:
            refusal = f"unsubscribed must be a boolean (true/false, 1/0), not {given!r}"
            problem = problem or refusal[:200]
        elif unsubscribed and values.get("status") in (None, "", "active"):
            values["status"] = "unsubscribed"
    if isinstance(values.get("status"), str) and values["status"].strip().lower() == "active":
        values["status"] = None  # a source never re-subscribes (module docstring)
    return SourceRecord(line, values, problem)


def _value(raw: Any) -> Any:
    if raw is None or isinstance(raw, str | bool | int | float):
        return raw
    if isinstance(raw, decimal.Decimal):
        if raw.is_finite() and raw == raw.to_integral_value():
            return int(raw)
        return str(raw)
    if isinstance(raw, dt.datetime | dt.date | dt.time):
        return raw.isoformat()
    if isinstance(raw, uuid.UUID):
        return str(raw)
    if isinstance(raw, list | tuple):
        return [_value(item) for item in raw]
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, bytes | bytearray | memoryview):
        raise ValueError("holds binary data; select it as text")
    return str(raw)


def _why(source: SourceConfig, exc: BaseException) -> str:
    """The reason a read failed, naming the source and never its URL or password."""
    orig = getattr(exc, "orig", None) or exc
    reason = " ".join(str(orig).split())  # the driver's message, minus SQLAlchemy's SQL echo
    reason = reason.replace(source.url.get_secret_value(), masked_url(source))
    return f"source {source.name}: the read failed ({type(orig).__name__}: {redact(reason)[:500]})"


def _timed_out(source: SourceConfig) -> str:
    return (
        f"source {source.name}: the read took longer than its timeout ({source.timeout:g} s); "
        "nothing was applied"
    )
