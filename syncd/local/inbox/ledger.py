"""Where an inbox file goes, and the ledger that makes it get there exactly once.

Names: ``eligible`` says which files the inbox takes, ``snapshot_list`` which of them are
snapshots. A file leaves the inbox for ``processed/`` or ``failed/`` with ``NAME.report.json``
beside it (``Ledger.finish``). A name already taken in the destination gets a numeric suffix
(``contacts-1.csv``); nothing is ever overwritten. A name too long to carry the report's suffix
(``NAME_MAX`` bytes, 255 on Linux) is shortened, keeping its start, its extension and a hash of
the whole name, so the moved file and its report always fit and stay unique; the report's
``file`` keeps the name as dropped.

``processed/`` and ``failed/`` hold contact data: they are owner-only (0700) and the files and
reports in them 0600, as the store and the outbox are, whatever the umask or the mode a file was
dropped with.

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
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from syncd.clock import stamp
from syncd.store.models import IngestedFile

log = logging.getLogger("syncd.local.inbox")

ACCEPTED_SUFFIXES = (".csv", ".ndjson", ".jsonl", ".json")
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".swp", "~")
REPORT_SUFFIX = ".report.json"
SNAPSHOT_MARK = ".snapshot"

Status = Literal["processed", "failed"]

NAME_MAX = 255  # bytes in one file name: Linux, macOS and Windows filesystems alike
FOLDER_MODE = 0o700
FILE_MODE = 0o600
_SPARE = len("-99999")  # room kept for the numeric suffix of a clash


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What became of one file: where it is now, its report, the lists it changed."""

    name: str
    status: Status
    path: Path
    report: dict[str, Any]
    lists: frozenset[str] = frozenset()
    recovered: bool = False


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


def _too_long(name: str) -> bool:
    """Whether ``name``, or the temp file its report is written through, exceeds ``NAME_MAX``."""
    return len(os.fsencode(f".{name}{REPORT_SUFFIX}.tmp")) + _SPARE > NAME_MAX


def _shortened(name: str) -> str:
    """``name`` cut to fit with its report: its start, a hash of the whole name, its extension."""
    stem, suffix = Path(name).stem, Path(name).suffix
    tag = "-" + hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    while stem and _too_long(f"{stem}{tag}{suffix}"):
        stem = stem[:-1]
    return f"{stem}{tag}{suffix}"


def owner_only_folder(folder: Path) -> None:
    """Create ``folder`` if missing and make it 0700 (mkdir's mode is cut by the umask only)."""
    folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != FOLDER_MODE:
        folder.chmod(FOLDER_MODE)


def _owner_only_file(path: Path) -> None:
    """Make a moved file 0600. A link is never changed (chmod would reach its target); a file
    owned by another user cannot be, which is logged: the folder it is in is 0700."""
    try:
        mode = os.lstat(path).st_mode
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) != FILE_MODE:
            os.chmod(path, FILE_MODE)
    except OSError as exc:
        log.warning("inbox: could not make %s owner-only: %s", path, exc.strerror or exc)


def _same_entry(a: Path, b: Path) -> bool:
    """Whether two names are one directory entry's target (links not followed)."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write whole or not at all: an owner-only temp file beside, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(fd, FILE_MODE)  # a temp file left by a crash may have another mode
        json.dump(data, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _move_no_replace(src: Path, dest: Path) -> bool:
    """Move ``src`` to ``dest`` unless ``dest`` exists (then False). Never overwrites; a link is
    moved as the link itself, never its target."""
    try:
        os.link(src, dest, follow_symlinks=False)
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


class Ledger:
    """The folders a file leaves the inbox for, and the ledger rows that record it."""

    def __init__(self, engine: Engine, path: Path) -> None:
        self.engine = engine
        self.path = path
        self.processed = path / "processed"
        self.failed = path / "failed"

    # -- moving files ------------------------------------------------------------------------

    @staticmethod
    def reserve(folder: Path, name: str) -> str:
        """The first free name: ``name``, then ``stem-1.ext``, ``stem-2.ext``, ...; a name too long
        for its report is shortened first (see the module docstring)."""
        if _too_long(name):
            name = _shortened(name)
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = name, 0
        while os.path.lexists(folder / candidate) or os.path.lexists(
            folder / f"{candidate}{REPORT_SUFFIX}"
        ):
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        return candidate

    def finish(self, path: Path, folder: Path, name: str, report: dict[str, Any]) -> Path:
        """Move the file to ``folder/name`` (or the next free name) and write its report."""
        owner_only_folder(folder)
        if _too_long(name):  # a ledger row older than the shortening
            name = self.reserve(folder, name)
        dest = folder / name
        if not _move_no_replace(path, dest):
            if _same_entry(path, dest):
                path.unlink()  # a crash between link and unlink: finish the move
            else:
                name = self.reserve(folder, path.name)
                dest = folder / name
                if not _move_no_replace(path, dest):
                    raise FileExistsError(f"{dest} appeared while moving {path.name}")
        _owner_only_file(dest)
        _fsync_dir(folder)
        _fsync_dir(path.parent)
        _write_json(folder / f"{name}{REPORT_SUFFIX}", report)
        return dest

    def fail(self, path: Path, report: dict[str, Any], reason: str) -> FileOutcome:
        report = {**report, "error": reason, "ingested_at": stamp()}
        dest = self.finish(path, self.failed, self.reserve(self.failed, path.name), report)
        return FileOutcome(path.name, "failed", dest, report)

    # -- the ledger --------------------------------------------------------------------------

    def unsettled(self, digest: str, name: str) -> IngestedFile | None:
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

    def recover(self, path: Path, row: IngestedFile) -> FileOutcome:
        """Applied before a crash, never moved: move it now, apply nothing."""
        report = {**json.loads(row.report), "recovered": True}
        dest = self.finish(path, self.processed, row.dest or path.name, report)
        self.settle(row.sha256)
        lists = frozenset(json.loads(row.lists))
        return FileOutcome(path.name, "processed", dest, report, lists, recovered=True)

    def settle(self, digest: str) -> None:
        """Mark the ledger row done. A failure here is only logged: the file and its report are
        in place, and the sweep of the next ``scan()`` settles the row."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(IngestedFile)
                    .where(col(IngestedFile.sha256) == digest)
                    .values(settled_at=stamp())
                )
        except Exception:
            log.exception("inbox: could not settle the ledger row %s; the next start will", digest)

    def sweep(self) -> None:
        """Unsettled rows whose file left the inbox: write a missing report, then settle."""
        with self.engine.connect() as conn:
            rows = [
                IngestedFile.model_validate(dict(r))
                for r in conn.execute(
                    select(IngestedFile).where(col(IngestedFile.settled_at).is_(None))
                ).mappings()
            ]
        for row in rows:
            if os.path.lexists(self.path / row.name):
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
            self.settle(row.sha256)
