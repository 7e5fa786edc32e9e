"""The mirror's tables. The store is the only place syncd keeps state.

- ``contact`` / ``membership``: the local contacts and their local list memberships, each with
  its own consent (``Membership.state``). A deleted
  contact stays as a tombstone (``deleted``) so its consent status survives re-creation. Each
  contact has a stable random ``ref`` (see ``reference_field`` in the README).
- ``base``: per target and key, the projection both sides last agreed on (DESIGN §1), and how
  many exports have lacked a key deleted locally (``unseen``, the local delete's tombstone).
- ``in_flight``: creates and updates sent whose answer has not been read (lost answers).
- ``off_list``: contacts syncd took off a list while the provider keeps them, tags and all.
- ``local_seen`` / ``remote_seen`` / ``seen_salt`` / ``dirty``: each side as last read, and the
  keys written since they were last compared, so that a cycle projects, parses and compares
  only what moved (``syncd.engine.stage``).
- ``stage_new`` / ``stage_gone`` / ``stage_diff``: per-cycle scratch tables so that the
  three-way comparison is a set operation done by the database, not a Python dict of the list.
- ``run``, ``rejection``, ``conflict``: what cycles did (and which process did it), rows the
  provider refused, and conflicts waiting for a person under ``conflict = "manual"``.
- ``lease``: which process is syncing a target right now, and until when (``store/lease.py``).
- ``push_job`` / ``push_job_part`` / ``push_job_row``: batches handed to a provider that
  confirms them later by calling back (Netcore's hosted-file bulk upload). Their rows move the
  base only when every part of the job has been confirmed (rule 4).
- ``ingested_file``: the inbox's ledger, one row per applied file content, committed with the
  file's rows (``syncd.local.inbox.ledger`` says how it makes a file apply exactly once).
- ``outbox_event``: change events recorded with the mirror change they describe and not yet
  written to a file (``syncd.local.outbox`` flushes them).
- ``webhook_delivery`` / ``webhook_endpoint``: each event once per matching ``[[webhook]]``,
  recorded with the event and kept until a 2xx answer (or dead-lettered), and the endpoints a
  410 Gone turned off (``syncd.local.webhook_queue``).
- ``hook_token`` / ``hook_queue``: each target's secret path segment for provider webhooks,
  and the keys those webhooks named, waiting to be re-read (``syncd.store.hooks``).
- ``history``: one row per key a cycle wrote or held (its case, what was sent, the answer) and
  per contact a local write changed (which file or request), written in the transaction of the
  writes it describes and pruned after ``[history] keep``
  (``syncd.store.history``; read by ``syncd explain``).
- ``ingest_request``: the answers of ``POST /v1/contacts`` by ``Idempotency-Key``, committed
  with the rows they applied, so a retried request applies once (``syncd.local.intake``).
- ``source_row`` / ``source_run``: per ``[[source]]``, the fingerprint of each row as last read
  (what the next read is diffed against) and the last read's outcome, counts and cursor
  (``syncd.local.source``).

Every table is declared here, so that the migrations can be compared with one module's models
(``syncd.store.schema``).
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

from sqlalchemy import BigInteger, Index, text
from sqlmodel import Field, SQLModel


def new_ref() -> str:
    """A contact's stable reference: says nothing about the person (``new_refs``)."""
    return new_refs(1)[0]


def new_refs(count: int) -> list[str]:
    """``count`` new contact references, in ascending order: 32 hex digits laid out as a UUID
    version 7 (RFC 9562): the creation time in milliseconds, then 74 random bits.

    The time first makes each new ref sort after the older ones, so inserting it writes at the
    right edge of the unique index on ``contact.ref``; a random (version 4) ref landed anywhere
    in that b-tree, which at a million new contacts cost about half of the contacts' insert. A
    ref says when the mirror first saw the contact, nothing about the person; the random part
    keeps refs unique (2**74 values per millisecond). Refs made before this (random, version 4)
    are kept: a ref never changes.
    """
    stamp = f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}"
    pool = os.urandom(10 * count).hex()
    refs = []
    for start in range(0, 20 * count, 20):
        raw = pool[start : start + 20]
        # version 7 and the RFC 9562 variant (binary 10) in their places
        refs.append(f"{stamp}7{raw[1:4]}{_VARIANT[raw[4]]}{raw[5:]}")
    refs.sort()  # inserted in this order, each lands after the last
    return refs


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class Contact(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str | None = Field(default=None, unique=True, index=True)
    phone: str | None = Field(default=None, unique=True, index=True)
    # syncd's own id for the contact, given at creation and never changed; pushed to providers
    # that keep custom fields (``reference_field``) so that a contact is recognised there even
    # when its create's answer was lost or its key changed. Nullable only for stores made
    # before it existed: migration 0003 fills those rows. The column default covers Core
    # inserts (ingestion's bulk insert), the factory ORM objects.
    ref: str | None = Field(
        default_factory=new_ref, unique=True, index=True, sa_column_kwargs={"default": new_ref}
    )
    fields: str = "{}"  # JSON object of custom fields, local names
    tags: str = "[]"  # JSON array, sorted
    status: str = "active"
    deleted: bool = False


class Membership(SQLModel, table=True):
    """A contact on a local list, and its consent on that list (DESIGN §9, consent per list).

    ``state`` is ``active``, or ``unsubscribed`` when the person left this list only: the
    contact stays on the list (as Unisender's ``*_unsubscribed_list_ids`` keep it) and may not be
    mailed from it, while its other lists are untouched. The contact's own ``status`` covers
    every list at once (blocked, unsubscribed from everything).
    """

    contact_id: int = Field(foreign_key="contact.id", primary_key=True)
    list_name: str = Field(primary_key=True, index=True)
    state: str = Field(default="active", sa_column_kwargs={"server_default": "active"})


class Base(SQLModel, table=True):
    # the keys whose local delete waits for more exports: compared every cycle, found by index.
    # Migration 0011 makes it partial on PostgreSQL too (``postgresql_where``); saying so here
    # would import SQLAlchemy's PostgreSQL dialect into every run on SQLite (25 ms of start-up),
    # and the migrations are compared with these models by name and columns, not predicate.
    __table_args__ = (Index("ix_base_unseen", "target", "key", sqlite_where=text("unseen > 0")),)
    target: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    digest: str
    data: str
    # complete exports that have lacked the key while the local side lacked it too: a local
    # delete whose absence at the provider is not trusted yet (``reconcile.ABSENCE_EXPORTS``);
    # back to 0 whenever the base moves
    unseen: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class InFlight(SQLModel, table=True):
    """A create or update handed to the provider whose answer has not been read yet.

    Written and committed before the call, removed with the base update that the answer
    brings. One left behind means the answer was lost (a crash, a cut connection): the next
    export shows, field by field, whether the write landed, so that syncd's own write is not
    mistaken for a remote edit (DESIGN §8, echo loops; see ``reconcile.Sent``).
    """

    __tablename__ = "in_flight"
    target: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    data: str  # the projection as sent
    before: str | None = None  # the remote projection it was meant to change (None: a create)


class OffList(SQLModel, table=True):
    """A contact syncd took off a target's list at a provider that keeps it in the account.

    The base goes with the exclusion, but the provider still holds the contact, tags included
    (tags belong to the contact, not to the list), and a later export of the list no longer
    shows it. Should the contact come back to the list, its create starts from this state, so
    the tags dropped locally in the meantime are removed there (``overwrite_tags``) instead of
    surviving the additive create and coming back into the mirror.
    """

    __tablename__ = "off_list"
    target: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    data: str  # the remote projection when it left the list


class LocalSeen(SQLModel, table=True):
    """A target's projection of one local contact, made by a cycle.

    Triggers (migration 0011) delete a contact's rows whenever the contact or one of its
    memberships is written, so a row that is here is still right and a cycle projects only the
    members without one. ``key`` is None for a member this target cannot match (a phone
    target, no phone).
    """

    __tablename__ = "local_seen"
    __table_args__ = (Index("ix_local_seen_target_key", "target", "key"),)
    contact_id: int = Field(primary_key=True)
    target: str = Field(primary_key=True)
    key: str | None = None
    digest: str | None = None
    data: str | None = None


class RemoteSeen(SQLModel, table=True):
    """The export row of a key as the last complete export showed it, with the fingerprint of
    its raw cells (``fp``, salted by ``seen_salt``): read again unchanged, it is not parsed
    again."""

    __tablename__ = "remote_seen"
    __table_args__ = (Index("ix_remote_seen_target_fp", "target", "fp"),)
    target: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    fp: int = Field(sa_type=BigInteger)
    digest: str
    data: str
    raw_status: str
    opted_out_elsewhere: bool


class ExportOrder(SQLModel, table=True):
    """The fingerprints of the last complete export in its order (8 bytes each, little-endian
    signed): every fingerprint of ``remote_seen`` is among them, and no row that lost its key
    to another. The next export is checked against them row by row; only a row not where it
    was is looked up in ``remote_seen``."""

    __tablename__ = "export_order"
    target: str = Field(primary_key=True)
    fps: bytes


class SeenSalt(SQLModel, table=True):
    """What shaped a side's rows besides the contacts (field mapping, capabilities, the reading
    code's version). A different salt throws that side's rows away."""

    __tablename__ = "seen_salt"
    target: str = Field(primary_key=True)
    side: str = Field(primary_key=True)  # local | remote
    salt: str


class Dirty(SQLModel, table=True):
    """A key whose local, base or remote row was written since it was last compared (filled by
    triggers, migrations 0011 and 0012). Every other key is equal on all three sides."""

    target: str = Field(primary_key=True)
    key: str = Field(primary_key=True)


class StageNew(SQLModel, table=True):
    """An export row this cycle read that ``remote_seen`` does not have (new or changed), kept
    until the export has completed (rule 1) and folded in then."""

    __tablename__ = "stage_new"
    target: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)  # the row's place in the export: the first of a key wins
    key: str
    fp: int = Field(sa_type=BigInteger)
    digest: str
    data: str
    raw_status: str
    opted_out_elsewhere: bool


class StageGone(SQLModel, table=True):
    """A fingerprint of ``remote_seen`` this cycle's export no longer had."""

    __tablename__ = "stage_gone"
    target: str = Field(primary_key=True)
    fp: int = Field(primary_key=True, sa_type=BigInteger)


class StageDiff(SQLModel, table=True):
    __tablename__ = "stage_diff"
    seq: int | None = Field(default=None, primary_key=True)
    target: str = Field(index=True)
    key: str
    local: str | None = None
    base: str | None = None
    remote: str | None = None
    raw_status: str | None = None
    opted_out_elsewhere: bool | None = None


class Run(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(index=True)
    started_at: str
    finished_at: str | None = None
    outcome: str = "running"  # converged | rejected | conflicts | failed | refused | dry-run
    summary: str = "{}"  # JSON counts
    message: str = ""
    holder: str | None = None  # the process that held the target's lease (store/lease.py)


class Lease(SQLModel, table=True):
    """A target being synced: by whom, and until when unless renewed (the database's clock)."""

    target: str = Field(primary_key=True)
    holder: str  # the last holder; the lease is free once expires_at has passed
    expires_at: float  # seconds since the epoch, by the database's clock
    started_at: float  # when the last cycle began: replicas skip a tick just after another's


class Rejection(SQLModel, table=True):
    """A row the provider refused. A permanent refusal is held until the local record changes."""

    target: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    digest: str  # digest of the row as it was sent
    code: str
    message: str
    retryable: bool = False
    at: str


class Conflict(SQLModel, table=True):
    """A field changed differently on both sides under the ``manual`` policy."""

    target: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    fields: str  # JSON list of {"field", "local", "remote", "base"}
    local: str | None = None
    remote: str | None = None
    base: str | None = None
    resolution: str | None = None  # None (open) | "local" | "remote"
    at: str


class PushJob(SQLModel, table=True):
    """One batch sent to a provider that confirms it later, by callback."""

    __tablename__ = "push_job"
    id: str = Field(primary_key=True)  # random; appears in the file and callback URLs
    target: str = Field(index=True)
    state: str = "open"  # open | done | expired | failed
    created_at: str
    expires_at: str  # ISO UTC; past it, the rows are released and sent again by a later cycle
    parts: int  # one per provider call (column groups split a batch into several)


class PushJobPart(SQLModel, table=True):
    """One provider call of a job: its hosted file, its callback secret and its request id."""

    __tablename__ = "push_job_part"
    job_id: str = Field(primary_key=True)
    part: int = Field(primary_key=True)
    file_secret: str  # SHA-256 (hex) of the secret in the file URL; the secret itself is not kept
    callback_secret: str  # SHA-256 (hex) of the secret in the callback URL
    body: bytes | None = None  # the file served to the provider; dropped once confirmed
    content_type: str = "text/csv"
    requestid: str | None = None  # the provider's id for the call
    state: str = "pending"  # pending | sent | done | failed
    result: str = ""  # what the callback said (JSON), for status and debugging
    callback_at: str | None = None


class PushJobRow(SQLModel, table=True):
    """A contact waiting for its job's confirmation: neither sent again nor counted as done."""

    __tablename__ = "push_job_row"
    __table_args__ = (Index("ix_push_job_row_target_key", "target", "key"),)
    job_id: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    target: str
    op: str
    base: str | None = None  # projection JSON that becomes the base once confirmed; None: forget
    digest: str  # of the row as sent (kept with a rejection)


class IngestedFile(SQLModel, table=True):
    """The inbox's ledger: one row per applied file content, written in the file's own
    transaction."""

    __tablename__ = "ingested_file"
    sha256: str = Field(primary_key=True)
    name: str
    size: int
    applied_at: str
    dest: str = ""  # the name reserved in processed/
    lists: str = "[]"  # JSON: the local lists the file changed
    report: str = "{}"  # JSON: the report written beside the file
    settled_at: str | None = None  # set once the file and its report are in processed/


class OutboxEvent(SQLModel, table=True):
    """A change event recorded with its mirror change and not yet written to a file."""

    __tablename__ = "outbox_event"
    # AUTOINCREMENT: seq never reuses a flushed row's number, so it orders events for good.
    __table_args__: ClassVar[dict[str, Any]] = {"sqlite_autoincrement": True}

    seq: int | None = Field(default=None, primary_key=True)
    hour: str = Field(index=True)  # YYYY-MM-DDTHH, UTC: the file it goes to
    body: str  # the event as one line of JSON


class WebhookDelivery(SQLModel, table=True):
    """One event for one webhook: pending until a 2xx answer deletes it, or dead (kept)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        Index("ix_webhook_delivery_due", "state", "next_attempt_at"),
        Index("ix_webhook_delivery_contact", "webhook", "target", "key", "id"),
        # AUTOINCREMENT: ids order each contact's events for good, even after deletions.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    webhook: str  # the [[webhook]] name
    event_id: str = Field(index=True)  # the change event's id, sent as webhook-id
    event_type: str  # contact.created | contact.updated | contact.unsubscribed | contact.deleted
    target: str
    key: str
    body: str  # the change event, byte for byte what is signed and sent
    created_at: float  # unix time the event was recorded (max_age counts from here)
    attempts: int = 0
    next_attempt_at: float  # unix time it is due
    state: str = "pending"  # pending | dead
    claimed_by: str | None = None  # the process sending it now
    claimed_until: float | None = None  # until when that claim holds (then another may retry)
    last_error: str = ""  # the last attempt's answer or failure, for status
    dead_at: float | None = None


class WebhookEndpoint(SQLModel, table=True):
    """A webhook endpoint that answered 410 Gone, and is not called again at that URL."""

    __tablename__ = "webhook_endpoint"
    name: str = Field(primary_key=True)
    url: str
    disabled_at: float
    reason: str


class IngestRequest(SQLModel, table=True):
    """The answer given to one ``Idempotency-Key`` of the ingest API, kept for a day."""

    __tablename__ = "ingest_request"
    key: str = Field(primary_key=True)
    body_sha256: str  # the same key with another body is refused, not answered from here
    answer: str  # JSON, sent again as it was
    created_at: float = Field(index=True)


class HookToken(SQLModel, table=True):
    """A target's unguessable path segment of ``/hooks/{target}/{token}`` (provider webhooks)."""

    __tablename__ = "hook_token"
    target: str = Field(primary_key=True)
    token: str
    created_at: float


class HookQueue(SQLModel, table=True):
    """A key a provider's webhook named, waiting to be re-read (``kind`` "reread") or taken as
    the provider's opt-out (``kind`` "opt_out"); a retried webhook finds its row already there."""

    __tablename__ = "hook_queue"
    __table_args__ = (Index("ux_hook_queue_key", "target", "key", "kind", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    target: str
    key: str
    kind: str
    queued_at: float


class SourceRow(SQLModel, table=True):
    """One row of a ``[[source]]`` as last applied: its key and the fingerprint of its values."""

    __tablename__ = "source_row"
    source: str = Field(primary_key=True)
    key: str = Field(primary_key=True)  # the normalised email or phone
    fingerprint: str  # hex digest of the row's values as read


class SourceRun(SQLModel, table=True):
    """The last read of a ``[[source]]``: when, what it found, and where its cursor stands."""

    __tablename__ = "source_run"
    source: str = Field(primary_key=True)
    generation: int = 0  # one more per applied read: two readers never apply the same diff
    last_read_at: float | None = None  # unix time the last read ended, whatever its outcome
    last_success_at: float | None = None
    last_full_at: float | None = None  # the last full snapshot (cursor mode finds deletes then)
    cursor: str | None = None  # JSON: the highest cursor_column value seen
    mode: str = ""  # snapshot | cursor: what the last read was
    rows: int = 0
    created: int = 0
    updated: int = 0
    removed: int = 0  # left the source's list (their rows vanished)
    unchanged: int = 0
    rejected: int = 0
    seconds: float = 0.0
    error: str = ""  # why the last read applied nothing ("" when it applied)


class History(SQLModel, table=True):
    """What one cycle did about one key: the case, the write sent, the answer.

    Only keys that differed are written, in the transaction of the writes they describe, so a
    no-change cycle adds nothing. ``sent`` and ``outcome`` are JSON (``syncd.store.history``).
    """

    __tablename__ = "history"
    __table_args__ = (
        Index("ix_history_key", "key", "id"),
        # AUTOINCREMENT: ids order a key's history for good, even after pruning.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    at: str = Field(index=True)  # ISO UTC to the millisecond; pruning compares it as text
    run_id: int | None = None  # the cycle's run record (``run.id``); None: a local write
    target: str | None = None  # None: a local write (an inbox file, ingest, the ingest API)
    key: str
    case: str  # ``Decision.case``
    sent: str | None = None  # JSON: the call that carried the row, its fields and flags
    outcome: str  # JSON: confirmed / rejected / held / ..., with the reason
