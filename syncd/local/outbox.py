"""Change events from providers, handed to the company's own systems as NDJSON files.

A change that came from a provider (an unsubscribe, a block, a sign-up, an edit, a remote
delete) is applied to the mirror, and the company's systems need to hear about it. Writing the
file directly after the mirror's commit would lose the event whenever the daemon dies in between,
so this is a *transactional outbox*:

1. :func:`record` adds the event as a row to the session that applies the change to the mirror,
   so the change and its event commit together or not at all;
2. :func:`flush` later moves the pending rows into ``<folder>/changes-YYYY-MM-DDTHH.ndjson`` (the
   UTC hour of the event), rewriting each file atomically (temp file, fsync, rename, fsync the
   folder) and only then deleting the rows.

A crash between the rename and the delete leaves rows that are already in the file; the next
flush skips every event whose ``id`` the file already holds, so nothing is written twice. The
``id`` also lets consumers drop duplicates of their own making. Consumers should re-open files
by name (a rewrite replaces the inode) and expect a past hour's file to still gain events that
were recorded in that hour but flushed later.

The same transaction queues the event for each matching ``[[webhook]]`` (``recorder``'s
``webhooks``): those rows live in ``webhook_delivery`` until their endpoint confirms them
(``syncd.local.webhook_queue``), so flushing files never takes an event from a webhook.

What an event says, and its schema, is ``syncd.local.change_event``'s.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from syncd.config import WebhookConfig
from syncd.core.projection import RemoteChange
from syncd.local import webhook_queue
from syncd.local.change_event import ChangeEvent
from syncd.store.models import OutboxEvent

#: What ``CycleOptions.on_remote_change`` takes: called inside the transaction that applies the
#: change to the mirror, so a recorder that calls :func:`record` commits with it. It returns the
#: event's id and kind, which the contact's history keeps (``syncd explain``).
Recorder: TypeAlias = Callable[[Session, RemoteChange], Mapping[str, str] | None]

_FILE_PREFIX = "changes-"
_FILE_SUFFIX = ".ndjson"
_LOCK_NAME = ".outbox.lock"
#: Rows deleted per statement: stays under SQLite's bound-parameter limit on any build.
_DELETE_CHUNK = 500


# -- recording (the outbox_event table is declared in syncd.store.models) -----------------


def ensure_table(engine: Engine) -> None:
    """Create the outbox table if missing (the store's migrations create it too)."""
    OutboxEvent.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]


def record(session: Session, event: ChangeEvent) -> None:
    """Queue the event in the caller's transaction: it commits or rolls back with the change."""
    session.add(OutboxEvent(hour=event.hour, body=event.model_dump_json()))


def recorder(
    provider: str,
    cycle: str,
    webhooks: Sequence[WebhookConfig] = (),
    list_name: str | None = None,
) -> Recorder:
    """The engine's ``on_remote_change`` hook: each remote-born change becomes an event row,
    and a delivery row for each of ``webhooks`` that takes it (``syncd.local.webhook_queue``).

    ``list_name``, the local list the target feeds, is written as the event's ``list``.
    """

    def record_change(session: Session, change: RemoteChange) -> Mapping[str, str]:
        event = ChangeEvent.from_remote_change(change, provider, cycle, list_name=list_name)
        record(session, event)
        webhook_queue.enqueue(session, event, webhooks)
        return {"id": event.id, "kind": event.kind}

    return record_change


# -- flushing to files --------------------------------------------------------------------

# Threads of one process share this; other processes (a `syncd run` beside the daemon) are
# kept out by an flock on the folder's lock file. Without it two writers could each rename a
# file the other had not seen, and the later rename would drop events the earlier one wrote.
_THREAD_LOCK = threading.Lock()


def flush(engine: Engine, folder: Path) -> int:
    """Move every pending event into its hourly file; returns how many lines were written."""
    if not _pending(engine):
        return 0  # the everyday case: one indexed query, no file system work, no lock
    with _THREAD_LOCK:
        _make_folder(folder)
        with _folder_lock(folder):
            _drop_stale_temps(folder)
            written = 0
            for hour in _pending_hours(engine):
                written += _flush_hour(engine, folder, hour)
            return written


def _pending(engine: Engine) -> bool:
    with Session(engine) as session:
        return session.execute(select(col(OutboxEvent.seq)).limit(1)).first() is not None


def _pending_hours(engine: Engine) -> list[str]:
    with Session(engine) as session:
        rows = session.execute(
            select(col(OutboxEvent.hour)).distinct().order_by(col(OutboxEvent.hour))
        )
        return [hour for (hour,) in rows]


def _flush_hour(engine: Engine, folder: Path, hour: str) -> int:
    final = folder / f"{_FILE_PREFIX}{hour}{_FILE_SUFFIX}"
    fd, tmp_name = tempfile.mkstemp(  # mkstemp creates it 0o600: owner-only from birth
        prefix=f".{_FILE_PREFIX}{hour}.", suffix=".tmp", dir=folder
    )
    tmp = Path(tmp_name)
    seqs: list[int] = []
    written = 0
    # One session from the claim to the delete: on PostgreSQL the claimed rows stay locked
    # until their file is durable and they are gone.
    with Session(engine) as session:
        try:
            with os.fdopen(fd, "wb") as out:
                rows = _claim(session, hour)
                seen = _copy_existing(final, out)
                for seq, body in rows:
                    seqs.append(seq)
                    event_id = _event_id(body)
                    if event_id is not None and event_id in seen:
                        continue  # already in the file: a crash came after a rename last time
                    if event_id is not None:
                        seen.add(event_id)
                    out.write(body.encode() + b"\n")
                    written += 1
                out.flush()
                os.fsync(out.fileno())
            if written:
                os.replace(tmp, final)
                _fsync_dir(folder)
            else:
                tmp.unlink()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _forget(session, seqs)
    return written


def _claim(session: Session, hour: str) -> list[tuple[int, str]]:
    """The hour's pending rows that no other process is flushing.

    Replicas share the store's outbox table but each writes its own folder. On PostgreSQL the
    rows are locked (``FOR UPDATE SKIP LOCKED``) until this flush deletes them, so a replica
    flushing at the same moment skips them instead of writing them a second time. SQLite has
    one writer per store file, and the folder lock serialises the processes sharing a folder.
    """
    rows = session.execute(
        select(col(OutboxEvent.seq), col(OutboxEvent.body))
        .where(col(OutboxEvent.hour) == hour)
        .order_by(col(OutboxEvent.seq))
        .with_for_update(skip_locked=True)
    )
    return [(seq, body) for seq, body in rows]


def _copy_existing(final: Path, out: Any) -> set[str]:
    """Copy the hour's file line by line into ``out``; returns the event ids it holds."""
    seen: set[str] = set()
    try:
        existing = final.open("rb")
    except FileNotFoundError:
        return seen
    with existing:
        for line in existing:
            if not line.strip():
                continue
            if not line.endswith(b"\n"):
                line += b"\n"  # someone else's last line without one must not glue to ours
            out.write(line)
            event_id = _event_id(line)
            if event_id is not None:
                seen.add(event_id)
    return seen


def _event_id(line: str | bytes) -> str | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None  # a damaged line is kept as it is, it just cannot match anything
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _forget(session: Session, seqs: Sequence[int]) -> None:
    """Delete the flushed rows, all in one transaction, only after their file is durable."""
    for i in range(0, len(seqs), _DELETE_CHUNK):
        session.execute(
            delete(OutboxEvent).where(col(OutboxEvent.seq).in_(seqs[i : i + _DELETE_CHUNK]))
        )
    session.commit()


def _make_folder(folder: Path) -> None:
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode passes through the umask; say it once more


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder / _LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _drop_stale_temps(folder: Path) -> None:
    # Under the folder lock no other writer is active, so any temp file is from a crash.
    for stale in folder.glob(f".{_FILE_PREFIX}*.tmp"):
        stale.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable: it lives in the folder's entry, not in the file."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
