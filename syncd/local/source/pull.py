"""One read of a ``[[source]]`` into the mirror: diff against the last read, apply in one
transaction, or change nothing.

Steps
-----
1. Read every row (``read_source``), fingerprinting each and keeping only rows whose
   fingerprint differs from the one stored for their key (``source_row``): an unchanged row
   costs a hash and a dict lookup. Nothing is written until the last row is in: a failed, timed
   out or cut-short read raises ``SourceReadFailed`` and changes nothing but the error shown by
   ``syncd status``.
2. The changed rows are checked like a contact file's (``ingest.validate``); a bad row is
   rejected with its row number and reason, and keeps whatever it applied before (a bad row is
   no statement that the contact left).
3. One transaction on the mirror, under its write lock: the changed rows go through
   ``ingest.apply`` (the write path of files and the ingest API), every contact they name is put
   on the source's list, the contacts whose rows vanished since the last full read leave that
   list (the membership only; the contact stays), the fingerprints and the ``source_run`` row
   are written. A second reader of the same source that finished first makes this one apply
   nothing (``generation``), so two replicas never apply one diff twice.

Guard
-----
Vanished rows are removals, and a query that suddenly returns nothing must not empty the list:
an empty result after a read that had rows, or more than ``MASS_DELETE_MIN`` removals that are
more than the smallest ``max_delete_fraction`` of the targets fed by the list (0.2 without
one) of its members, refuses the whole read (``MassDeleteRefused``), unless explicitly allowed.
The guard is the inbox snapshot's, shared in ``syncd.local.members``.

Consent
-------
A status or an ``unsubscribed`` flag from the source can only opt a contact out
(``syncd.local.source.read``): a source never re-subscribes anyone, and ``ingest.apply`` keeps
a revived contact opted out, as for files.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from syncd.config import Config, SourceConfig
from syncd.core.contacts import normalise_email, normalise_phone
from syncd.errors import MassDeleteRefused, SourceBusy, SourceReadFailed
from syncd.local.ingest.check import ContactChange, Rejection, validate
from syncd.local.ingest.read import RawRow
from syncd.local.ingest.write import apply
from syncd.local.members import ids_by_key, mass_delete_refusal, member_count
from syncd.local.source.cursor import encode as encode_cursor
from syncd.local.source.cursor import later, since_value
from syncd.local.source.read import Batch, Shape, SourceRecord, read_source
from syncd.local.source.state import (
    LastRead,
    chunks,
    fingerprints,
    last_read,
    save_read,
    store_fingerprints,
)
from syncd.store import mirror
from syncd.store.models import Contact, Membership, SourceRun


@dataclass(slots=True)
class SourceReport:
    """What one read found and did. Every row read is exactly one of created, updated,
    unchanged or rejected (a delete row counts as updated); ``removed`` counts the rows that
    vanished (their contacts left the list)."""

    source: str
    mode: str = "snapshot"  # snapshot | cursor: what this read was
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    lists: frozenset[str] = frozenset()  # local lists whose members changed
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return self.created + self.updated + self.removed

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "mode": self.mode,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "rejected": [r.to_dict() for r in self.rejected],
            "lists": sorted(self.lists),
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
        }


def fingerprinter(source: SourceConfig, shape: Shape) -> Any:
    """A function: a row as the driver returns it -> its digest, keyed with what the row is
    applied to (list, key column) and the result's column names, so that changing any of
    them makes every row read as changed once."""
    salt = hashlib.blake2b(repr((source.list, source.key, shape.names)).encode()).digest()[:32]

    def digest(row: Sequence[Any]) -> str:
        text = repr(tuple(row)).encode("utf-8", "surrogatepass")
        return hashlib.blake2b(text, digest_size=16, key=salt).hexdigest()

    return digest


@dataclass(slots=True)
class _Diff:
    full: bool
    rows: int = 0
    unchanged: int = 0
    changed: list[RawRow] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)  # key -> new fingerprint
    duplicates: list[Rejection] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    cursor: Any = None


def pull(
    engine: Engine,
    config: Config,
    source: SourceConfig,
    *,
    dry_run: bool = False,
    allow_mass_delete: bool = False,
    full: bool | None = None,
    now: float | None = None,
) -> SourceReport:
    """Read ``source`` once and apply what changed (see the module docstring).

    ``full`` forces (True) or forbids (False) a full snapshot in cursor mode; None decides by
    ``full_every``. Raises ``SourceReadFailed`` or ``MassDeleteRefused`` having applied nothing;
    either is recorded as the source's last error unless ``dry_run``.
    """
    started = time.monotonic()
    at = time.time() if now is None else now
    with engine.connect() as conn:
        last = last_read(conn, source.name)
    is_full = _is_full(source, last, at) if full is None else (full or source.mode == "snapshot")
    try:
        diff = _diff(engine, config, source, last, is_full)
        report = _apply(engine, config, source, last, diff, at, dry_run, allow_mass_delete)
        report.seconds = time.monotonic() - started
        if not dry_run:
            _record_seconds(engine, source, report.seconds)
    except (SourceReadFailed, MassDeleteRefused) as exc:
        if not dry_run and not isinstance(exc, SourceBusy):
            _record_failure(engine, source, str(exc), at, time.monotonic() - started)
        raise
    return report


def _is_full(source: SourceConfig, last: LastRead, now: float) -> bool:
    if source.mode == "snapshot" or last.cursor is None or last.last_full_at is None:
        return True
    return now - last.last_full_at >= source.full_every_seconds


def _key(values: Any, source: SourceConfig, region: str | None) -> str | None:
    raw = values.get(source.key)
    if isinstance(raw, bool) or not isinstance(raw, str | int) or not str(raw).strip():
        return None
    try:
        if source.key == "email":
            return normalise_email(raw) if isinstance(raw, str) else None
        return normalise_phone(str(raw), region)
    except ValueError:
        return None


def _diff(
    engine: Engine, config: Config, source: SourceConfig, last: LastRead, full: bool
) -> _Diff:
    since = None if full else since_value(last.cursor, source.overlap_seconds)
    diff = _Diff(full=full)
    batches: Iterable[Batch] = read_source(source, since)
    region = config.ingest.default_region
    if full:
        with engine.connect() as conn:
            previous = fingerprints(conn, source.name)
        seen = _scan(source, region, batches, previous, diff)
        diff.vanished = [k for k in previous if k not in seen]
    else:
        # A cursor read holds its (few) rows, then looks up only their keys' fingerprints.
        held = list(batches)
        keys = [
            key
            for b in held
            for i, row in enumerate(b.rows)
            if (key := _key(b.shape.record(b.first_line + i, row).values, source, region))
        ]
        with engine.connect() as conn:
            previous = fingerprints(conn, source.name, keys)
        _scan(source, region, held, previous, diff)
    return diff


def _scan(
    source: SourceConfig,
    region: str | None,
    batches: Iterable[Batch],
    previous: dict[str, str],
    diff: _Diff,
) -> dict[str, int]:
    """Sort the rows into unchanged and changed; the keys seen, with their row numbers.

    An unchanged row costs a digest and a lookup: its key as written, lower-cased for an
    email, is tried first; the stored digest covers that text, so a match proves both the key
    and the row. Any other row is converted and its key normalised.
    """
    seen: dict[str, int] = {}
    digest = None
    for batch in batches:
        shape = batch.shape
        if digest is None:
            digest = fingerprinter(source, shape)
        key_at, cursor_at = shape.key_at, shape.cursor_at
        email = source.key == "email"
        for offset, row in enumerate(batch.rows):
            line = batch.first_line + offset
            diff.rows += 1
            if cursor_at is not None:
                diff.cursor = later(diff.cursor, row[cursor_at])
            fp = digest(row)
            raw = row[key_at]
            quick = raw.lower() if email and isinstance(raw, str) else str(raw)
            if quick not in seen and previous.get(quick) == fp:
                seen[quick] = line
                diff.unchanged += 1
                continue
            _changed_row(source, region, shape.record(line, row), fp, previous, seen, diff)
    return seen


def _changed_row(
    source: SourceConfig,
    region: str | None,
    record: SourceRecord,
    fp: str,
    previous: dict[str, str],
    seen: dict[str, int],
    diff: _Diff,
) -> None:
    key = _key(record.values, source, region)
    if key is None:
        # A key that is there but unusable is named by validate (an invalid email, say).
        raw = record.values.get(source.key)
        missing = raw is None or (isinstance(raw, str) and not raw.strip())
        problem = record.problem or (
            f"row has no {source.key} (the source's key)" if missing else None
        )
        diff.changed.append(RawRow(record.line, record.values, problem))
        return
    if key in seen:
        reason = f"duplicate {source.key} {key}: already on row {seen[key]}"
        diff.duplicates.append(Rejection(record.line, key, reason))
        return
    seen[key] = record.line
    if previous.get(key) == fp:
        diff.unchanged += 1
        return
    diff.changed.append(RawRow(record.line, record.values, record.problem))
    diff.fingerprints[key] = fp


def _apply(
    engine: Engine,
    config: Config,
    source: SourceConfig,
    last: LastRead,
    diff: _Diff,
    at: float,
    dry_run: bool,
    allow_mass_delete: bool,
) -> SourceReport:
    changes, rejected = validate(diff.changed, config.ingest)
    changes = [_onto_list(c, source.list) for c in changes]
    report = SourceReport(source.name, "snapshot" if diff.full else "cursor", rows=diff.rows)
    report.dry_run = dry_run
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            mirror.take_write_turn(conn)
            if last_read(conn, source.name).generation != last.generation:
                raise SourceBusy(
                    f"source {source.name}: another process applied a read of it meanwhile; "
                    "nothing of this read was applied"
                )
            leaving = _guard(conn, config, source, last, diff, allow_mass_delete)
            before = _lists_of(conn, changes)
            result = apply(cast(Engine, conn), changes)  # joins this transaction
            refused = {r.line for r in result.rejected}
            kept = [c for c in changes if c.line not in refused]
            joined = _join_list(conn, source.list, [c for c in kept if not c.delete])
            _leave_list(conn, source.list, leaving)
            applied_keys = {_change_key(c, source) for c in kept}
            store_fingerprints(
                conn,
                source.name,
                {k: fp for k, fp in diff.fingerprints.items() if k in applied_keys},
                diff.vanished,
            )
            report.created, report.updated = result.created, result.updated + result.deleted
            report.unchanged = diff.unchanged + result.unchanged
            report.removed = len(leaving)
            report.rejected = sorted(
                rejected + result.rejected + diff.duplicates, key=lambda r: r.line
            )
            if report.changed or joined:
                report.lists = frozenset(before | _lists_of(conn, changes) | {source.list})
            save_read(conn, source.name, _next_read(source, last, diff, report, at))
            if dry_run:
                trans.rollback()
            else:
                trans.commit()
        except BaseException:
            if trans.is_active:
                trans.rollback()
            raise
    return report


def _onto_list(change: ContactChange, list_name: str) -> ContactChange:
    """A row carrying ``lists`` keeps the source's own list among them (as a snapshot file's)."""
    if change.lists is not None and list_name not in change.lists:
        return replace(change, lists=change.lists | {list_name})
    return change


def _change_key(change: ContactChange, source: SourceConfig) -> str | None:
    return change.email if source.key == "email" else change.phone


def _guard(
    conn: Connection,
    config: Config,
    source: SourceConfig,
    last: LastRead,
    diff: _Diff,
    allowed: bool,
) -> list[int]:
    """The members leaving the list (their rows vanished); refused past the mass-delete guard."""
    if not diff.vanished:
        return []
    ids = _by_key(conn, source, diff.vanished)
    members = set(
        conn.execute(
            select(col(Membership.contact_id)).where(col(Membership.list_name) == source.list)
        ).scalars()
    )
    leaving = sorted(set(ids.values()) & members)
    if allowed:
        return leaving
    if diff.rows == 0 and last.rows > 0:
        reason = (
            f"source {source.name}: the query returned no rows where the last read had "
            f"{last.rows}; an empty result never empties list {source.list!r} "
            "(allow it once with --allow-mass-delete); nothing was applied"
        )
        raise MassDeleteRefused(reason)
    before = member_count(conn, source.list)
    refusal = mass_delete_refusal(config, source.list, len(leaving), before, "the read")
    if refusal is not None:
        raise MassDeleteRefused(f"source {source.name}: {refusal}")
    return leaving


def _by_key(conn: Connection, source: SourceConfig, keys: list[str]) -> dict[str, int]:
    if source.key == "email":
        return ids_by_key(conn, keys, [])
    return ids_by_key(conn, [], keys)


def _join_list(conn: Connection, list_name: str, changes: list[ContactChange]) -> int:
    """Put every contact these rows name on the list (state active when it joins)."""
    ids = ids_by_key(
        conn, [c.email for c in changes if c.email], [c.phone for c in changes if c.phone]
    )
    named = {i for c in changes for k in (c.email, c.phone) if k and (i := ids.get(k))}
    if not named:
        return 0
    members: set[int] = set()
    for chunk in chunks(sorted(named)):
        members.update(
            conn.execute(
                select(col(Membership.contact_id)).where(
                    col(Membership.list_name) == list_name, col(Membership.contact_id).in_(chunk)
                )
            ).scalars()
        )
    joining = sorted(named - members)
    for chunk in chunks(joining):
        conn.execute(
            insert(Membership),
            [{"contact_id": i, "list_name": list_name, "state": "active"} for i in chunk],
        )
    return len(joining)


def _leave_list(conn: Connection, list_name: str, leaving: list[int]) -> None:
    for chunk in chunks(leaving):
        conn.execute(
            delete(Membership).where(
                col(Membership.list_name) == list_name, col(Membership.contact_id).in_(chunk)
            )
        )


def _next_read(
    source: SourceConfig,
    last: LastRead,
    diff: _Diff,
    report: SourceReport,
    at: float,
) -> LastRead:
    encoded = encode_cursor(diff.cursor) if source.cursor_column else None
    return LastRead(
        generation=last.generation + 1,
        last_read_at=at,
        last_success_at=at,
        last_full_at=at if diff.full else last.last_full_at,
        cursor=encoded if encoded is not None else last.cursor,
        mode=report.mode,
        rows=report.rows,
        created=report.created,
        updated=report.updated,
        removed=report.removed,
        unchanged=report.unchanged,
        rejected=len(report.rejected),
        seconds=0.0,  # set once the read is committed (_record_seconds)
        error="",
    )


def _record_failure(engine: Engine, source: SourceConfig, error: str, at: float, s: float) -> None:
    """Keep the failure for ``syncd status``; rows, fingerprints and cursor stay as they were."""
    with engine.begin() as conn:
        last = last_read(conn, source.name)
        save_read(
            conn,
            source.name,
            replace(last, last_read_at=at, seconds=s, error=error[:2000]),
        )


def _record_seconds(engine: Engine, source: SourceConfig, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(SourceRun).where(col(SourceRun.source) == source.name).values(seconds=seconds)
        )


def _lists_of(conn: Connection, changes: Sequence[ContactChange]) -> set[str]:
    """The local lists of the contacts these rows name (by email or phone), now."""
    names: set[str] = set()
    for column, keys in (
        (Contact.email, sorted({c.email for c in changes if c.email is not None})),
        (Contact.phone, sorted({c.phone for c in changes if c.phone is not None})),
    ):
        for start in range(0, len(keys), 500):
            names.update(
                conn.execute(
                    select(col(Membership.list_name))
                    .join(Contact, col(Contact.id) == col(Membership.contact_id))
                    .where(col(column).in_(keys[start : start + 500]))
                    .distinct()
                ).scalars()
            )
    return names
