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

The event format is documented by ``schemas/change-event.schema.json``, generated from
:class:`ChangeEvent` by ``python -m syncd.local.outbox --schema``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer
from pydantic import Field as PydanticField
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from syncd.clock import stamp
from syncd.core.projection import OPTED_OUT, Projection, Status
from syncd.store.models import OutboxEvent

if TYPE_CHECKING:
    from syncd.engine.result import RemoteChange

#: What ``CycleOptions.on_remote_change`` takes: called inside the transaction that applies the
#: change to the mirror, so a recorder that calls :func:`record` commits with it. A string
#: because RemoteChange is imported for type checking only (the engine may come to import this).
Recorder: TypeAlias = "Callable[[Session, RemoteChange], None]"

Kind = Literal["signup", "update", "unsubscribe", "block", "resubscribe", "delete"]

SCHEMA_ID = "urn:syncd:schema:change-event:1"
_TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"
_FILE_PREFIX = "changes-"
_FILE_SUFFIX = ".ndjson"
_LOCK_NAME = ".outbox.lock"
#: Rows deleted per statement: stays under SQLite's bound-parameter limit on any build.
_DELETE_CHUNK = 500


# -- the event ----------------------------------------------------------------------------


class FieldChange(BaseModel):
    """One custom field: its value before and after (null: not set)."""

    model_config = ConfigDict(frozen=True)

    before: str | None
    after: str | None


class TagsChange(BaseModel):
    """The contact's tags before and after, sorted ([] when the contact did not exist)."""

    model_config = ConfigDict(frozen=True)

    before: list[str]
    after: list[str]


class StatusChange(BaseModel):
    """The consent status before and after (null when the contact did not exist)."""

    model_config = ConfigDict(frozen=True)

    before: Status | None
    after: Status | None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class ChangeSet(BaseModel):
    """Only what changed: custom fields by their remote name, plus 'tags' and 'status'."""

    # Fields are open-ended (each target maps its own), so they are typed extras; ``tags`` and
    # ``status`` are the two names the config also reserves in its conflict table.
    model_config = ConfigDict(frozen=True, extra="allow")

    __pydantic_extra__: dict[str, FieldChange] = PydanticField(init=False)
    # SkipJsonSchema and no default in the schema: None only means "unchanged" and is never
    # written (see the serializer), so the documented format must not offer null.
    tags: TagsChange | SkipJsonSchema[None] = PydanticField(None, json_schema_extra=_no_default)
    status: StatusChange | SkipJsonSchema[None] = PydanticField(None, json_schema_extra=_no_default)

    @model_serializer(mode="wrap")
    def _only_what_changed(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        out = {k: v for k, v in data.items() if k not in ("tags", "status")}
        for name in ("tags", "status"):
            if data.get(name) is not None:
                out[name] = data[name]
        return out


class ProjectionState(BaseModel):
    """The whole contact as the target sees it (custom fields under their remote names)."""

    model_config = ConfigDict(frozen=True)

    fields: dict[str, str]
    tags: list[str]
    status: Status

    @classmethod
    def of(cls, p: Projection) -> ProjectionState:
        return cls(fields=dict(p.fields), tags=sorted(p.tags), status=p.status)


class ChangeEvent(BaseModel):
    """A change that came from a provider and was applied to the mirror."""

    model_config = ConfigDict(frozen=True)

    id: str = PydanticField(
        pattern=r"^[0-9a-f]{32}$",
        description="Unique event id (uuid4, hex); the same event may be delivered twice.",
    )
    time: str = PydanticField(
        pattern=_TIME_PATTERN,
        json_schema_extra={"format": "date-time"},
        description="When the change was applied to the mirror, UTC, ISO-8601.",
    )
    target: str = PydanticField(description="The configured target (provider list) it came from.")
    provider: str = PydanticField(description="The provider, e.g. 'unisender'.")
    key: str = PydanticField(description="The contact's key on this target: email or phone.")
    kind: Kind = PydanticField(
        description="unsubscribe / block / resubscribe: the consent status changed (this "
        "outranks the rest); signup: the contact was born at the provider; delete: removed at "
        "the provider; update: fields or tags edited at the provider."
    )
    changes: ChangeSet = PydanticField(description="Only what changed, each as before/after.")
    before: ProjectionState | None = PydanticField(
        description="The contact before the change; null for a signup."
    )
    after: ProjectionState | None = PydanticField(
        description="The contact after the change; null for a delete."
    )
    cycle: str = PydanticField(
        description="Id of the sync cycle that applied it (the 'cycle' of that run's summary)."
    )

    @classmethod
    def from_remote_change(
        cls, change: RemoteChange, provider: str, cycle: str, now: datetime | None = None
    ) -> ChangeEvent:
        before, after = change.before, change.after
        if before is None and after is None:
            raise ValueError(f"{change.target}/{change.key}: a change needs a before or an after")
        return cls(
            id=uuid.uuid4().hex,
            time=stamp(now),  # a naive time is taken as UTC, never local
            target=change.target,
            provider=provider,
            key=change.key,
            kind=_kind(before, after),
            changes=_changes(before, after),
            before=None if before is None else ProjectionState.of(before),
            after=None if after is None else ProjectionState.of(after),
            cycle=cycle,
        )

    @property
    def hour(self) -> str:
        """``YYYY-MM-DDTHH``: which hourly file the event belongs to."""
        return self.time[:13]


def _kind(before: Projection | None, after: Projection | None) -> Kind:
    # Consent comes first: a consumer that acts only on unsubscribes must never miss one, even
    # for a contact first seen already unsubscribed (before None, after unsubscribed).
    old = None if before is None else before.status
    if after is not None and after.status != old:
        if after.status == "unsubscribed":
            return "unsubscribe"
        if after.status == "blocked":
            return "block"
        if old in OPTED_OUT:
            return "resubscribe"
    if before is None:
        return "signup"
    if after is None:
        return "delete"
    return "update"


def _changes(before: Projection | None, after: Projection | None) -> ChangeSet:
    old = {} if before is None else before.field_map
    new = {} if after is None else after.field_map
    fields = {
        name: FieldChange(before=old.get(name), after=new.get(name))
        for name in sorted(old.keys() | new.keys())
        # A field literally named tags/status would be shadowed by the contact's own; its values
        # are still in before/after.
        if old.get(name) != new.get(name) and name not in ("tags", "status")
    }
    old_tags = [] if before is None else sorted(before.tags)
    new_tags = [] if after is None else sorted(after.tags)
    old_status = None if before is None else before.status
    new_status = None if after is None else after.status
    return ChangeSet.model_validate(
        {
            **fields,
            "tags": TagsChange(before=old_tags, after=new_tags) if old_tags != new_tags else None,
            "status": (
                StatusChange(before=old_status, after=new_status)
                if old_status != new_status
                else None
            ),
        }
    )


# -- the schema ---------------------------------------------------------------------------


def event_schema() -> dict[str, Any]:
    """The JSON Schema of one NDJSON line, as checked in at schemas/change-event.schema.json."""
    generated = ChangeEvent.model_json_schema()
    generated.pop("title", None)
    generated.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "syncd change event",
        "description": "One line of an outbox file (<outbox>/changes-YYYY-MM-DDTHH.ndjson, UTC "
        "hour of the event): a change that came from a provider and was applied to the mirror. "
        "Events are delivered at least once: drop duplicates by id.",
        **generated,
    }


def schema_text() -> str:
    """The schema file's exact text (what ``python -m syncd.local.outbox --schema`` prints)."""
    return json.dumps(event_schema(), indent=2, ensure_ascii=False) + "\n"


# -- the outbox table (declared in syncd.store.models) ------------------------------------


def ensure_table(engine: Engine) -> None:
    """Create the outbox table if missing (the store's migrations create it too)."""
    OutboxEvent.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]


def record(session: Session, event: ChangeEvent) -> None:
    """Queue the event in the caller's transaction: it commits or rolls back with the change."""
    session.add(OutboxEvent(hour=event.hour, body=event.model_dump_json()))


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


# -- python -m syncd.local.outbox --schema ------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m syncd.local.outbox", description="Tools for the change-event outbox."
    )
    parser.add_argument(
        "--schema",
        action="store_true",
        help="print the change event's JSON Schema (schemas/change-event.schema.json)",
    )
    args = parser.parse_args(argv)
    if not args.schema:
        parser.print_usage(sys.stderr)
        return 2
    sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def recorder(provider: str, cycle: str) -> Recorder:
    """The engine's ``on_remote_change`` hook: each remote-born change becomes an event row."""

    def record_change(session: Session, change: RemoteChange) -> None:
        record(session, ChangeEvent.from_remote_change(change, provider, cycle))

    return record_change
