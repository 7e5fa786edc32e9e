"""The watched inbox: contact files dropped in a folder enter the mirror exactly once.

The daemon builds one ``Inbox`` and calls ``start()`` (a watchdog observer on the folder),
``scan()`` (every file already waiting, oldest first) and, at the end, ``stop()``. Call ``start()``
before ``scan()``: a file renamed into the folder between a scan and the start of the observer
would otherwise wait for the next restart (a file seen twice is harmless: it is gone the second
time).

Which files
-----------
Only the top level of the folder; ``processed/`` and ``failed/`` (created with it) and any other
subfolder are never read. Accepted: ``*.csv``, ``*.ndjson``, ``*.jsonl``, ``*.json``. Ignored as
partial or foreign: dot-files, names ending ``.tmp``, ``.part``, ``.partial``, ``.swp`` or ``~``,
and ``*.report.json`` (a report copied back is not a contact file).

A file is taken only once its writer is done: on close-after-write (``FileClosedEvent``, Linux
inotify) or when it is moved or renamed into the folder (``FileMovedEvent``; on Linux the
observer reports a move from another folder as a move, not a creation). "Modified" and
"created" events are ignored, so a file written slowly in pieces is read once it is closed. On
platforms without close events only renames (and ``scan()``) bring files in: write beside and
rename, which is the safe way everywhere.

Events are debounced: each one restarts a ``config.daemon.debounce`` timer; when it fires, one
pass takes every file noticed so far, oldest first (mtime, then name), and then calls
``on_applied`` ONCE with the local lists whose membership or members changed (only when at
least one file was applied in that pass). ``scan()`` is a pass over every eligible file in the
folder and calls ``on_applied`` the same way, in the caller's thread; the debounced passes call it
from the timer thread. ``metrics_hook("processed" | "failed")`` is called once per file.

Per file
--------
The rows are read and checked (``ingest.read_rows`` / ``ingest.validate``), then applied in ONE
transaction together with a ledger row (``IngestedFile``), then the file is moved to
``processed/`` with ``NAME.report.json`` beside it (the ``IngestReport`` dict plus
``ingested_at``). It goes to ``failed/`` instead, with the reason in ``error``, when nothing in it
could apply: it is unreadable (``IngestError``), every row was rejected, or a snapshot trips the
mass-delete guard. A name already taken in the destination gets a numeric suffix
(``contacts-1.csv``); nothing is ever overwritten. Bad rows of a file that otherwise applies are
listed by line in its report, and the file goes to ``processed/``.

Errors never leave the watcher's threads: a file that fails for another reason (the store is
unreachable, a disk error) is logged with its name and the reason, stays in the inbox and is
tried again with the next pass or at the next start. An unexpected error while the file is read
and checked (before any write) is the file's own and would recur: it goes to ``failed/``.

One transaction
---------------
``ingest.apply`` opens its own unit of work with ``Session(bind)``. Given a ``Connection`` that
is already inside a transaction instead of an ``Engine``, SQLAlchemy joins that transaction
(``join_transaction_mode="conservative_savepoint"``, the default): the session's commit does not
commit it and its rollback rolls it back. ``Inbox`` opens ``engine.begin()``, writes the ledger
row, applies the rows through that connection, does a snapshot's membership removals, checks the
guard, and commits once. The tests check that a refused snapshot leaves its rows unapplied.

Snapshots
---------
``LIST.snapshot.csv`` (or ``.ndjson``, ``.jsonl``, ``.json``) replaces the membership of the local
list ``LIST``: its rows apply as usual and each contact they touch is put on ``LIST`` (whatever
its ``lists`` column says otherwise); members of ``LIST`` the snapshot does not name leave the list
(the membership only; the contact stays). A member named by a rejected row stays: a bad row is no
statement that the contact left. Explicit ``delete`` rows are deletions, not counted as leaving.
Mass-delete guard (DESIGN §3 rule 2): if more than 10 members would leave and that is more than
the smallest ``max_delete_fraction`` among the targets fed by ``LIST`` (0.2 when no target is)
of the members before the file, nothing applies and the file goes to ``failed/``.

Exactly once across crashes (DESIGN §3 rule 6)
----------------------------------------------
The ledger row (content sha256, name, size, the name reserved in ``processed/``, the report, the
lists changed) commits in the same transaction as the rows, unsettled. Afterwards the file is
moved, its report written (temp file + rename), and the row marked settled. For a process killed
at any instant (SIGKILL):

- before the commit: the database rolls the transaction back; the file is still in the inbox and
  the next start applies it.
- after the commit, before the move: at the next start the file's sha256 AND name match an
  unsettled ledger row, so it is NOT applied again; it is moved to the reserved name and its
  report written from the ledger (with ``"recovered": true``), then the row is settled.
- after the move, before the report or the settling: ``scan()`` ends with a sweep of unsettled
  rows whose file is no longer in the inbox: the missing report is written from the ledger and
  the row settled.
- the move is a hard link then an unlink of the original (a plain rename where hard links are not
  supported): it never replaces a file, and a crash between the two leaves both names for one
  file, which recovery recognises (same file) and finishes by removing the inbox name.

What remains:

- Power loss or an OS crash (not a process crash): the mirror's SQLite runs ``synchronous=NORMAL``
  in WAL mode, which can lose the last commits. Directories are fsynced after each move, but a
  lost commit whose file was already moved leaves the file in ``processed/`` with its rows not
  applied. With PostgreSQL, or SQLite ``synchronous=FULL``, this window closes.
- Identity is content plus name. If, while the daemon is down after a crash between commit and
  move, the same bytes are dropped again under the same name, the two are one file to the inbox
  and apply once. Bytes changed in place after the writer closed the file are not supported.
- Settled rows stay as a record (one row per distinct content, the last time it applied) and do
  not stop the same content being applied again later: a nightly export identical to
  yesterday's must still re-assert its values and memberships.
- A file bound for ``failed/`` has no ledger row (nothing of it applied): a crash between its
  move and its report leaves it in ``failed/`` without a report. Nothing was applied, so nothing
  is lost; dropping it again shows the reason.
- One daemon per inbox folder: two processes watching the same folder are not coordinated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, SQLModel, col
from watchdog.events import (
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from syncd.config import Config, TargetConfig
from syncd.errors import IngestError
from syncd.ingest.check import ContactChange, Rejection, validate
from syncd.ingest.read import read_rows
from syncd.ingest.write import IngestReport, apply
from syncd.store.models import Contact, Membership

log = logging.getLogger("syncd.inbox")

#: How long a file found at start-up must have been left alone before the scan takes it.
SETTLE_SECONDS = 2.0

ACCEPTED_SUFFIXES = (".csv", ".ndjson", ".jsonl", ".json")
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".swp", "~")
REPORT_SUFFIX = ".report.json"
SNAPSHOT_MARK = ".snapshot"
MASS_DELETE_MIN = 10  # a snapshot may always remove this many members
CHUNK = 500  # keys per IN (...) query

Status = Literal["processed", "failed"]
_T = TypeVar("_T")


class IngestedFile(SQLModel, table=True):
    """The ledger: one row per applied file content, written in the file's own transaction."""

    __tablename__ = "ingested_file"
    sha256: str = Field(primary_key=True)
    name: str
    size: int
    applied_at: str
    dest: str = ""  # the name reserved in processed/
    lists: str = "[]"  # JSON: the local lists the file changed
    report: str = "{}"  # JSON: the report written beside the file
    settled_at: str | None = None  # set once the file and its report are in processed/


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What became of one file: where it is now, its report, the lists it changed."""

    name: str
    status: Status
    path: Path
    report: dict[str, Any]
    lists: frozenset[str] = frozenset()
    recovered: bool = False


class _Refused(Exception):
    """Nothing of the file may apply: the transaction rolls back and the file goes to failed/."""

    def __init__(self, reason: str, report: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.report = report


def eligible(name: str) -> bool:
    """Whether a file name in the inbox is a finished contact file to take."""
    lower = name.lower()
    if name.startswith(".") or lower.endswith(PARTIAL_SUFFIXES) or lower.endswith(REPORT_SUFFIX):
        return False
    return lower.endswith(ACCEPTED_SUFFIXES)


def snapshot_list(name: str) -> str | None:
    """``news.snapshot.csv`` -> ``news``; None for an ordinary file."""
    lower = name.lower()
    for suffix in ACCEPTED_SUFFIXES:
        mark = SNAPSHOT_MARK + suffix
        if lower.endswith(mark) and len(name) > len(mark):
            return name[: -len(mark)]
    return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _chunks(items: Sequence[_T], size: int = CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every platform or filesystem can sync a directory
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write whole or not at all: a temp file beside, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _move_no_replace(src: Path, dest: Path) -> bool:
    """Move ``src`` to ``dest`` unless ``dest`` exists (then False). Never overwrites."""
    try:
        os.link(src, dest)
    except FileExistsError:
        return False
    except OSError:
        # No hard links here (some network or FUSE filesystems): check, then rename.
        if os.path.lexists(dest):
            return False
        os.rename(src, dest)
        return True
    os.unlink(src)
    return True


def _empty_report(name: str) -> dict[str, Any]:
    return IngestReport(file=name).to_dict()


def _mass_delete_fraction(config: Config, list_name: str) -> tuple[float, list[str]]:
    fed = [t for t in config.target if t.local_list_name == list_name]
    if not fed:
        default = TargetConfig.model_fields["max_delete_fraction"].default
        return float(default), []
    return min(t.max_delete_fraction for t in fed), [t.name for t in fed]


class _Handler(FileSystemEventHandler):
    def __init__(self, inbox: Inbox) -> None:
        super().__init__()
        self._inbox = inbox

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            if event.is_directory:
                return
            if isinstance(event, FileMovedEvent):
                raw = event.dest_path
            elif isinstance(event, FileClosedEvent):
                raw = event.src_path
            else:
                return  # created / modified / opened: the writer may not be done
            if raw:
                self._inbox._notice(Path(os.fsdecode(raw)))
        except Exception:
            log.exception("inbox: could not handle the event %r", event)


def _make_observer() -> BaseObserver:
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        # full events: a file moved in from another folder is a move, not a creation
        return InotifyObserver(generate_full_events=True)
    return Observer()


@dataclass(frozen=True, slots=True)
class _Applied:
    report: dict[str, Any]
    lists: frozenset[str]


class Inbox:
    """The watched inbox folder (see the module docstring for the rules)."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        on_applied: Callable[[set[str]], None],
        metrics_hook: Callable[[str], None] | None = None,
        *,
        settle: float = SETTLE_SECONDS,
    ) -> None:
        self.engine = engine
        self.settle = settle
        self.config = config
        self.path = Path(config.inbox.path).resolve()
        self.processed = self.path / "processed"
        self.failed = self.path / "failed"
        for folder in (self.path, self.processed, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        SQLModel.metadata.create_all(engine, tables=[SQLModel.metadata.tables["ingested_file"]])
        self._on_applied = on_applied
        self._metrics_hook = metrics_hook
        self._debounce = config.daemon.debounce
        self._lock = threading.Lock()  # guards the fields below
        self._work = threading.Lock()  # one pass at a time
        self._pending: set[Path] = set()
        self._retry: set[Path] = set()
        self._timers: list[threading.Timer] = []
        self._settle_timers: list[threading.Timer] = []
        self._observer: BaseObserver | None = None
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Watch the folder (a watchdog observer thread); idempotent."""
        with self._lock:
            if self._observer is not None:
                return
            self._stopping.clear()
            observer = _make_observer()
            observer.name = "syncd-inbox-observer"
            observer.daemon = True
            observer.schedule(
                _Handler(self),
                str(self.path),
                recursive=False,
                event_filter=[FileClosedEvent, FileMovedEvent],
            )
            observer.start()
            self._observer = observer
        log.info("watching the inbox %s", self.path)

    def stop(self) -> None:
        """Stop watching and wait for the pass in flight to finish its current file.

        Files noticed but not yet taken stay in the inbox for the next ``scan()``.
        """
        with self._lock:
            observer, self._observer = self._observer, None
            self._stopping.set()
            timers, self._timers = self._timers + self._settle_timers, []
            self._settle_timers = []
        if observer is not None:
            observer.stop()
            observer.join()
        for timer in timers:
            timer.cancel()
        for timer in timers:
            timer.join()

    def scan(self) -> list[FileOutcome]:
        """Ingest every waiting file now, oldest first; then settle leftovers of a crash.

        Per-file errors are logged, never raised; an unreadable inbox folder raises ``OSError``.
        """
        with self._work:
            with self._lock:
                self._retry.clear()
            paths = [p for p in self.path.iterdir() if eligible(p.name) and p.is_file()]
            settled = [p for p in paths if not self._still_fresh(p)]
            outcomes = self._pass(settled, interruptible=False)
            try:
                self._sweep_ledger()
            except Exception:
                log.exception("inbox: could not settle the ledger of earlier runs")
        return outcomes

    # -- files still being written at start-up ---------------------------------------------

    def _still_fresh(self, path: Path) -> bool:
        """A file modified moments ago may still be open for writing: no close event can have
        reached a watcher that was not running yet, so the scan must not take it. It is
        left to the watcher's close event, and re-checked once it has been quiet for
        ``settle`` seconds (for a writer that closed just before the watch began)."""
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return True
        if time.time() - mtime >= self.settle:
            return False
        self._recheck_later(path, mtime)
        return True

    def _recheck_later(self, path: Path, mtime: float) -> None:
        def recheck() -> None:
            try:
                now_mtime = path.stat().st_mtime
            except FileNotFoundError:
                return  # taken by the watcher meanwhile
            if now_mtime != mtime:
                self._recheck_later(path, now_mtime)  # still growing: wait for quiet again
            else:
                self._notice(path)

        timer = threading.Timer(self.settle, recheck)
        timer.name = "syncd-inbox-settle"
        timer.daemon = True
        with self._lock:
            if self._stopping.is_set():
                return
            # not in self._timers: a new event cancels the debounce timers, never these
            self._settle_timers = [t for t in self._settle_timers if t.is_alive()]
            self._settle_timers.append(timer)
        timer.start()

    # -- events and the debounce timer ----------------------------------------------------

    def _notice(self, path: Path) -> None:
        if path.parent != self.path or not eligible(path.name):
            return
        with self._lock:
            if self._stopping.is_set():
                return
            self._pending.add(path)
            for timer in self._timers:
                timer.cancel()  # no effect on a timer that already fired
            self._timers = [t for t in self._timers if t.is_alive()]
            timer = threading.Timer(self._debounce, self._on_timer)
            timer.name = "syncd-inbox-debounce"
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def _on_timer(self) -> None:
        try:
            with self._lock:
                if self._stopping.is_set():
                    return
                paths = self._pending | self._retry
                self._pending, self._retry = set(), set()
            with self._work:
                self._pass(paths, interruptible=True)
        except Exception:
            log.exception("inbox: a pass failed")

    # -- a pass ----------------------------------------------------------------------------

    def _pass(self, paths: Iterable[Path], *, interruptible: bool) -> list[FileOutcome]:
        outcomes: list[FileOutcome] = []
        for path in self._oldest_first(paths):
            if interruptible and self._stopping.is_set():
                break  # the rest stay in the inbox for the next start
            outcome = self._handle(path)
            if outcome is not None:
                outcomes.append(outcome)
        applied = [o for o in outcomes if o.status == "processed"]
        if applied:
            lists: set[str] = set().union(*(o.lists for o in applied))
            try:
                self._on_applied(lists)
            except Exception:
                log.exception("inbox: on_applied failed for lists %s", sorted(lists))
        return outcomes

    @staticmethod
    def _oldest_first(paths: Iterable[Path]) -> list[Path]:
        found: list[tuple[int, str, Path]] = []
        for path in set(paths):
            try:
                found.append((path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:
                continue  # taken already, or removed by its writer
        return [path for _, _, path in sorted(found)]

    def _handle(self, path: Path) -> FileOutcome | None:
        try:
            outcome = self._process(path)
        except FileNotFoundError as exc:
            log.info("inbox: %s is gone (%s); nothing to do", path.name, exc)
            return None
        except Exception as exc:
            log.exception("inbox: %s not ingested, left in the inbox to retry: %s", path.name, exc)
            with self._lock:
                self._retry.add(path)
            return None
        if outcome.status == "processed":
            r = outcome.report
            log.info(
                "inbox: %s processed%s: %s rows, %s created, %s updated, %s deleted, "
                "%s unchanged, %s rejected",
                outcome.name,
                " (recovered after a restart, not applied again)" if outcome.recovered else "",
                r.get("rows"),
                r.get("created"),
                r.get("updated"),
                r.get("deleted"),
                r.get("unchanged"),
                len(r.get("rejected", [])),
            )
        else:
            log.warning("inbox: %s failed: %s", outcome.name, outcome.report.get("error"))
        if self._metrics_hook is not None:
            try:
                self._metrics_hook(outcome.status)
            except Exception:
                log.exception("inbox: metrics hook failed")
        return outcome

    # -- one file --------------------------------------------------------------------------

    def _process(self, path: Path) -> FileOutcome:
        name = path.name
        try:
            digest, size = _sha256(path)
        except FileNotFoundError:
            raise
        except OSError as exc:
            return self._fail(path, _empty_report(name), f"cannot be read: {exc.strerror or exc}")

        pending = self._unsettled(digest, name)
        if pending is not None:
            return self._recover(path, pending)

        log.debug("inbox: ingesting %s", name)
        snapshot = snapshot_list(name)
        if snapshot is not None and (snapshot != snapshot.strip() or "," in snapshot):
            reason = f"snapshot list name {snapshot!r} has a comma or surrounding spaces"
            return self._fail(path, _empty_report(name), reason)
        try:
            changes, rejected = validate(read_rows(path), self.config.ingest)
        except IngestError as exc:
            return self._fail(path, _empty_report(name), str(exc))
        except Exception as exc:
            # Reading and checking touch nothing but the file: a failure here is a reader bug
            # that the same bytes would hit again on every pass, so the file is set aside
            # rather than retried for ever.
            log.exception("inbox: %s could not be read", name)
            reason = f"could not be read: {type(exc).__name__}: {exc}"
            return self._fail(path, _empty_report(name), reason)

        rows = len(changes) + len(rejected)
        if not changes and rejected:
            report = IngestReport(file=name, rows=rows, rejected=rejected).to_dict()
            return self._fail(path, report, f"nothing applied: all {rows} rows were rejected")
        if not changes and snapshot is None:  # an empty file: nothing to apply, nothing wrong
            report = {**_empty_report(name), "ingested_at": _now()}
            dest = self._finish(path, self.processed, self._reserve(self.processed, name), report)
            return FileOutcome(name, "processed", dest, report)

        reserved = self._reserve(self.processed, name)
        try:
            applied = self._apply(digest, name, size, reserved, changes, rejected, snapshot)
        except _Refused as refused:
            return self._fail(path, refused.report, refused.reason)
        dest = self._finish(path, self.processed, reserved, applied.report)
        self._settle(digest)
        return FileOutcome(name, "processed", dest, applied.report, applied.lists)

    def _apply(
        self,
        digest: str,
        name: str,
        size: int,
        reserved: str,
        changes: list[ContactChange],
        rejected: list[Rejection],
        snapshot: str | None,
    ) -> _Applied:
        """Rows, snapshot removals and the ledger row: one transaction (see the docstring)."""
        rows = len(changes) + len(rejected)
        with self.engine.begin() as conn:
            # The ledger write comes first: on SQLite it takes the write lock, so every read
            # below sees the state this transaction commits on top of.
            conn.execute(delete(IngestedFile).where(col(IngestedFile.sha256) == digest))
            conn.execute(
                insert(IngestedFile).values(
                    sha256=digest, name=name, size=size, applied_at=_now(), dest=reserved
                )
            )
            members_before = 0 if snapshot is None else _member_count(conn, snapshot)
            before = _lists_of(conn, changes)
            # Joins this transaction: apply's session neither commits nor outlives it.
            result = apply(cast(Engine, conn), changes)
            apply_rejected = list(result.rejected)
            result.file = name
            result.rows = rows
            result.rejected = sorted(rejected + apply_rejected, key=lambda r: r.line)
            applied = result.created + result.updated + result.deleted + result.unchanged
            if applied == 0 and rows > 0:
                report = IngestReport(file=name, rows=rows, rejected=result.rejected).to_dict()
                raise _Refused(f"nothing applied: all {rows} rows were rejected", report)

            lists = before | _lists_of(conn, changes)
            lists |= {n for c in changes if c.lists is not None for n in c.lists}
            report = result.to_dict()
            if snapshot is not None:
                removed = self._replace_members(
                    conn, snapshot, members_before, changes, rejected, apply_rejected, result
                )
                lists.add(snapshot)
                report["snapshot"] = {"list": snapshot, "removed": removed}
            report["ingested_at"] = _now()
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
        changes: list[ContactChange],
        rejected: list[Rejection],
        apply_rejected: list[Rejection],
        result: IngestReport,
    ) -> int:
        """Put every contact the snapshot touched on the list; take the others off it."""
        refused_lines = {r.line for r in apply_rejected}
        kept = [c for c in changes if not c.delete and c.line not in refused_lines]
        ids = _ids_by_key(
            conn, [c.email for c in kept if c.email], [c.phone for c in kept if c.phone]
        )
        touched = {
            ids[c.email if c.email is not None else cast(str, c.phone)]
            for c in kept
            if (c.email if c.email is not None else c.phone) in ids
        }
        # A bad row is no statement that its contact left the list.
        protected_keys = {r.key for r in rejected if r.key}
        protected_keys |= {
            k for c in changes if c.line in refused_lines for k in (c.email, c.phone) if k
        }
        keys = sorted(protected_keys)
        protected = set(_ids_by_key(conn, keys, keys).values())
        current = set(
            conn.execute(
                select(col(Membership.contact_id)).where(col(Membership.list_name) == list_name)
            ).scalars()
        )
        leaving = sorted(current - touched - protected)
        fraction, targets = _mass_delete_fraction(self.config, list_name)
        if len(leaving) > MASS_DELETE_MIN and len(leaving) > fraction * members_before:
            fed = f"targets {', '.join(targets)}" if targets else "the default"
            reason = (
                f"mass-delete guard: the snapshot would remove {len(leaving)} of the "
                f"{members_before} members of list {list_name!r} "
                f"({len(leaving) / members_before:.0%}), more than the {fraction:.0%} allowed "
                f"by {fed} (max_delete_fraction); nothing was applied"
            )
            report = IngestReport(result.file, result.rows, rejected=result.rejected).to_dict()
            report["snapshot"] = {"list": list_name, "removed": 0, "would_remove": len(leaving)}
            raise _Refused(reason, report)
        for chunk in _chunks(leaving):
            conn.execute(
                delete(Membership).where(
                    col(Membership.list_name) == list_name, col(Membership.contact_id).in_(chunk)
                )
            )
        joining = sorted(touched - current)
        if joining:
            conn.execute(
                insert(Membership), [{"contact_id": i, "list_name": list_name} for i in joining]
            )
        return len(leaving)

    # -- moving files ------------------------------------------------------------------------

    @staticmethod
    def _reserve(folder: Path, name: str) -> str:
        """The first free name: ``name``, then ``stem-1.ext``, ``stem-2.ext``, ..."""
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = name, 0
        while os.path.lexists(folder / candidate) or os.path.lexists(
            folder / f"{candidate}{REPORT_SUFFIX}"
        ):
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        return candidate

    def _finish(self, path: Path, folder: Path, name: str, report: dict[str, Any]) -> Path:
        """Move the file to ``folder/name`` (or the next free name) and write its report."""
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / name
        if not _move_no_replace(path, dest):
            if os.path.exists(dest) and os.path.samefile(path, dest):
                path.unlink()  # a crash between link and unlink: finish the move
            else:
                name = self._reserve(folder, path.name)
                dest = folder / name
                if not _move_no_replace(path, dest):
                    raise FileExistsError(f"{dest} appeared while moving {path.name}")
        _fsync_dir(folder)
        _fsync_dir(path.parent)
        _write_json(folder / f"{name}{REPORT_SUFFIX}", report)
        return dest

    def _fail(self, path: Path, report: dict[str, Any], reason: str) -> FileOutcome:
        report = {**report, "error": reason, "ingested_at": _now()}
        dest = self._finish(path, self.failed, self._reserve(self.failed, path.name), report)
        return FileOutcome(path.name, "failed", dest, report)

    # -- the ledger --------------------------------------------------------------------------

    def _unsettled(self, digest: str, name: str) -> IngestedFile | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(IngestedFile).where(
                        col(IngestedFile.sha256) == digest,
                        col(IngestedFile.name) == name,
                        col(IngestedFile.settled_at).is_(None),
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else IngestedFile.model_validate(dict(row))

    def _recover(self, path: Path, row: IngestedFile) -> FileOutcome:
        """Applied before a crash, never moved: move it now, apply nothing."""
        report = {**json.loads(row.report), "recovered": True}
        dest = self._finish(path, self.processed, row.dest or path.name, report)
        self._settle(row.sha256)
        lists = frozenset(json.loads(row.lists))
        return FileOutcome(path.name, "processed", dest, report, lists, recovered=True)

    def _settle(self, digest: str) -> None:
        """Mark the ledger row done. A failure here is only logged: the file and its report are
        in place, and the sweep of the next ``scan()`` settles the row."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(IngestedFile)
                    .where(col(IngestedFile.sha256) == digest)
                    .values(settled_at=_now())
                )
        except Exception:
            log.exception("inbox: could not settle the ledger row %s; the next start will", digest)

    def _sweep_ledger(self) -> None:
        """Unsettled rows whose file left the inbox: write a missing report, then settle."""
        with self.engine.connect() as conn:
            rows = [
                IngestedFile.model_validate(dict(r))
                for r in conn.execute(
                    select(IngestedFile).where(col(IngestedFile.settled_at).is_(None))
                ).mappings()
            ]
        for row in rows:
            if (self.path / row.name).exists():
                continue  # still waiting: its move failed this time; the next pass retries
            moved = self.processed / row.dest
            report_path = self.processed / f"{row.dest}{REPORT_SUFFIX}"
            if not row.dest or not moved.exists():
                log.info(
                    "inbox: %s was applied but is neither in the inbox nor in processed/ "
                    "(removed by hand?); nothing to do",
                    row.name,
                )
            elif not report_path.exists():
                _write_json(report_path, {**json.loads(row.report), "recovered": True})
                log.info("inbox: wrote the missing report of %s after a restart", row.dest)
            self._settle(row.sha256)


# -- queries -------------------------------------------------------------------------------


def _lists_of(conn: Connection, changes: Sequence[ContactChange]) -> set[str]:
    """The local lists of the contacts these rows name (by email or phone), now."""
    names: set[str] = set()
    for column, keys in (
        (Contact.email, sorted({c.email for c in changes if c.email is not None})),
        (Contact.phone, sorted({c.phone for c in changes if c.phone is not None})),
    ):
        for chunk in _chunks(keys):
            names.update(
                conn.execute(
                    select(col(Membership.list_name))
                    .join(Contact, col(Contact.id) == col(Membership.contact_id))
                    .where(col(column).in_(chunk))
                    .distinct()
                ).scalars()
            )
    return names


def _ids_by_key(conn: Connection, emails: Sequence[str], phones: Sequence[str]) -> dict[str, int]:
    """Live contacts' ids by email and by phone (one dict: emails and phones never collide)."""
    found: dict[str, int] = {}
    for column, keys in (
        (Contact.email, sorted(set(emails))),
        (Contact.phone, sorted(set(phones))),
    ):
        for chunk in _chunks(keys):
            for key, contact_id in conn.execute(
                select(col(column), col(Contact.id)).where(
                    col(column).in_(chunk), col(Contact.deleted).is_(False)
                )
            ):
                if key is not None and contact_id is not None:
                    found[key] = contact_id
    return found


def _member_count(conn: Connection, list_name: str) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(Membership)
            .where(col(Membership.list_name) == list_name)
        ).scalar_one()
    )


__all__ = ["FileOutcome", "Inbox", "IngestedFile", "eligible", "snapshot_list"]
