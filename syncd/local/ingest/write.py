"""Writing checked rows into the mirror: one transaction, in chunks, with bulk statements.

``apply_stream`` takes what ``syncd.local.ingest.check`` makes of a file, row by row as it is
read, and writes it all or (on any error, a read error late in the file included) none: one
transaction whatever the file's size. Memory does not grow with the file: rows are taken
``CHUNK_SIZE`` at a time; the keys the file has claimed (a key may appear once per file) are
read from the contacts it created and a scratch table of that transaction, not kept in memory
(``_Claims``); at most ``MAX_LISTED_REJECTIONS`` rejections are listed in the report and the
others are only counted. ``apply`` is the same for
``ContactChange`` values built in code. ``IngestReport`` counts what each row did.

What a row does
---------------
- Matching: by email when the row has one and a contact holds it, otherwise by phone. If the
  email and the phone belong to two different contacts the row is rejected. Tombstones match too.
- Identity: a row with both email and phone sets both, so a new email on a contact found by
  phone is an email change and the contact keeps its consent (DESIGN §8). An empty email or phone
  never removes one.
- Fields: only the columns a row carries change; an empty value (CSV) or null/"" (JSON) removes
  that field. Values are stored as text (JSON numbers and booleans as their JSON spelling).
- ``tags`` present: replaces the tag set.
- Lists and consent per list (DESIGN §9): each membership has a state, ``active`` or
  ``unsubscribed`` (the person left that list only; the contact's own ``status`` covers every
  list at once).

  - ``lists`` present: replaces the memberships. A list the contact stays on keeps its state; a
    list it joins starts ``active``.
  - ``unsubscribed_lists`` present: replaces the set of lists the contact has left. Each one
    named becomes a membership in state ``unsubscribed``, joined if the contact was not on it
    (a person who left a list is still recorded on it, as the providers keep them); every other
    membership becomes ``active``, an explicit local decision like ``status=active`` on a live
    contact (a cycle still never pushes it over an opt-out made at the provider, DESIGN rule 3).
  - Both present: the memberships are ``lists`` and ``unsubscribed_lists`` together, the states
    those of ``unsubscribed_lists``; a name in both is on the list, unsubscribed.
  - Neither present: memberships and their states are unchanged.
- ``status`` present: sets it, except that a contact revived from a tombstone keeps an opted-out
  status (consent only moves towards opted-out automatically). ``status=active`` on a live
  contact is an explicit local decision and does set it.
- ``delete``: the contact becomes a tombstone: ``deleted``, no memberships (whatever their state),
  no fields or tags, but identity and status kept so an opt-out survives re-creation. Other
  columns of a delete row are checked but not applied. Deleting an unknown or already deleted
  contact counts as unchanged.
- Revival: a non-delete row for a tombstone un-deletes it, starting from its identity and status
  only; it counts as created.
- Order: rows apply one after another in file order. A key may appear once per file: a second
  row with an email or phone already used by an earlier row is rejected, naming that line.
- Counts: every row read is exactly one of created, updated, deleted, unchanged or rejected.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from sqlalchemy.engine import Connection, Engine

from syncd.collector import bulk_work
from syncd.core.jsontext import flat_encoder
from syncd.core.projection import is_opted_out
from syncd.errors import IngestError
from syncd.local.ingest.check import Checked, Claim, ContactChange, Rejection, settle_claims
from syncd.store import history, mirror
from syncd.store.models import new_refs

log = logging.getLogger("syncd.local.ingest")

#: SQLite's page cache while a file applies (KiB): bounded, so memory stays flat (see Sql).
#: At a million rows 64 MiB took 2 s less CPU than 32 MiB, for a peak RSS of 161 MiB where
#: 32 MiB gave 122 (96 MiB: 201, over the 200 MB aim).
SQLITE_CACHE_KIB = 64 * 1024
CHUNK_SIZE = 1000  # rows per chunk: keys looked up per IN query, rows written per statement
#: Rejections listed in a report; a file with more has the rest counted (``rejected_unlisted``)
#: so that a file of a million bad rows is refused in bounded memory too.
MAX_LISTED_REJECTIONS = 10_000

Outcome = Literal["created", "updated", "deleted", "unchanged"]
#: Called after each chunk with the rows read so far and the rows applied so far.
Progress = Callable[[int, int], None]


#: The one text for a JSON value: equal content gives equal text (and equal digests). What
#: ingestion stores (custom fields of text, a sorted list of tag names) goes straight to the C
#: encoder, at a fraction of ``JSONEncoder.encode``'s cost per call.
canonical_json: Callable[[Any], str] = flat_encoder(sort_keys=True)


@dataclass(slots=True)
class IngestReport:
    """What one file did. Every record read is counted exactly once: applied or rejected."""

    file: str = ""
    rows: int = 0  # records read (blank lines are not records)
    created: int = 0  # includes contacts revived from a tombstone
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    rejected_unlisted: int = 0  # rejected rows beyond MAX_LISTED_REJECTIONS, only counted
    # The local lists whose members (or their states) the file may have changed.
    lists: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def applied(self) -> int:
        return self.created + self.updated + self.deleted + self.unchanged

    def count(self, outcome: Outcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def reject(self, rejection: Rejection) -> None:
        if len(self.rejected) < MAX_LISTED_REJECTIONS:
            self.rejected.append(rejection)
        else:
            self.rejected_unlisted += 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: the counts at the top level, rejections by line."""
        data: dict[str, Any] = {
            "file": self.file,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "rejected": [r.to_dict() for r in self.rejected],
        }
        if self.rejected_unlisted:
            data["rejected_unlisted"] = self.rejected_unlisted
        return data


def apply(
    engine: Engine,
    changes: Sequence[ContactChange],
    *,
    chunk_size: int = CHUNK_SIZE,
    source: str = "ingest",
) -> IngestReport:
    """Apply every change in one transaction: all of them, or (on any error) none.

    Rows that can only be refused against the mirror (email and phone of two different
    contacts) come back in ``rejected``. ``engine`` may be a ``Connection`` inside a
    transaction: the changes then join it.
    """
    return apply_stream(engine, changes, chunk_size=chunk_size, source=source)


#: Called after each chunk is written, inside the transaction, with that chunk's applied
#: changes and its rejections (all of them, listed in the report or not).
AfterChunk = Callable[["Sql", list[ContactChange], list[Rejection]], None]


def apply_stream(
    bind: Engine | Connection,
    items: Iterable[Checked | ContactChange],
    *,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
    after_chunk: AfterChunk | None = None,
    source: str = "ingest",
) -> IngestReport:
    """Apply checked rows (``check.checked``) or changes, as they come, in one transaction.

    Each contact a row changed gets a history row naming ``source`` (the file, the request;
    ``syncd explain``), in the same transaction.

    With an ``Engine`` the transaction is this call's; with a ``Connection`` it is the caller's
    (nothing is committed here, and the caller may add to it). An ``IngestError`` from reading
    propagates and the transaction rolls back; any other exception from ``items`` is raised
    as an ``IngestError`` too ("could not be read").

    The contact table is never loaded whole: each chunk of rows looks up only the contacts its
    keys name, then writes back with a few bulk statements.
    """
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            return apply_stream(
                conn,
                items,
                chunk_size=chunk_size,
                progress=progress,
                after_chunk=after_chunk,
                source=source,
            )
    mirror.take_write_turn(bind)  # a cycle re-reading contacts it will write waits
    sql = Sql(bind)
    with (
        bulk_work,  # the collector: each chunk's rows would be walked over and over
        sql.bigger_cache(),
        sql.forgetting_in_bulk(),
    ):
        return _apply_chunks(bind, sql, items, chunk_size, progress, after_chunk, source)


def _apply_chunks(
    conn: Connection,
    sql: Sql,
    items: Iterable[Checked | ContactChange],
    chunk_size: int,
    progress: Progress | None,
    after_chunk: AfterChunk | None,
    source: str,
) -> IngestReport:
    claims = _Claims(sql)
    report = IngestReport()
    steps_of = history.LocalSteps(source)
    for batch in _batches(items, chunk_size):
        # One look-up of the contacts the batch's keys reach serves both the claims of the
        # contacts this file created and the working set.
        found = _contacts_by_key(sql, *_keys_of(batch), _CONTACT_COLUMNS)
        outcomes, new_claims = settle_claims(batch, partial(claims.lines, found))
        changes = [o for o in outcomes if isinstance(o, ContactChange)]
        working = _Chunk.load(sql, found, changes)
        refused: list[Rejection] = []
        steps: list[tuple[Any, ...]] = []
        at = history.now_ms()  # one time for the chunk: its steps commit together
        counts = dict.fromkeys(("created", "updated", "deleted", "unchanged"), 0)
        apply, step = working.apply, steps_of.row  # looked up once, not once a row
        for item in outcomes:
            result = item if isinstance(item, Rejection) else apply(item)
            if isinstance(result, Rejection):
                refused.append(result)
                report.reject(result)
                continue
            counts[result] += 1
            if result != "unchanged" and isinstance(item, ContactChange):
                key = item.email or item.phone or ""  # ContactChange.key, without its call
                steps.append(step(at, key, result, _carried(item), item.line))
        for outcome, count in counts.items():
            setattr(report, outcome, getattr(report, outcome) + count)
        created = working.write(sql)
        sql.insert(history.LOCAL_INSERT_HEAD, steps, history.LOCAL_ROW_VALUES)
        claims.add(new_claims, created)
        report.rows += len(batch)
        report.lists |= working.lists()
        if after_chunk is not None:
            after_chunk(sql, changes, refused)
        if progress is not None:
            progress(report.rows, report.applied)
    claims.drop()
    report.rejected.sort(key=lambda r: r.line)
    return report


def _keys_of(batch: Sequence[Checked | ContactChange]) -> tuple[list[str], list[str]]:
    """The emails and the phones the batch's rows claim or (changes built in code) carry."""
    emails: list[str] = []
    phones: list[str] = []
    for item in batch:
        if isinstance(item, Claim):
            for name, key in item.keys:
                (emails if name == "email" else phones).append(key)
        elif isinstance(item, ContactChange):
            if item.email is not None:
                emails.append(item.email)
            if item.phone is not None:
                phones.append(item.phone)
    return emails, phones


def _carried(change: ContactChange) -> tuple[str, ...]:
    """The columns a row carried, as its history step names them: the fields, then these."""
    carried = tuple(change.fields)
    if change.tags is not None:
        carried += ("tags",)
    if change.lists is not None:
        carried += ("lists",)
    if change.unsubscribed_lists is not None:
        carried += ("unsubscribed_lists",)
    if change.status is not None:
        carried += ("status",)
    return carried


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` ``size`` at a time; a reader's unexpected failure raised as ``IngestError``."""
    source = iter(items)
    while True:
        try:
            batch = list(itertools.islice(source, size))
        except IngestError:
            raise
        except Exception as exc:
            # Reading and checking touch nothing but the file: a failure there is a reader bug
            # the same bytes would hit again, so the file is refused (and set aside by the
            # inbox) rather than retried for ever; the traceback goes to the log.
            log.error("ingest: reading the rows failed", exc_info=exc)
            raise IngestError(f"could not be read: {type(exc).__name__}: {exc}") from exc
        if not batch:
            return
        yield batch


class Sql:
    """Statements straight to the database driver, inside the caller's transaction.

    SQLAlchemy's per-row parameter work is most of a bulk statement's cost at a million rows;
    these statements are plain and portable, written with ``?`` placeholders.
    """

    def __init__(self, conn: Connection) -> None:
        self.postgres = conn.dialect.name == "postgresql"
        self.cursor = conn.connection.cursor()
        self.forget_by_hand = False  # see forgetting_in_bulk

    @contextmanager
    def bigger_cache(self) -> Iterator[None]:
        """SQLite: a page cache of ``SQLITE_CACHE_KIB`` while a file applies, then the usual.

        A big file's rows land all over the contact table's unique indexes (email, phone, a
        random reference); with SQLite's default 2 MB cache most of those pages are evicted and
        read back again, which at a million rows costs more than the inserts themselves.
        """
        if self.postgres:
            yield
            return
        (before,) = self.run("PRAGMA cache_size")[0]
        self.run(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        try:
            yield
        finally:
            self.run(f"PRAGMA cache_size = {int(before)}")

    @contextmanager
    def forgetting_in_bulk(self) -> Iterator[None]:
        """SQLite: the triggers that forget a written contact's ``local_seen`` rows set aside
        while a file applies; each chunk forgets its contacts itself (``forget``).

        A row trigger makes SQLite keep a statement journal for every row written, a copy of
        each page the row touches: at a million rows, most of the cost of the inserts. The
        triggers are dropped and created again inside this transaction, so no other connection
        ever sees them missing, and a rollback restores them with the rest. Only triggers that
        read exactly as ``_FORGET_TRIGGERS`` are set aside; others (a later schema) stay and run.
        """
        if self.postgres:
            yield
            return
        found = dict(
            self.run(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN "
                f"({marks(len(_FORGET_TRIGGERS))})",
                list(_FORGET_TRIGGERS),
            )
        )
        if found != _FORGET_TRIGGERS:
            yield
            return
        for name in found:
            self.run(f"DROP TRIGGER {name}")
        self.forget_by_hand = True
        try:
            yield
        finally:
            self.forget_by_hand = False
            for statement in found.values():
                self.run(statement)

    def forget(self, contact_ids: Iterable[int]) -> None:
        """What the set-aside triggers would have done for these written contacts."""
        if not self.forget_by_hand:
            return
        ids = sorted(set(contact_ids))
        for start in range(0, len(ids), CHUNK_SIZE):
            part = ids[start : start + CHUNK_SIZE]
            self.run(f"DELETE FROM local_seen WHERE contact_id IN ({marks(len(part))})", part)

    def _text(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    def run(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        self.cursor.execute(self._text(statement), tuple(params))
        return list(self.cursor.fetchall()) if self.cursor.description else []

    def many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cursor.executemany(self._text(statement), rows)

    def inserted_ids(
        self, head: str, rows: Sequence[Sequence[Any]], values: str
    ) -> list[int] | None:
        """Run an ``INSERT INTO contact`` of ``rows`` (``insert``); on SQLite, the ids they were
        given, in their order (None: look them up by key, as PostgreSQL does).

        SQLite gives a row of a table without AUTOINCREMENT the largest id plus one (a random
        id only once the largest is 2**63 - 1; https://sqlite.org/autoinc.html), and this
        transaction holds the write lock: when the largest id grew by exactly the number of
        rows, they took the ids after the old largest one, one by one in order. Reading the
        largest id is one step down the table's b-tree; looking the new contacts up by key cost
        a million-row file 1.5 s.
        """
        if self.postgres:
            self.insert(head, rows, values)
            return None
        (before,) = self.run("SELECT max(id) FROM contact")[0]
        self.insert(head, rows, values)
        (after,) = self.run("SELECT max(id) FROM contact")[0]
        first = 1 if before is None else before + 1
        if after is None or after - first + 1 != len(rows):
            return None
        return list(range(first, after + 1))

    def insert(self, head: str, rows: Sequence[Sequence[Any]], values: str = "") -> None:
        """``head`` (``INSERT INTO t (a, b)``) of ``rows``, many rows a statement.

        ``values`` is one row's values (``(?, ?, NULL)``: constants written in the statement),
        by default a ``?`` for each value of a row.

        A statement's own cost (SQLite: one AUTOINCREMENT bookkeeping, and the setup of each
        execution: the reset, the binding, the lock and the GIL let go and taken back) is then
        paid per ``_MAX_PARAMETERS`` values, not per row. A statement of many rows keeps a
        journal of the pages it touches, in case one of its rows is refused: cheap where rows
        land together, as new contacts do at the right edge of their id and ``ref`` indexes
        (time-ordered refs); with random refs it cost more than it saved.
        """
        if not rows:
            return
        width = len(rows[0])
        one = values or f"({marks(width)})"
        per = max(1, _MAX_PARAMETERS // width)
        for start in range(0, len(rows), per):
            part = rows[start : start + per]
            every = ", ".join([one] * len(part))
            self.cursor.execute(
                self._text(f"{head} VALUES {every}"), list(itertools.chain.from_iterable(part))
            )


#: SQLite's triggers of migration 0011 that forget a written contact's projections, as
#: ``sqlite_master`` holds them (``Sql.forgetting_in_bulk``).
_FORGET_TRIGGERS = {
    f"{table}_{event.lower()}_forget": (
        f"CREATE TRIGGER {table}_{event.lower()}_forget AFTER {event} ON {table} FOR EACH ROW "
        f"BEGIN DELETE FROM local_seen WHERE contact_id = {row}.{column}; END"
    )
    for table, column in (("contact", "id"), ("membership", "contact_id"))
    for event, row in (("INSERT", "NEW"), ("UPDATE", "OLD"), ("DELETE", "OLD"))
}


#: Values in one statement: SQLite's limit before 3.32, far under PostgreSQL's.
_MAX_PARAMETERS = 999


def marks(count: int) -> str:
    """``?, ?, ?`` for an IN list of ``count`` values."""
    return ", ".join("?" * count)


class _Claims:
    """The keys the file's rows have claimed so far, and the line that claimed each.

    Most rows of a big file create a contact, and a contact this file created holds exactly the
    keys its row claimed (a later row naming one is a duplicate, so it never changes them). On
    SQLite, where the transaction holds the write lock, those contacts are the ones past the
    largest id before the file: the look-up each chunk makes of the contacts its keys reach
    finds them, and the line is the one their history step names, read only for a duplicate.
    Every other claim (a row that changed, deleted or left alone a contact that was there, or
    was refused for a later column; on PostgreSQL every claim) goes into a scratch table of the
    transaction, made at first use (a million keys would cost far more as a Python dict).
    Writing each created contact's keys there too cost a million-row file 1.5-2.5 s.
    """

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        self.made = False
        # The largest id before the file (SQLite): a contact past it was created by the file.
        self.before: int | None = None
        if not sql.postgres:
            (largest,) = sql.run("SELECT max(id) FROM contact")[0]
            self.before = 0 if largest is None else int(largest)

    def lines(self, found: Sequence[Any], keys: list[str]) -> dict[str, int]:
        """The lines that claimed those of ``keys`` earlier rows claimed; ``found`` is the
        contact rows (id, email, phone, ...) the keys reach."""
        wanted = set(keys)
        claimed: dict[str, int] = {}
        if self.before is not None:
            for contact_id, email, phone, *_rest in found:
                if contact_id > self.before and (email in wanted or phone in wanted):
                    line = self._line_of_created(email if email is not None else phone)
                    claimed.update((key, line) for key in (email, phone) if key in wanted)
        if self.made:
            for start in range(0, len(keys), CHUNK_SIZE):
                part = keys[start : start + CHUNK_SIZE]
                claimed.update(
                    self.sql.run(
                        f"SELECT key, line FROM ingest_claim WHERE key IN ({marks(len(part))})",
                        part,
                    )
                )
        return claimed

    def _line_of_created(self, key: str) -> int:
        """The line of the row that created the contact of ``key`` (email, else phone): its
        history step is the last one of that key, since no later row of the file may name it."""
        rows = self.sql.run(
            "SELECT outcome FROM history WHERE key = ? ORDER BY id DESC LIMIT 1", [key]
        )
        if not rows:  # every created contact gets a step in the same chunk (_apply_chunks)
            raise RuntimeError(f"ingest: no history step for the new contact of {key}")
        return int(json.loads(rows[0][0])["line"])

    def add(self, claims: list[tuple[str, int]], created: set[str]) -> None:
        """Record ``claims`` but those of ``created``, keys that contacts past ``before`` hold."""
        if created and self.before is not None:
            claims = [(key, line) for key, line in claims if key not in created]
        if not claims:
            return
        if not self.made:
            temp = "pg_temp" if self.sql.postgres else "temp"
            self.sql.run(f"DROP TABLE IF EXISTS {temp}.ingest_claim")
            # SQLite: WITHOUT ROWID keeps the rows in their key's own b-tree, so each claim is
            # one index entry to write rather than a row and an entry in a second index.
            after = " ON COMMIT DROP" if self.sql.postgres else " WITHOUT ROWID"
            self.sql.run(
                "CREATE TEMPORARY TABLE ingest_claim (key TEXT PRIMARY KEY, line INTEGER NOT NULL)"
                + after
            )
            self.made = True
        self.sql.insert("INSERT INTO ingest_claim (key, line)", claims)

    def drop(self) -> None:
        if self.made:
            self.sql.run("DROP TABLE ingest_claim")
            self.made = False


@dataclass(slots=True)
class _Contact:
    """A working copy of one contact while a chunk is applied. New ones have negative ids."""

    id: int
    email: str | None
    phone: str | None
    fields: dict[str, Any]
    tags: frozenset[str]
    lists: frozenset[str]
    status: str
    deleted: bool
    left: frozenset[str] = frozenset()  # the lists (of ``lists``) in state unsubscribed

    def state(self) -> tuple[Any, ...]:
        """What the contact row holds (the custom fields as a copy); equal states write the
        same row, since every value ingestion sets is text."""
        return (self.email, self.phone, dict(self.fields), self.tags, self.status, self.deleted)

    def membership_state(self) -> tuple[frozenset[str], frozenset[str]]:
        return self.lists, self.left

    def memberships(self) -> list[tuple[str, str]]:
        """(list, state) for each list the contact is on, sorted."""
        return [
            (name, "unsubscribed" if name in self.left else "active") for name in sorted(self.lists)
        ]

    def set_lists(self, lists: frozenset[str] | None, left: frozenset[str] | None) -> None:
        """Apply a row's ``lists`` and ``unsubscribed_lists`` (None: the row lacks the column)."""
        if left is not None:
            self.lists = (self.lists if lists is None else lists) | left
            self.left = left
        elif lists is not None:
            self.lists = lists
            self.left = self.left & lists

    def row(self) -> tuple[Any, ...]:
        """email, phone, fields, tags, status, deleted: as stored."""
        email, fields, tags, status = self.plain_row()
        return (email, self.phone, fields, tags, status, self.deleted)

    def plain_row(self) -> tuple[Any, ...]:
        """``row`` less the phone and deleted, for a statement that writes them as NULL and
        FALSE (``_inserts_of``): email, fields, tags, status."""
        tags = canonical_json(sorted(self.tags)) if self.tags else "[]"
        fields = canonical_json(self.fields) if self.fields else "{}"
        return (self.email, fields, tags, self.status)


_CONTACT_COLUMNS = "id, email, phone, fields, tags, status, deleted"


class _Chunk:
    """The contacts one chunk of rows can reach, changed in memory, then written in bulk.

    Rows apply in order against this working set, so a later row sees an earlier row's effect
    (an email moved, a contact revived) exactly as it would across chunk boundaries.
    """

    def __init__(self, contacts: list[_Contact], changes: Sequence[ContactChange]) -> None:
        self.contacts = {c.id: c for c in contacts}
        self.original = {c.id: c.state() for c in contacts}
        self.original_lists = {c.id: c.membership_state() for c in contacts}
        self.by_email = {c.email: c.id for c in contacts if c.email is not None}
        self.by_phone = {c.phone: c.id for c in contacts if c.phone is not None}
        self.named = {n for c in changes for n in (c.lists or ())}
        self.named |= {n for c in changes for n in (c.unsubscribed_lists or ())}
        self.next_new_id = -1
        self.pairs: dict[tuple[frozenset[str], frozenset[str]], list[tuple[str, str]]] = {}

    @classmethod
    def load(cls, sql: Sql, found: Sequence[Any], chunk: Sequence[ContactChange]) -> _Chunk:
        """The working set of ``found``, the contact rows (``_CONTACT_COLUMNS``) the chunk's
        keys reach, with their memberships."""
        ids = [row[0] for row in found]
        lists: dict[int, set[str]] = {i: set() for i in ids}
        left: dict[int, set[str]] = {i: set() for i in ids}
        for start in range(0, len(ids), CHUNK_SIZE):
            part = ids[start : start + CHUNK_SIZE]
            for contact_id, list_name, state in sql.run(
                "SELECT contact_id, list_name, state FROM membership "
                f"WHERE contact_id IN ({marks(len(part))})",
                part,
            ):
                lists[contact_id].add(list_name)
                if state == "unsubscribed":
                    left[contact_id].add(list_name)
        contacts = [
            _Contact(
                id=cid,
                email=email,
                phone=phone,
                fields=json.loads(fields) or {},
                tags=frozenset(json.loads(tags) or ()),
                lists=frozenset(lists[cid]),
                status=status,
                deleted=bool(deleted),
                left=frozenset(left[cid]),
            )
            for cid, email, phone, fields, tags, status, deleted in found
        ]
        return cls(contacts, chunk)

    def memberships(self, contact: _Contact) -> list[tuple[str, str]]:
        """``contact.memberships()``, made once per distinct lists and states of the chunk: the
        rows of a file mostly name the same lists (the same frozensets, see check._names)."""
        key = (contact.lists, contact.left)
        pairs = self.pairs.get(key)
        if pairs is None:
            pairs = self.pairs[key] = contact.memberships()
        return pairs

    def lists(self) -> set[str]:
        """The lists of every contact this chunk reached, before and after, and those named."""
        # The contacts of a chunk mostly share a few sets (see memberships): each distinct one
        # is added once, not once a contact.
        names = set(self.named)
        names.update(*{lists for lists, _left in self.original_lists.values()})
        names.update(*{contact.lists for contact in self.contacts.values()})
        return names

    def apply(self, change: ContactChange) -> Outcome | Rejection:
        by_email = self.by_email.get(change.email) if change.email is not None else None
        by_phone = self.by_phone.get(change.phone) if change.phone is not None else None
        if by_email is not None and by_phone is not None and by_email != by_phone:
            return Rejection(
                change.line, change.key, "email and phone belong to different contacts"
            )
        found = by_email if by_email is not None else by_phone
        contact = None if found is None else self.contacts[found]

        if change.delete:
            if contact is None or contact.deleted:
                return "unchanged"
            # A tombstone keeps identity and consent only, so a re-created contact stays opted out.
            contact.deleted = True
            contact.fields, contact.tags = {}, frozenset()
            contact.lists, contact.left = frozenset(), frozenset()
            return "deleted"

        if contact is None:
            return self._create(change)
        if contact.deleted:
            contact.deleted = False
            contact.fields, contact.tags = {}, frozenset()
            contact.lists, contact.left = frozenset(), frozenset()
            outcome: Outcome = "created"
        else:
            outcome = "updated"
        revived_opted_out = outcome == "created" and is_opted_out(contact.status)
        before = (contact.state(), contact.membership_state()) if outcome == "updated" else None

        self._set_identity(contact, change.email, change.phone)
        for name, value in change.fields.items():
            if value is None:
                contact.fields.pop(name, None)
            else:
                contact.fields[name] = value
        if change.tags is not None:
            contact.tags = change.tags
        contact.set_lists(change.lists, change.unsubscribed_lists)
        # Never re-subscribe automatically (DESIGN §8): a revived opted-out contact only takes a
        # status that is opted-out too; a live contact takes any explicit status.
        if change.status is not None and (not revived_opted_out or is_opted_out(change.status)):
            contact.status = change.status

        if before is not None and (contact.state(), contact.membership_state()) == before:
            return "unchanged"
        return outcome

    def _create(self, change: ContactChange) -> Outcome:
        """A row no contact holds a key of: the new contact made whole in one step (the steps
        of ``apply`` from an empty active contact, which a file does up to a million times)."""
        contact = _Contact(
            self.next_new_id,
            change.email,
            change.phone,
            # A row's fields mostly remove none: copied whole, in C, unless one is None.
            dict(fields)
            if None not in (fields := change.fields).values()
            else {name: value for name, value in fields.items() if value is not None},
            frozenset() if change.tags is None else change.tags,
            frozenset(),
            "active" if change.status is None else change.status,
            False,
        )
        contact.set_lists(change.lists, change.unsubscribed_lists)
        self.next_new_id -= 1
        self.contacts[contact.id] = contact
        if contact.email is not None:
            self.by_email[contact.email] = contact.id
        if contact.phone is not None:
            self.by_phone[contact.phone] = contact.id
        return "created"

    def _set_identity(self, contact: _Contact, email: str | None, phone: str | None) -> None:
        # Any value set here is free: a holder other than `contact` would have been found by
        # `apply` and the row rejected as belonging to two contacts.
        if email is not None and email != contact.email:
            if contact.email is not None:
                del self.by_email[contact.email]
            contact.email = email
            self.by_email[email] = contact.id
        if phone is not None and phone != contact.phone:
            if contact.phone is not None:
                del self.by_phone[contact.phone]
            contact.phone = phone
            self.by_phone[phone] = contact.id

    def write(self, sql: Sql) -> set[str]:
        """Write the chunk's changes; returns the keys of the new contacts whose ids SQLite
        gave past the largest before them (``_Claims``), empty when they are not known."""
        changed = [
            c for cid, c in self.contacts.items() if cid > 0 and c.state() != self.original[cid]
        ]
        moved = [(c.id,) for c in changed if (c.email, c.phone) != self.original[c.id][:2]]
        # Keys can pass from one contact to another within a chunk; clearing the moved keys
        # first means the unique indexes never see two holders, whatever the update order.
        sql.many("UPDATE contact SET email = NULL, phone = NULL WHERE id = ?", moved)
        sql.many(*_updates_of(changed))

        # A contact whose lists or their states changed has its memberships rewritten whole.
        relisted = [
            cid
            for cid, contact in self.contacts.items()
            if cid > 0 and contact.membership_state() != self.original_lists[cid]
        ]
        for start in range(0, len(relisted), CHUNK_SIZE):
            part = relisted[start : start + CHUNK_SIZE]
            sql.run(f"DELETE FROM membership WHERE contact_id IN ({marks(len(part))})", part)
        memberships = [
            (cid, name, state)
            for cid in relisted
            for name, state in self.memberships(self.contacts[cid])
        ]

        written = [c.id for c in changed] + relisted
        new = [contact for cid, contact in self.contacts.items() if cid < 0]
        created: set[str] = set()
        if new:
            given = sql.inserted_ids(*_inserts_of(new))
            # Without the triggers every new contact is forgotten, as their insert trigger did
            # (an id SQLite reuses may have left rows behind).
            known = new if sql.forget_by_hand else [c for c in new if c.lists]
            if given is not None:
                written += given
                created.update(c.email for c in new if c.email is not None)
                created.update(c.phone for c in new if c.phone is not None)
                memberships.extend(
                    (cid, name, state)
                    for c, cid in zip(new, given, strict=True)
                    if c.lists
                    for name, state in self.memberships(c)
                )
            elif known:
                ids = _ids_of(sql, known)
                written += ids.values()
                memberships.extend(
                    (ids[c.email if c.email is not None else c.phone], name, state)
                    for c in known
                    if c.lists
                    for name, state in self.memberships(c)
                )
        sql.insert("INSERT INTO membership (contact_id, list_name, state)", memberships)
        sql.forget(written)
        return created


def _inserts_of(new: Sequence[_Contact]) -> tuple[str, list[tuple[Any, ...]], str]:
    """The ``INSERT INTO contact`` of these new contacts, as ``Sql.insert`` takes it: the head,
    the rows and one row's values.

    A column no new contact has a value in (a file of emails only has no phones; a new contact
    is seldom a tombstone) is written NULL or FALSE in the statement rather than bound for each
    row: sqlite3 binds a None or a bool through its adapter look-up, about 0.7 µs each.
    """
    refs = new_refs(len(new))
    if any(c.phone is not None or c.deleted for c in new):
        return (
            "INSERT INTO contact (email, phone, fields, tags, status, deleted, ref)",
            [(*c.row(), ref) for c, ref in zip(new, refs, strict=True)],
            "(?, ?, ?, ?, ?, ?, ?)",
        )
    return (
        "INSERT INTO contact (email, fields, tags, status, ref, phone, deleted)",
        [(*c.plain_row(), ref) for c, ref in zip(new, refs, strict=True)],
        "(?, ?, ?, ?, ?, NULL, FALSE)",
    )


def _updates_of(changed: Sequence[_Contact]) -> tuple[str, list[tuple[Any, ...]]]:
    """The ``UPDATE contact`` of these changed contacts, and its rows: as ``_inserts_of``, the
    phone NULL and deleted FALSE in the statement when none of them has one."""
    if any(c.phone is not None or c.deleted for c in changed):
        return (
            "UPDATE contact SET email = ?, phone = ?, fields = ?, tags = ?, status = ?, "
            "deleted = ? WHERE id = ?",
            [(*c.row(), c.id) for c in changed],
        )
    return (
        "UPDATE contact SET email = ?, fields = ?, tags = ?, status = ?, phone = NULL, "
        "deleted = FALSE WHERE id = ?",
        [(*c.plain_row(), c.id) for c in changed],
    )


def _contacts_by_key(
    sql: Sql, emails: Sequence[str], phones: Sequence[str], columns: str
) -> list[Any]:
    """``columns`` of the contacts (tombstones too) holding any of these emails or phones."""
    found: dict[int, Any] = {}
    for start in range(0, max(len(emails), len(phones)), CHUNK_SIZE):
        some_emails = emails[start : start + CHUNK_SIZE]
        some_phones = phones[start : start + CHUNK_SIZE]
        where = []
        if some_emails:
            where.append(f"email IN ({marks(len(some_emails))})")
        if some_phones:
            where.append(f"phone IN ({marks(len(some_phones))})")
        statement = f"SELECT {columns} FROM contact WHERE {' OR '.join(where)}"
        for row in sql.run(statement, [*some_emails, *some_phones]):
            found[row[0]] = row
    return list(found.values())


def _ids_of(sql: Sql, contacts: Sequence[_Contact]) -> dict[str | None, int]:
    """The ids the database gave these new contacts, by email (or phone, without one)."""
    rows = _contacts_by_key(
        sql,
        [c.email for c in contacts if c.email is not None],
        [c.phone for c in contacts if c.email is None and c.phone is not None],
        "id, email, phone",
    )
    ids: dict[str | None, int] = {}
    for cid, email, phone in rows:
        ids[email] = cid
        ids[phone] = cid
    return ids
