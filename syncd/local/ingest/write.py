"""Writing checked rows into the mirror: one transaction, in chunks, with bulk statements.

``apply`` takes the ``ContactChange`` values ``syncd.local.ingest.check`` made and writes them all,
or (on any error) none; ``IngestReport`` counts what each row did.

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

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import delete, insert, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from syncd.core.projection import is_opted_out
from syncd.local.ingest.check import ContactChange, Rejection
from syncd.store import history, mirror
from syncd.store.db import transaction
from syncd.store.models import Contact, Membership

CHUNK_SIZE = 1000  # keys looked up per IN query and rows written per bulk statement

Outcome = Literal["created", "updated", "deleted", "unchanged"]


def canonical_json(value: Any) -> str:
    """The one text for a JSON value: equal content gives equal text (and equal digests)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


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

    def count(self, outcome: Outcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: the counts at the top level, rejections by line."""
        return {
            "file": self.file,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "rejected": [r.to_dict() for r in self.rejected],
        }


def apply(
    engine: Engine,
    changes: Sequence[ContactChange],
    *,
    chunk_size: int = CHUNK_SIZE,
    source: str = "ingest",
) -> IngestReport:
    """Apply every change in one transaction: all of them, or (on any error) none.

    Each contact a row changed gets a history row naming ``source`` (``syncd explain``), in
    the same transaction.

    The contact table is never loaded whole: each chunk of rows looks up only the contacts its
    keys name, then writes back with a few bulk statements. Rows that can only be refused
    against the mirror (email and phone of two different contacts) come back in ``rejected``.
    """
    report = IngestReport(rows=len(changes))
    with transaction(engine) as session:
        mirror.take_write_turn(session)  # a cycle re-reading contacts it will write waits
        for start in range(0, len(changes), chunk_size):
            chunk = changes[start : start + chunk_size]
            working = _Chunk.load(session, chunk)
            steps = []
            for change in chunk:
                outcome = working.apply(change)
                if isinstance(outcome, Rejection):
                    report.rejected.append(outcome)
                    continue
                report.count(outcome)
                if outcome != "unchanged":
                    steps.append(_step(change, outcome, source))
            working.write(session)
            history.add(session, steps)
    return report


def _step(change: ContactChange, outcome: Outcome, source: str) -> dict[str, Any]:
    """The history row of a row that changed a contact: its source, line and columns."""
    carried = [*change.fields]
    carried += [
        name
        for name, value in (
            ("tags", change.tags),
            ("lists", change.lists),
            ("unsubscribed_lists", change.unsubscribed_lists),
            ("status", change.status),
        )
        if value is not None
    ]
    said = {"result": "applied", "source": source, "line": change.line}
    return history.row(None, None, change.key, f"local_{outcome}", {**said, "carried": carried})


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
        return (
            self.email,
            self.phone,
            canonical_json(self.fields),
            sorted(self.tags),
            self.memberships(),
            self.status,
            self.deleted,
        )

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

    def columns(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "phone": self.phone,
            "fields": canonical_json(self.fields),
            "tags": canonical_json(sorted(self.tags)),
            "status": self.status,
            "deleted": self.deleted,
        }


class _Chunk:
    """The contacts one chunk of rows can reach, changed in memory, then written in bulk.

    Rows apply in order against this working set, so a later row sees an earlier row's effect
    (an email moved, a contact revived) exactly as it would across chunk boundaries.
    """

    def __init__(self, contacts: list[_Contact]) -> None:
        self.contacts = {c.id: c for c in contacts}
        self.original = {c.id: c.columns() for c in contacts}
        self.original_lists = {c.id: c.memberships() for c in contacts}
        self.by_email = {c.email: c.id for c in contacts if c.email is not None}
        self.by_phone = {c.phone: c.id for c in contacts if c.phone is not None}
        self.next_new_id = -1

    @classmethod
    def load(cls, session: Session, chunk: Sequence[ContactChange]) -> _Chunk:
        emails = [c.email for c in chunk if c.email is not None]
        phones = [c.phone for c in chunk if c.phone is not None]
        found = session.exec(
            select(Contact).where(
                or_(col(Contact.email).in_(emails), col(Contact.phone).in_(phones))
            )
        ).all()
        ids = [c.id for c in found if c.id is not None]
        lists: dict[int, set[str]] = {i: set() for i in ids}
        left: dict[int, set[str]] = {i: set() for i in ids}
        if ids:
            for contact_id, list_name, state in session.exec(
                select(Membership.contact_id, Membership.list_name, Membership.state).where(
                    col(Membership.contact_id).in_(ids)
                )
            ):
                lists[contact_id].add(list_name)
                if state == "unsubscribed":
                    left[contact_id].add(list_name)
        contacts = [
            _Contact(
                id=c.id,
                email=c.email,
                phone=c.phone,
                fields=json.loads(c.fields) or {},
                tags=frozenset(json.loads(c.tags) or ()),
                lists=frozenset(lists[c.id]),
                status=c.status,
                deleted=c.deleted,
                left=frozenset(left[c.id]),
            )
            for c in found
            if c.id is not None
        ]
        # The ORM objects were only read. Dropping them keeps memory flat over a big file, and
        # keeps a later chunk from reusing a cached object that the bulk writes made stale.
        session.expunge_all()
        return cls(contacts)

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
            contact = _Contact(
                self.next_new_id, None, None, {}, frozenset(), frozenset(), "active", False
            )
            self.next_new_id -= 1
            self.contacts[contact.id] = contact
            outcome: Outcome = "created"
        elif contact.deleted:
            contact.deleted = False
            contact.fields, contact.tags = {}, frozenset()
            contact.lists, contact.left = frozenset(), frozenset()
            outcome = "created"
        else:
            outcome = "updated"
        revived_opted_out = outcome == "created" and is_opted_out(contact.status)
        before = contact.state()

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

        if outcome == "updated" and contact.state() == before:
            return "unchanged"
        return outcome

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

    def write(self, session: Session) -> None:
        current = {cid: contact.columns() for cid, contact in self.contacts.items()}
        changed = [row for cid, row in current.items() if cid > 0 and row != self.original[cid]]
        moved = [
            {"id": row["id"], "email": None, "phone": None}
            for row in changed
            if (row["email"], row["phone"])
            != (self.original[row["id"]]["email"], self.original[row["id"]]["phone"])
        ]
        if moved:
            # Keys can pass from one contact to another within a chunk; clearing the moved keys
            # first means the unique indexes never see two holders, whatever the update order.
            session.exec(update(Contact), params=moved)
        if changed:
            session.exec(update(Contact), params=changed)

        # A contact whose lists or their states changed has its memberships rewritten whole.
        relisted = [
            cid
            for cid, contact in self.contacts.items()
            if cid > 0 and contact.memberships() != self.original_lists[cid]
        ]
        if relisted:
            session.exec(delete(Membership).where(col(Membership.contact_id).in_(relisted)))
        memberships = [
            {"contact_id": cid, "list_name": name, "state": state}
            for cid in relisted
            for name, state in self.contacts[cid].memberships()
        ]

        new = [contact for cid, contact in self.contacts.items() if cid < 0]
        if new:
            rows = [{k: v for k, v in current[c.id].items() if k != "id"} for c in new]
            ids = session.exec(
                insert(Contact).returning(col(Contact.id), sort_by_parameter_order=True),
                params=rows,
            ).scalars()
            for contact, real_id in zip(new, ids, strict=True):
                memberships.extend(
                    {"contact_id": real_id, "list_name": name, "state": state}
                    for name, state in contact.memberships()
                )
        if memberships:
            session.exec(insert(Membership), params=memberships)
