"""One inbox file into the mirror: its rows, its snapshot and its ledger row in one transaction.

Per file
--------
The rows are read, checked and applied as they are read (``ingest.read_rows`` /
``ingest.checked`` / ``ingest.apply_stream``), in ONE transaction together with a ledger row
(``IngestedFile``), then the file is moved to
``processed/`` with ``NAME.report.json`` beside it (the ``IngestReport`` dict plus
``ingested_at``). It goes to ``failed/`` instead, with the reason in ``error``, when nothing in it
could apply: it is unreadable (``IngestError``), every row was rejected, or a snapshot trips the
mass-delete guard. Bad rows of a file that otherwise applies are listed by line in its report,
and the file goes to ``processed/``. An unexpected error while the file is read and checked
(whatever rows were written before it roll back) is the file's own and would recur: it goes to
``failed/`` too. Any other error
leaves the file in the inbox for the next pass (see ``syncd.local.inbox``).

One transaction
---------------
``FileApplier`` opens ``engine.begin()``, writes the ledger row, and hands that connection to
``ingest.apply_stream``, which joins its transaction (it commits nothing itself); then it does
a snapshot's membership removals, checks the guard, and commits once. Any error before that
commit, an unreadable line late in a big file included, rolls everything back. The tests check
that a refused snapshot leaves its rows unapplied.

Only regular files
------------------
A file is looked at with ``lstat`` (links not followed) and opened with ``O_NOFOLLOW`` and
``O_NONBLOCK``, then checked again with ``fstat``, so nothing in the inbox can make a pass block
or read outside the inbox: a symbolic link (wherever it points), a FIFO, a socket or a device
goes to ``failed/`` with a report naming what it is, unread and unopened (a FIFO renamed in
would otherwise block the pass, and every file after it, on an open or read with no writer).
Where such an entry cannot be moved (the filesystem refuses), it is left in place with a log
line. A folder is never taken.

Snapshots
---------
``LIST.snapshot.csv`` (or ``.ndjson``, ``.jsonl``, ``.json``) replaces the membership of the local
list ``LIST``: its rows apply as usual and each contact they touch is put on ``LIST`` (whatever
its ``lists`` column says otherwise); members of ``LIST`` the snapshot does not name leave the list
(the membership only; the contact stays). A member that stays keeps its state on ``LIST`` (active,
or unsubscribed from that list) unless its row's ``unsubscribed_lists`` says otherwise; a contact
that joins starts active, or unsubscribed when its row names ``LIST`` in ``unsubscribed_lists``.
A member named by a rejected row stays: a bad row is no statement that the contact left.
Explicit ``delete`` rows are deletions, not counted as leaving. The contacts the rows touched
and those bad rows name are kept in scratch tables of the transaction, chunk by chunk, so a
snapshot of a million rows costs no more memory than a small one. Mass-delete guard (DESIGN §3
rule 2): if more than 10 members would leave and that is more than the smallest
``max_delete_fraction`` among the targets fed by ``LIST`` (0.2 when no target is) of the members
before the file, nothing applies and the file goes to ``failed/`` (the guard and the member
queries are ``syncd.local.members``, shared with a source's full read).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, cast

from sqlalchemy import delete, insert, text, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from syncd.clock import stamp
from syncd.config import Config
from syncd.errors import IngestError
from syncd.local.inbox.ledger import FileOutcome, Ledger, snapshot_list
from syncd.local.ingest.check import Checked, Claim, ContactChange, Rejection, checked
from syncd.local.ingest.read import read_rows
from syncd.local.ingest.write import IngestReport, apply_stream
from syncd.local.members import ids_by_key, mass_delete_refusal, member_count
from syncd.store import mirror
from syncd.store.models import IngestedFile

log = logging.getLogger("syncd.local.inbox")


class _Refused(Exception):
    """Nothing of the file may apply: the transaction rolls back and the file goes to failed/."""

    def __init__(self, reason: str, report: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.report = report


_KINDS = {
    stat.S_IFLNK: "a symbolic link (links are never followed)",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


def _kind(mode: int) -> str | None:
    """None for a regular file; otherwise what the entry is, for its report."""
    if stat.S_ISREG(mode):
        return None
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


class _NotRegular(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading without following a link and without blocking; what was
    swapped in since the ``lstat`` raises ``_NotRegular``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        if os.path.islink(path):  # ELOOP from O_NOFOLLOW
            raise _NotRegular(_KINDS[stat.S_IFLNK]) from None
        raise
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise _NotRegular(kind)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _sha256(handle: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while block := handle.read(1 << 20):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _empty_report(name: str) -> dict[str, Any]:
    return IngestReport(file=name).to_dict()


@dataclass(frozen=True, slots=True)
class _Applied:
    report: dict[str, Any]
    lists: frozenset[str]


class FileApplier:
    """Takes one file: checks it, applies it with its ledger row, and hands it to the ledger."""

    def __init__(self, engine: Engine, config: Config, ledger: Ledger) -> None:
        self.engine = engine
        self.config = config
        self.ledger = ledger

    def process(self, path: Path) -> FileOutcome | None:
        """Take one inbox entry; None when it is left where it is (a folder, or an entry that is
        not a regular file and cannot be moved). ``FileNotFoundError`` when it is gone."""
        kind = _kind(os.lstat(path).st_mode)
        if kind is None:
            try:
                handle = _open_regular(path)
            except _NotRegular as exc:
                kind = exc.kind
            except FileNotFoundError:
                raise
            except OSError as exc:
                reason = f"cannot be read: {exc.strerror or exc}"
                return self.ledger.fail(path, _empty_report(path.name), reason)
        if kind is not None:
            return self._set_aside(path, kind)
        with handle:
            return self._process(path, handle)

    def _set_aside(self, path: Path, kind: str) -> FileOutcome | None:
        """An entry that is not a regular file: to ``failed/`` unread, or left with a log line."""
        if kind == _KINDS[stat.S_IFDIR]:
            log.info("inbox: %s is a folder; folders in the inbox are never read", path.name)
            return None
        reason = f"not a regular file: {kind}; only regular files are taken"
        try:
            return self.ledger.fail(path, _empty_report(path.name), reason)
        except FileNotFoundError:
            raise
        except OSError as exc:
            log.warning(
                "inbox: %s is %s, not a regular file, and cannot be moved to failed/ (%s); "
                "it is ignored: remove it from the inbox",
                path.name,
                kind,
                exc.strerror or exc,
            )
            return None

    def _process(self, path: Path, handle: BinaryIO) -> FileOutcome:
        name, ledger = path.name, self.ledger
        try:
            digest, size = _sha256(handle)
            handle.seek(0)
        except OSError as exc:
            return ledger.fail(path, _empty_report(name), f"cannot be read: {exc.strerror or exc}")

        pending = ledger.unsettled(digest, name)
        if pending is not None:
            return ledger.recover(path, pending)

        log.debug("inbox: ingesting %s", name)
        snapshot = snapshot_list(name)
        if snapshot is not None and (snapshot != snapshot.strip() or "," in snapshot):
            reason = f"snapshot list name {snapshot!r} has a comma or surrounding spaces"
            return ledger.fail(path, _empty_report(name), reason)
        try:
            ingest = self.config.ingest
            items = checked(read_rows(path, handle, ingest.encoding), ingest)
            # The first record tells an empty file; the rest is read as it is applied.
            first = next(items, None)
        except IngestError as exc:
            return ledger.fail(path, _empty_report(name), str(exc))
        except Exception as exc:
            return self._unreadable(path, exc)
        if first is None and snapshot is None:  # an empty file: nothing to apply, nothing wrong
            report = {**_empty_report(name), "ingested_at": stamp()}
            dest = ledger.finish(
                path, ledger.processed, ledger.reserve(ledger.processed, name), report
            )
            return FileOutcome(name, "processed", dest, report)

        stream: Iterator[Checked] = items if first is None else itertools.chain([first], items)
        if snapshot is not None:
            stream = _onto_snapshot_list(stream, snapshot)
        reserved = ledger.reserve(ledger.processed, name)
        try:
            applied = self._apply(digest, name, size, reserved, stream, snapshot)
        except _Refused as refused:
            return ledger.fail(path, refused.report, refused.reason)
        except IngestError as exc:  # found late in the file: the transaction rolled back
            return ledger.fail(path, _empty_report(name), str(exc))
        dest = ledger.finish(path, ledger.processed, reserved, applied.report)
        ledger.settle(digest)
        return FileOutcome(name, "processed", dest, applied.report, applied.lists)

    def _unreadable(self, path: Path, exc: Exception) -> FileOutcome:
        """Reading and checking touch nothing but the file: a failure there is a reader bug
        that the same bytes would hit again on every pass, so the file is set aside rather
        than retried for ever. Past the first record, the writer turns such a failure into
        an ``IngestError`` (its rows rolled back)."""
        log.error("inbox: %s could not be read", path.name, exc_info=exc)
        reason = f"could not be read: {type(exc).__name__}: {exc}"
        return self.ledger.fail(path, _empty_report(path.name), reason)

    def _apply(
        self,
        digest: str,
        name: str,
        size: int,
        reserved: str,
        items: Iterator[Checked],
        snapshot: str | None,
    ) -> _Applied:
        """Rows, snapshot removals and the ledger row: one transaction (see the docstring)."""
        with self.engine.begin() as conn:
            # The mirror's write lock comes first (SQLite's own, or PostgreSQL's advisory lock
            # that cycles take too): every read below, the member counts of the mass-delete
            # guard included, sees the state this transaction commits on top of.
            mirror.take_write_turn(conn)
            conn.execute(delete(IngestedFile).where(col(IngestedFile.sha256) == digest))
            conn.execute(
                insert(IngestedFile).values(
                    sha256=digest, name=name, size=size, applied_at=stamp(), dest=reserved
                )
            )
            members_before = 0 if snapshot is None else member_count(conn, snapshot)
            seen = None if snapshot is None else _SnapshotSeen(conn)
            # Joins this transaction: nothing of it commits before the whole file is applied.
            result = apply_stream(
                conn,
                items,
                after_chunk=None if seen is None else seen.after_chunk,
                source=f"inbox file {name}",
            )
            result.file = name
            if result.applied == 0 and result.rows > 0:
                report = IngestReport(
                    file=name,
                    rows=result.rows,
                    rejected=result.rejected,
                    rejected_unlisted=result.rejected_unlisted,
                ).to_dict()
                raise _Refused(f"nothing applied: all {result.rows} rows were rejected", report)

            lists = set(result.lists)
            report = result.to_dict()
            if snapshot is not None and seen is not None:
                removed = self._replace_members(conn, snapshot, members_before, seen, result)
                lists.add(snapshot)
                report["snapshot"] = {"list": snapshot, "removed": removed}
            report["ingested_at"] = stamp()
            conn.execute(
                update(IngestedFile)
                .where(col(IngestedFile.sha256) == digest)
                .values(report=json.dumps(report), lists=json.dumps(sorted(lists)))
            )
        return _Applied(report, frozenset(lists))

    def _replace_members(
        self,
        conn: Connection,
        list_name: str,
        members_before: int,
        seen: _SnapshotSeen,
        result: IngestReport,
    ) -> int:
        """Put every contact the snapshot touched on the list; take the others off it."""
        others = (
            "list_name = :list AND contact_id NOT IN (SELECT contact_id FROM snapshot_touched) "
            "AND contact_id NOT IN (SELECT contact_id FROM snapshot_protected)"
        )
        leaving = int(
            conn.execute(
                text(f"SELECT count(*) FROM membership WHERE {others}"), {"list": list_name}
            ).scalar_one()
        )
        reason = mass_delete_refusal(
            self.config, list_name, leaving, members_before, "the snapshot"
        )
        if reason is not None:
            report = IngestReport(
                result.file,
                result.rows,
                rejected=result.rejected,
                rejected_unlisted=result.rejected_unlisted,
            ).to_dict()
            report["snapshot"] = {"list": list_name, "removed": 0, "would_remove": leaving}
            raise _Refused(reason, report)
        conn.execute(text(f"DELETE FROM membership WHERE {others}"), {"list": list_name})
        # Only live contacts join: one the file deleted after touching it stays off every list.
        conn.execute(
            text(
                "INSERT INTO membership (contact_id, list_name, state) "
                "SELECT t.contact_id, :list, 'active' FROM snapshot_touched t "
                "JOIN contact c ON c.id = t.contact_id WHERE NOT c.deleted AND NOT EXISTS "
                "(SELECT 1 FROM membership m WHERE m.contact_id = t.contact_id "
                "AND m.list_name = :same)"
            ),
            # Two parameters: PostgreSQL types each use of one alone, and these two differ.
            {"list": list_name, "same": list_name},
        )
        seen.drop()
        return leaving


class _SnapshotSeen:
    """The contacts a snapshot's rows touched, and those its bad rows name (which stay on the
    list: a bad row is no statement that its contact left), in two scratch tables of the
    file's transaction, filled chunk by chunk."""

    TABLES = ("snapshot_touched", "snapshot_protected")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        postgres = conn.dialect.name == "postgresql"
        temp, after = ("pg_temp", " ON COMMIT DROP") if postgres else ("temp", "")
        for table in self.TABLES:
            conn.execute(text(f"DROP TABLE IF EXISTS {temp}.{table}"))
            conn.execute(
                text(f"CREATE TEMPORARY TABLE {table} (contact_id INTEGER PRIMARY KEY){after}")
            )

    def after_chunk(
        self, _sql: object, changes: list[ContactChange], rejected: list[Rejection]
    ) -> None:
        refused_lines = {r.line for r in rejected}
        kept = [c for c in changes if not c.delete and c.line not in refused_lines]
        ids = ids_by_key(
            self.conn, [c.email for c in kept if c.email], [c.phone for c in kept if c.phone]
        )
        touched = {
            ids[c.email if c.email is not None else cast(str, c.phone)]
            for c in kept
            if (c.email if c.email is not None else c.phone) in ids
        }
        protected_keys = {r.key for r in rejected if r.key}
        protected_keys |= {
            k for c in changes if c.line in refused_lines for k in (c.email, c.phone) if k
        }
        keys = sorted(protected_keys)
        protected = set(ids_by_key(self.conn, keys, keys).values())
        for table, found in zip(self.TABLES, (touched, protected), strict=True):
            if found:
                self.conn.execute(
                    text(f"INSERT INTO {table} (contact_id) VALUES (:id) ON CONFLICT DO NOTHING"),
                    [{"id": i} for i in sorted(found)],
                )

    def drop(self) -> None:
        for table in self.TABLES:
            self.conn.execute(text(f"DROP TABLE {table}"))


def _onto_snapshot_list(items: Iterator[Checked], list_name: str) -> Iterator[Checked]:
    """A snapshot's rows with ``list_name`` added to the ``lists`` they carry.

    A row whose ``lists`` column leaves the snapshot's list out would otherwise take its contact
    off the list and, put back on by the snapshot, lose its state there.
    """
    for item in items:
        if isinstance(item, Claim) and isinstance(item.then, ContactChange):
            change = item.then
            if change.lists is not None and list_name not in change.lists:
                item = replace(item, then=replace(change, lists=change.lists | {list_name}))
        yield item
