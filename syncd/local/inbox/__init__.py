"""The watched inbox: contact files dropped in a folder enter the mirror exactly once.

The daemon builds one ``Inbox`` and calls ``start()`` (a watchdog observer on the folder),
``scan()`` (every file already waiting, oldest first) and, at the end, ``stop()``. Call ``start()``
before ``scan()``: a file renamed into the folder between a scan and the start of the observer
would otherwise wait for the next restart (a file seen twice is harmless: it is gone the second
time).

Which files
-----------
Only the top level of the folder; ``processed/`` and ``failed/`` (created with it, owner-only)
and any other subfolder are never read. Only regular files are read: a link, a FIFO, a socket
or a device with an eligible name goes to ``failed/`` unopened (``syncd.local.inbox.apply``).
Accepted: ``*.csv``, ``*.ndjson``, ``*.jsonl``, ``*.json``. Ignored as
partial or foreign: dot-files, names ending ``.tmp``, ``.part``, ``.partial``, ``.swp`` or ``~``,
and ``*.report.json`` (a report copied back is not a contact file).

A file is taken only once its writer is done: on close-after-write (``FileClosedEvent``, Linux
inotify) or when it is moved or renamed into the folder (``FileMovedEvent``; on Linux the
observer reports a move from another folder as a move, not a creation). "Modified" and
"created" events are ignored (except the creation of a link or a FIFO in place, which has no
writer to wait for and goes straight to ``failed/``), so a file written slowly in pieces is read
once it is closed. On platforms without close events only renames (and ``scan()``) bring files
in: write beside and rename, which is the safe way everywhere.

Events are debounced: each one restarts a ``config.daemon.debounce`` timer; when it fires, one
pass takes every file noticed so far, oldest first (mtime, then name), and then calls
``on_applied`` ONCE with the local lists whose membership or members changed (only when at
least one file was applied in that pass). ``scan()`` is a pass over every eligible file in the
folder and calls ``on_applied`` the same way, in the caller's thread; the debounced passes call it
from the timer thread. ``metrics_hook("processed" | "failed")`` is called once per file.

Errors never leave the watcher's threads: a file that fails for a reason that is not its own
(the store is unreachable, a disk error) is logged with its name and the reason, stays in the
inbox and is tried again with the next pass or at the next start; a file whose content is at
fault goes to ``failed/`` (``syncd.local.inbox.apply`` says when).

What happens to one file, its snapshot rules and the mass-delete guard: ``syncd.local.inbox.apply``.
Where it goes afterwards, and why that holds across crashes: ``syncd.local.inbox.ledger``.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import SQLModel
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from syncd.config import Config
from syncd.local.inbox.apply import FileApplier
from syncd.local.inbox.ledger import FileOutcome, Ledger, eligible, owner_only_folder

log = logging.getLogger("syncd.local.inbox")

#: How long a file found at start-up must have been left alone before the scan takes it.
SETTLE_SECONDS = 2.0
#: How long ``stop()`` waits for the watcher and a pass in flight, unless told otherwise.
STOP_SECONDS = 10.0


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
            elif isinstance(event, FileCreatedEvent) and _not_a_file(event.src_path):
                raw = event.src_path  # a link or FIFO made in place: no writer to wait for
            else:
                return  # created / modified / opened: the writer may not be done
            if raw:
                self._inbox._notice(Path(os.fsdecode(raw)))
        except Exception:
            log.exception("inbox: could not handle the event %r", event)


def _not_a_file(raw: str | bytes) -> bool:
    """Whether a new entry is neither a regular file nor a folder (a link, a FIFO, ...)."""
    try:
        mode = os.lstat(raw).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _make_observer() -> BaseObserver:
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        # full events: a file moved in from another folder is a move, not a creation
        return InotifyObserver(generate_full_events=True)
    return Observer()


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
        self.settle = settle
        self.path = Path(config.inbox.path).resolve()
        self.ledger = Ledger(engine, self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        for folder in (self.ledger.processed, self.ledger.failed):
            owner_only_folder(folder)
        SQLModel.metadata.create_all(engine, tables=[SQLModel.metadata.tables["ingested_file"]])
        self._applier = FileApplier(engine, config, self.ledger)
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
                event_filter=[FileClosedEvent, FileMovedEvent, FileCreatedEvent],
            )
            observer.start()
            self._observer = observer
        log.info("watching the inbox %s", self.path)

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded configuration: ``[ingest]``, the debounce and the targets (the lists
        they feed and their ``max_delete_fraction``) apply from the next file on. The folder
        itself (``[inbox] path``) stays until a restart. Waits for a file being applied."""
        with self._work:
            self._applier.config = config
            with self._lock:
                self._debounce = config.daemon.debounce

    def stop(self, timeout: float = STOP_SECONDS) -> bool:
        """Stop watching and wait, at most ``timeout`` seconds in all, for the pass in flight to
        finish its current file; False when something was still running then.

        Files noticed but not yet taken stay in the inbox for the next ``scan()``. A pass still
        running at the timeout is left to the process's exit, which is a crash to the ledger:
        its file is either applied and moved at the next start, or not applied at all.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            observer, self._observer = self._observer, None
            self._stopping.set()
            timers, self._timers = self._timers + self._settle_timers, []
            self._settle_timers = []
        if observer is not None:
            observer.stop()
            observer.join(max(0.0, deadline - time.monotonic()))
        for timer in timers:
            timer.cancel()
        for timer in timers:
            timer.join(max(0.0, deadline - time.monotonic()))
        running = [t.name for t in (observer, *timers) if t is not None and t.is_alive()]
        if running:
            log.warning(
                "inbox: still busy after %.1fs (%s); stopping without it: a file being applied "
                "is finished or taken again at the next start",
                timeout,
                ", ".join(sorted(set(running))),
            )
        return not running

    def scan(self) -> list[FileOutcome]:
        """Ingest every waiting file now, oldest first; then settle leftovers of a crash.

        Per-file errors are logged, never raised; an unreadable inbox folder raises ``OSError``.
        """
        with self._work:
            with self._lock:
                self._retry.clear()
            # not is_file(): that follows links and hides FIFOs, which must reach failed/ too
            paths = [p for p in self.path.iterdir() if eligible(p.name) and not _is_folder(p)]
            settled = [p for p in paths if not self._still_fresh(p)]
            outcomes = self._pass(settled, interruptible=False)
            try:
                self.ledger.sweep()
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
            mtime = path.lstat().st_mtime
        except FileNotFoundError:
            return True
        if time.time() - mtime >= self.settle:
            return False
        self._recheck_later(path, mtime)
        return True

    def _recheck_later(self, path: Path, mtime: float) -> None:
        def recheck() -> None:
            try:
                now_mtime = path.lstat().st_mtime
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
                found.append((path.lstat().st_mtime_ns, path.name, path))
            except FileNotFoundError:
                continue  # taken already, or removed by its writer
        return [path for _, _, path in sorted(found)]

    def _handle(self, path: Path) -> FileOutcome | None:
        try:
            outcome = self._applier.process(path)
            if outcome is None:
                return None
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


def _is_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except FileNotFoundError:
        return True  # gone: nothing to take


__all__ = ["Inbox"]
