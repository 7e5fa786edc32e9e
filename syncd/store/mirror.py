"""The mirror and a target's state in it: the base, the diff's rows, what is in flight.

Each side as last read and the comparison that finds the keys to reconcile are in
``syncd.store.seen``; this module has what a cycle reads and writes per key once they are
found: the base, rows in flight or taken off the list, rejections and conflicts, and the local
contacts themselves (``LocalView``, ``apply_remote_state``). Writes are done in transactions of
at most ``CHUNK`` rows, so none holds SQLite's write lock for more than milliseconds.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Connection, delete, func, select, text, tuple_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from syncd.core.projection import Projection, digest_of, is_opted_out
from syncd.core.reconcile import Sent
from syncd.store.models import (
    Base,
    Conflict,
    Contact,
    InFlight,
    Membership,
)

if TYPE_CHECKING:
    from syncd.config import TargetConfig

CHUNK = 5000
#: key of the transaction-level advisory lock that the mirror's writers take turns on (PostgreSQL)
_WRITE_TURN_LOCK = 0x73796E6377


def take_write_turn(db: Session | Connection) -> None:
    """Hold the mirror's write lock until this transaction ends.

    The inbox and the cycles write the same contacts from different threads or processes. A
    cycle decides from the local state it staged, then writes back what it pulled: if an inbox
    file changed one of those contacts in between, the write would undo a local edit. So a
    cycle re-reads the contacts it is about to write with this lock held, and the inbox takes
    it too. SQLite has one writer at a time: any write statement takes its lock (this one
    changes nothing). PostgreSQL: a transaction-level advisory lock, released by commit.
    """
    bind = db.get_bind() if isinstance(db, Session) else db
    if bind.dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _WRITE_TURN_LOCK})
    else:
        db.execute(text("UPDATE contact SET id = id WHERE 0 = 1"))


def _insert(session: Session, model: Any) -> Any:
    """A dialect insert so that upserts stay one statement on SQLite and PostgreSQL alike."""
    # each dialect's module imported only where it is used (the PostgreSQL one is 25 ms)
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(model)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(model)


def many(db: Session | Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """``executemany`` straight through the driver (``?`` placeholders, turned into the
    driver's own on PostgreSQL). A first push writes several rows per contact: through the ORM's
    bulk insert, building and checking each row's parameters would cost more than the rows.

    On SQLite an ``INSERT ... VALUES (?, ...)`` goes as statements of many rows each
    (``VALUES (...), (...), ...``), in the rows' order: one statement a row pays its start and
    end every row and, where a trigger writes (``dirty``), a statement journal every row that
    copies each page the row touches. 100,000 projections into ``local_seen`` in transactions
    of 2,000: 15-18 µs a row one statement each, 6.5-8 µs in statements of 500 rows (without
    the trigger 4.2-4.4 against 2.4-2.5)."""
    if not rows:
        return
    connection = db.connection() if isinstance(db, Session) else db
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(sql.replace("?", "%s"), list(rows))
        return
    found = _VALUES.search(sql) if len(rows) > 1 else None
    if found is None:
        connection.exec_driver_sql(sql, list(rows))
        return
    group = found.group(1)
    # the build's limit of parameters in one statement (999 before SQLite 3.32, 32,766 since)
    driver: Any = connection.connection.driver_connection
    limit = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per = max(1, min(_ROWS_A_STATEMENT, limit // max(1, group.count("?"))))
    head, tail = sql[: found.start(1)], sql[found.end(1) :]
    full = f"{head}{', '.join([group] * per)}{tail}"
    for i in range(0, len(rows), per):
        part = rows[i : i + per]
        statement = full if len(part) == per else f"{head}{', '.join([group] * len(part))}{tail}"
        connection.exec_driver_sql(statement, tuple(chain.from_iterable(part)))


def driver_rows(db: Session | Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """A query's rows as the driver gives them, tuples (``?`` placeholders, as ``many``), in
    the transaction under way. For the reads of a row per contact: SQLAlchemy's result makes
    a ``Row`` of each, which cost half again as much as the read itself (5,000 members, eight
    columns: 2.2-2.5 µs a row against 1.5). The values are the same: a text query's result
    has no types to process; the driver's errors are SQLAlchemy's, as they would be there."""
    connection = db.connection() if isinstance(db, Session) else db
    dialect = connection.dialect
    if dialect.name == "postgresql":
        sql = sql.replace("?", "%s")
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, tuple(params))
        return list(cursor.fetchall())
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error) from exc
    finally:
        cursor.close()


#: the one row of values of an ``INSERT``, repeated for a statement of many rows (``many``)
_VALUES = re.compile(r"VALUES (\([^()]*\))")
_ROWS_A_STATEMENT = 500


def drop_keys(session: Session, table: str, target: str, keys: Sequence[str]) -> None:
    """Delete these keys' rows of a per-target table, ``IN`` lists of 500 keys a statement
    (written out here: SQLAlchemy's expanding parameters cost more than the deletes)."""
    connection = session.connection()
    mark = "%s" if connection.dialect.name == "postgresql" else "?"
    for i in range(0, len(keys), 500):
        part = tuple(keys[i : i + 500])
        connection.exec_driver_sql(
            f"DELETE FROM {table} WHERE target = {mark} AND key IN "
            f"({', '.join([mark] * len(part))})",
            (target, *part),
        )


def rows_of_keys(
    session: Session, table: str, columns: str, target: str, keys: Sequence[str], where: str = ""
) -> Iterator[Any]:
    """``columns`` of these keys' rows of a per-target table (``where``: a further condition),
    ``IN`` lists of 500 keys a query, written out as ``drop_keys`` does: each chunk of the diff
    reads several such tables."""
    sql = f"SELECT {columns} FROM {table} WHERE target = ?{where} AND key IN"
    return _select_in(session, sql, (target,), keys)


def _select_in(
    session: Session, sql: str, params: tuple[Any, ...], keys: Sequence[str]
) -> Iterator[Any]:
    """``sql`` (ending in ``IN``, its ``params`` written ``?``) run for each 500 keys, straight
    through the driver (the ``IN`` list written out: SQLAlchemy's expanding parameters cost
    more than a per-key look-up's rows)."""
    connection = session.connection()
    mark = "%s" if connection.dialect.name == "postgresql" else "?"
    if mark != "?":
        sql = sql.replace("?", mark)
    for i in range(0, len(keys), 500):
        part = tuple(keys[i : i + 500])
        yield from connection.exec_driver_sql(
            f"{sql} ({', '.join([mark] * len(part))})", (*params, *part)
        )


def count_rows(session: Session, model: Any, target: str) -> int:
    return int(
        session.scalar(select(func.count()).select_from(model).where(model.target == target)) or 0
    )


@dataclass(frozen=True, slots=True)
class DiffRow:
    key: str
    local: Projection | None
    base: Projection | None
    remote: Projection | None
    raw_status: str
    opted_out_elsewhere: bool = False  # see ``syncd.providers.base.RemoteContact``


#: the rows of the diff for which ``reconcile`` may decide a delete or a removal: those the
#: local side lacks or that have a base (``syncd.core.reconcile.may_delete``, in SQL)
_MAY_DELETE = "(local IS NULL OR base IS NOT NULL)"


def iter_diff(
    session: Session, target: str, chunk: int = 2000, *, may_delete: bool = False
) -> Iterator[list[DiffRow]]:
    """The differing keys, chunk by chunk (keyset paging on the sequence number); with
    ``may_delete``, only those that ``reconcile`` may decide to delete or remove. Read through
    the driver: each pass of a first push reads every contact of the list this way."""
    connection = session.connection()
    mark = "%s" if connection.dialect.name == "postgresql" else "?"
    sql = (
        "SELECT seq, key, local, base, remote, raw_status, opted_out_elsewhere FROM stage_diff "
        f"WHERE target = {mark} AND seq > {mark}{' AND ' + _MAY_DELETE if may_delete else ''} "
        f"ORDER BY seq LIMIT {mark}"
    )
    parse = Projection.from_json
    last = 0
    while True:
        rows = session.connection().exec_driver_sql(sql, (target, last, chunk)).all()
        if not rows:
            return
        last = rows[-1][0] or last
        yield [
            DiffRow(
                key,
                parse(local) if local else None,
                parse(base) if base else None,
                parse(remote) if remote else None,
                raw_status or "",
                bool(elsewhere),
            )
            for _, key, local, base, remote, raw_status, elsewhere in rows
        ]


def pure_creates(
    session: Session, target: str, peers: Sequence[str], after: int, limit: int
) -> list[tuple[int, str, str]]:
    """The next differing keys after sequence number ``after`` that are new locally and
    nothing else: a local row, no base, no remote row, no write in flight, no record kept
    off the list (by this target or a peer on the account), no base or last export row of a
    peer (the contact is on that list of the account), no rejection and no conflict.
    (seq, key, local JSON), at most ``limit``. ``reconcile`` decides each of them a plain
    create of its local row (``create_remote``), so they can be journalled, sent and
    confirmed in bulk (``syncd.engine.creates``)."""
    owners = ", ".join(["?"] * (1 + len(peers)))
    # on a peer's list, the contact is in the account with that list's tags and maybe opted
    # out: the general path's create starts from them (``syncd.engine.chunk``)
    marks = ", ".join(["?"] * len(peers))
    on_peer_lists = (
        f"AND NOT EXISTS (SELECT 1 FROM base p WHERE p.target IN ({marks}) AND p.key = d.key) "
        f"AND NOT EXISTS (SELECT 1 FROM remote_seen r WHERE r.target IN ({marks}) "
        "  AND r.key = d.key) "
        if peers
        else ""
    )
    sql = (
        "SELECT d.seq, d.key, d.local FROM stage_diff d "
        "WHERE d.target = ? AND d.seq > ? AND d.local IS NOT NULL "
        "AND d.base IS NULL AND d.remote IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM in_flight f WHERE f.target = d.target AND f.key = d.key) "
        f"AND NOT EXISTS (SELECT 1 FROM off_list o WHERE o.target IN ({owners}) "
        "  AND o.key = d.key) "
        f"{on_peer_lists}"
        "AND NOT EXISTS (SELECT 1 FROM rejection j WHERE j.target = d.target AND j.key = d.key) "
        "AND NOT EXISTS (SELECT 1 FROM conflict c WHERE c.target = d.target AND c.key = d.key) "
        "ORDER BY d.seq LIMIT ?"
    )
    rows = driver_rows(session, sql, (target, after, target, *peers, *peers, *peers, limit))
    return [(int(seq), key, local) for seq, key, local in rows]


def drop_diff_rows(session: Session, seqs: Sequence[int]) -> None:
    """Take these rows out of the diff: they were decided already (``pure_creates``). The
    numbers come in ascending order, each once (as ``pure_creates`` reads them); when they
    run without a gap, as a first push's do, they go as one range (0.67 µs a row against 0.9
    in lists of numbers)."""
    connection = session.connection()
    mark = "%s" if connection.dialect.name == "postgresql" else "?"
    if seqs and seqs[-1] - seqs[0] + 1 == len(seqs):
        connection.exec_driver_sql(
            f"DELETE FROM stage_diff WHERE seq BETWEEN {mark} AND {mark}", (seqs[0], seqs[-1])
        )
        return
    for i in range(0, len(seqs), 500):
        part = tuple(seqs[i : i + 500])
        connection.exec_driver_sql(
            f"DELETE FROM stage_diff WHERE seq IN ({', '.join([mark] * len(part))})", part
        )


def count_never_deleted(session: Session, target: str) -> int:
    """The differing keys that ``iter_diff(may_delete=True)`` leaves out."""
    return int(
        session.scalar(
            text(f"SELECT count(*) FROM stage_diff WHERE target = :t AND NOT {_MAY_DELETE}"),
            {"t": target},
        )
        or 0
    )


# --- the base -----------------------------------------------------------------------------


def set_base(session: Session, target: str, rows: Sequence[Projection]) -> None:
    # both sides agree again: an earlier count of exports that lacked the key is over
    many(
        session,
        "INSERT INTO base (target, key, digest, data, unseen) VALUES (?, ?, ?, ?, 0) "
        "ON CONFLICT (target, key) DO UPDATE "
        "SET digest = excluded.digest, data = excluded.data, unseen = 0",
        [(target, p.key, digest_of(data), data) for p in rows for data in (p.to_json(),)],
    )


def unseen(session: Session, target: str, keys: Sequence[str]) -> dict[str, int]:
    """How many complete exports have lacked each of these keys while the local side lacked
    it too (keys never counted are left out)."""
    return dict(rows_of_keys(session, "base", "key, unseen", target, keys, " AND unseen > 0"))


def count_unseen(session: Session, target: str, keys: Sequence[str]) -> None:
    """One more complete export lacked these keys (deleted locally, their base kept)."""
    for i in range(0, len(keys), 500):
        session.execute(
            update(Base)
            .where(col(Base.target) == target, col(Base.key).in_(keys[i : i + 500]))
            .values(unseen=col(Base.unseen) + 1)
        )


def projections(
    session: Session, model: Any, target: str, keys: Sequence[str]
) -> dict[str, Projection]:
    """These keys' rows of one side (``model``: LocalSeen, RemoteSeen or Base)."""
    return {
        key: Projection.from_json(data)
        for key, data in rows_of_keys(session, model.__tablename__, "key, data", target, keys)
    }


def set_in_flight(
    session: Session, target: str, rows: Sequence[tuple[Projection, Projection | None]]
) -> None:
    """Record writes about to be sent: (the row as sent, the remote row it starts from)."""
    many(
        session,
        "INSERT INTO in_flight (target, key, data, before) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (target, key) DO UPDATE SET data = excluded.data, before = excluded.before",
        [(target, p.key, p.to_json(), b and b.to_json()) for p, b in rows],
    )


def set_in_flight_texts(session: Session, target: str, rows: Sequence[tuple[str, str]]) -> None:
    """``set_in_flight`` for creates given as (key, the row's JSON as sent), no remote row."""
    many(
        session,
        "INSERT INTO in_flight (target, key, data, before) VALUES (?, ?, ?, NULL) "
        "ON CONFLICT (target, key) DO UPDATE SET data = excluded.data, before = NULL",
        [(target, key, data) for key, data in rows],
    )


def set_base_texts(session: Session, target: str, rows: Sequence[tuple[str, str]]) -> None:
    """``set_base`` for rows given as (key, canonical JSON)."""
    many(
        session,
        "INSERT INTO base (target, key, digest, data, unseen) VALUES (?, ?, ?, ?, 0) "
        "ON CONFLICT (target, key) DO UPDATE "
        "SET digest = excluded.digest, data = excluded.data, unseen = 0",
        [(target, key, digest_of(data), data) for key, data in rows],
    )


def in_flight(session: Session, target: str, keys: Sequence[str]) -> dict[str, Sent]:
    return {
        key: Sent(Projection.from_json(data), Projection.from_json(before) if before else None)
        for key, data, before in rows_of_keys(
            session, "in_flight", "key, data, before", target, keys
        )
    }


def drop_in_flight(session: Session, target: str, keys: Sequence[str] | None = None) -> None:
    """Forget these keys' writes (their answer was read); None: every key of the target."""
    if keys is None:
        session.execute(delete(InFlight).where(col(InFlight.target) == target))
        return
    drop_keys(session, "in_flight", target, keys)


def set_off_list(session: Session, target: str, rows: Sequence[Projection]) -> None:
    """Remember contacts taken off the list that the provider keeps: their remote state."""
    many(
        session,
        "INSERT INTO off_list (target, key, data) VALUES (?, ?, ?) "
        "ON CONFLICT (target, key) DO UPDATE SET data = excluded.data",
        [(target, p.key, p.to_json()) for p in rows],
    )


def off_list(session: Session, target: str, keys: Sequence[str]) -> dict[str, Projection]:
    return {
        key: Projection.from_json(data)
        for key, data in rows_of_keys(session, "off_list", "key, data", target, keys)
    }


def drop_off_list(session: Session, target: str, keys: Sequence[str]) -> None:
    """These keys are on the list at both sides again (they have a base)."""
    drop_keys(session, "off_list", target, keys)


def drop_base(session: Session, target: str, keys: Sequence[str]) -> None:
    drop_keys(session, "base", target, keys)


def drop_rejections(session: Session, target: str, keys: Sequence[str]) -> None:
    """Rejections of keys that are settled now (confirmed, or no longer differing)."""
    drop_keys(session, "rejection", target, keys)


# --- held conflicts -----------------------------------------------------------------------


def resolve_conflicts(
    session: Session,
    targets: Sequence[str],
    take: str,
    *,
    key: str | None = None,
    fields: Sequence[str] = (),
) -> int:
    """Record a person's side on the held conflicts of these targets: every one, or one key's.

    Without ``fields`` the side is taken for the whole contact, in one statement. With them,
    only those fields' entries get a ``take``; the contact stays held until each field in
    conflict has one (a side chosen for the whole contact before is kept for the others).
    Rows are read and written a page at a time, so a first sync's many held contacts never
    sit in memory together. Returns how many contacts the choice reached.
    """
    where: list[ColumnElement[bool]] = [col(Conflict.target).in_(targets)]
    if key is not None:
        where.append(col(Conflict.key) == key)
    if not fields:
        done = session.execute(update(Conflict).where(*where).values(resolution=take))
        return int(getattr(done, "rowcount", 0) or 0)
    named = set(fields)
    touched = 0
    after: tuple[str, str] | None = None
    while True:
        page = select(
            col(Conflict.target), col(Conflict.key), col(Conflict.fields), col(Conflict.resolution)
        ).where(*where)
        if after is not None:
            page = page.where(tuple_(col(Conflict.target), col(Conflict.key)) > after)
        rows = session.execute(
            page.order_by(col(Conflict.target), col(Conflict.key)).limit(1000)
        ).all()
        if not rows:
            return touched
        after = (rows[-1][0], rows[-1][1])
        changed = []
        for target, row_key, data, whole in rows:
            entries: list[dict[str, Any]] = json.loads(data)
            if not any(e["field"] in named for e in entries):
                continue
            for e in entries:
                side = take if e["field"] in named else e.get("take", whole)
                if side is not None:
                    e["take"] = side
            changed.append({"t": target, "k": row_key, "f": json.dumps(entries)})
        for c in changed:
            session.execute(
                update(Conflict)
                .where(col(Conflict.target) == c["t"], col(Conflict.key) == c["k"])
                .values(fields=c["f"], resolution=None)
            )
        touched += len(changed)


# --- the mirror ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalView:
    """How one target reads and writes the mirror's contacts."""

    key: str  # "email" | "phone"
    local_list: str
    fields: dict[str, str]  # remote name -> local name
    reference: str | None = None  # remote field that carries the contact's ``ref``, if any
    # the provider keeps a list opt-out apart from the contact's status (Capabilities)
    list_consent: bool = False

    @classmethod
    def of(cls, target: TargetConfig, *, list_consent: bool) -> LocalView:
        """The target's view; ``list_consent`` is its provider's capability (the store does
        not import providers)."""
        return cls(
            target.key,
            target.local_list_name,
            dict(target.fields),
            target.reference_field,
            list_consent,
        )

    def key_column(self) -> Any:
        return col(Contact.email) if self.key == "email" else col(Contact.phone)


class MemberRow(NamedTuple):
    email: str | None
    phone: str | None
    fields: str
    tags: str
    status: str
    ref: str | None
    state: str  # consent on the view's list (``Membership.state``)


def _member_columns(view: LocalView) -> tuple[Any, ...]:
    """The columns of a ``MemberRow``, in its order."""
    # the membership's state by its primary key, one look-up per row: a join would let the
    # planner drive the query by the list and sort it (see ``iter_local_members``)
    state = (
        select(col(Membership.state))
        .where(
            col(Membership.contact_id) == col(Contact.id),
            col(Membership.list_name) == view.local_list,
        )
        .correlate(Contact)
        .scalar_subquery()
    )
    return (
        col(Contact.email),
        col(Contact.phone),
        col(Contact.fields),
        col(Contact.tags),
        col(Contact.status),
        col(Contact.ref),
        state,
    )


def _members_query(view: LocalView) -> Any:
    return (
        select(*_member_columns(view))
        .join(Membership, col(Membership.contact_id) == col(Contact.id))
        .where(col(Membership.list_name) == view.local_list, col(Contact.deleted) == False)  # noqa: E712
    )


def local_members(session: Session, view: LocalView, keys: Sequence[str]) -> list[MemberRow]:
    """The live members among these keys, as they are now (the rows a cycle re-reads)."""
    found: list[MemberRow] = []
    column = view.key_column()
    for i in range(0, len(keys), 500):
        stmt = _members_query(view).where(column.in_(keys[i : i + 500]))
        found += [MemberRow(*row) for row in session.execute(stmt)]
    return found


def contacts_by_key(session: Session, view: LocalView, keys: Sequence[str]) -> dict[str, Contact]:
    column = view.key_column()
    found: dict[str, Contact] = {}
    for i in range(0, len(keys), 500):
        for c in session.execute(select(Contact).where(column.in_(keys[i : i + 500]))).scalars():
            found[getattr(c, view.key)] = c
    return found


def own_contacts(session: Session, view: LocalView, keys: Sequence[str]) -> dict[str, MemberRow]:
    """Each of these keys' contacts, live or a delete's tombstone, whatever its lists: as a
    ``MemberRow`` active on the view's list (a contact off the list has no consent there)."""
    # the column's name spelt here, never taken from the view, since it is written into the SQL
    column = "email" if view.key == "email" else "phone"
    sql = f"SELECT email, phone, fields, tags, status, ref FROM contact WHERE {column} IN"
    found: dict[str, MemberRow] = {}
    for email, phone, fields, tags, status, ref in _select_in(session, sql, (), keys):
        member = MemberRow(email, phone, fields, tags, status, ref, "active")
        found[getattr(member, column)] = member
    return found


def contacts_by_ref(session: Session, refs: Sequence[str]) -> list[Contact]:
    found: list[Contact] = []
    for i in range(0, len(refs), 500):
        found += session.execute(
            select(Contact).where(col(Contact.ref).in_(refs[i : i + 500]))
        ).scalars()
    return found


def apply_remote_state(
    session: Session, view: LocalView, row: Projection, raw_status: str, existing: Contact | None
) -> Contact:
    """Write a remote-born state into the mirror (create, edit, revive; consent kept)."""
    contact = existing or (
        Contact(email=row.key) if view.key == "email" else Contact(phone=row.key)
    )
    if existing is None:
        session.add(contact)
    elif getattr(contact, view.key) != row.key and not _taken(session, view.key, row.key):
        setattr(contact, view.key, row.key)  # the provider changed the key (reconcile's rekey)
    local_fields: dict[str, Any] = json.loads(contact.fields)
    remote_fields = row.field_map
    for remote_name, local_name in view.fields.items():
        value = remote_fields.get(remote_name)
        if local_name in ("email", "phone"):
            if (
                value
                and value != getattr(contact, local_name)
                and not _taken(session, local_name, value)
            ):
                setattr(contact, local_name, value)
        elif value is None:
            local_fields.pop(local_name, None)
        else:
            local_fields[local_name] = value
    contact.fields = _dumps(local_fields)
    contact.tags = _dumps(sorted(row.tags))
    state = _list_state(session, contact, view.local_list) if existing is not None else None
    if view.list_consent:
        contact.status = _local_status(contact.status, row.status, raw_status)
        if not is_opted_out(row.status):
            state = row.list_status  # opted out as a whole, the list's own state is kept
    elif not (
        row.status == "unsubscribed"
        and contact.status == "active"
        and state not in (None, "active")
    ):
        # (without list consent a list opt-out went out as the contact's status: read back,
        # it stays the list's, see ``syncd.engine.stage.project_local``)
        contact.status = _local_status(contact.status, row.status, raw_status)
    contact.deleted = False
    session.flush()
    _join_list(session, contact, view.local_list, state)
    return contact


def _list_state(session: Session, contact: Contact, list_name: str) -> str | None:
    """The contact's consent on a list (None: not on it)."""
    if contact.id is None:
        return None
    found: str | None = session.scalar(
        select(col(Membership.state)).where(
            col(Membership.contact_id) == contact.id, col(Membership.list_name) == list_name
        )
    )
    return found


def _local_status(current: str, merged: str, raw: str) -> str:
    if is_opted_out(merged):
        if is_opted_out(current):
            return current  # already opted out locally; keep the stronger local word
        return "blocked" if raw == "blocked" else "unsubscribed"
    return merged


def remove_from_list(session: Session, view: LocalView, contact: Contact | None) -> bool:
    """The remote deleted the contact: it leaves this local list; with no list left, tombstone."""
    if contact is None or contact.id is None:
        return False
    session.execute(
        delete(Membership).where(
            col(Membership.contact_id) == contact.id,
            col(Membership.list_name) == view.local_list,
        )
    )
    remaining = session.scalar(
        select(func.count()).select_from(Membership).where(col(Membership.contact_id) == contact.id)
    )
    if not remaining:
        contact.deleted = True  # identity and status stay: the opt-out survives re-creation
    return True


def _join_list(session: Session, contact: Contact, list_name: str, state: str | None) -> None:
    """On the list with this consent (None: as it is, or active if joining)."""
    assert contact.id is not None
    stmt = _insert(session, Membership)
    if state is None:
        stmt = stmt.on_conflict_do_nothing()
    else:
        stmt = stmt.on_conflict_do_update(
            index_elements=["contact_id", "list_name"], set_={"state": stmt.excluded.state}
        )
    session.execute(
        stmt, [{"contact_id": contact.id, "list_name": list_name, "state": state or "active"}]
    )


def _taken(session: Session, column: str, value: str) -> bool:
    column_ = col(Contact.email) if column == "email" else col(Contact.phone)
    return session.scalar(select(func.count()).select_from(Contact).where(column_ == value)) != 0


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
