"""Staging: each side of a target brought up to date, and the keys that may differ compared.

The store keeps each side as last read (``syncd.store.seen``): the projection of every local
member, and the last complete export by a fingerprint of each row. A cycle projects only the
members written since (the database forgets a contact's projection whenever it is written),
parses only the export rows whose fingerprint it has not met, and compares only the keys some
write has touched since their last comparison. A cycle with no edits anywhere still reads the
whole export (rule 1 and remote deletes depend on it) but builds, hashes and compares nothing.

Rule 1 (DESIGN §3) is kept here: an export that did not complete is thrown away unfolded, and
the base stands in for the remote side, so that nothing is inferred from a row's absence. A
provider without an export (``Capabilities.export``) always has the base there.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable
from json.encoder import encode_basestring as quote
from typing import Any

from sqlmodel import Session

from syncd.core.jsontext import read_json
from syncd.core.projection import (
    LIST_STATUSES,
    OPTED_OUT,
    STATUSES,
    Projection,
    compact_json,
    digest_of,
)
from syncd.engine.result import Scope
from syncd.engine.state import CycleState
from syncd.errors import ExportIncomplete
from syncd.providers.base import Capabilities
from syncd.store import mirror, seen
from syncd.store.models import Base

log = logging.getLogger("syncd.engine")

PROGRESS_ROWS = 100_000  # export rows between two progress reports


def project_local(
    contact: mirror.MemberRow, view: mirror.LocalView, caps: Capabilities
) -> Projection | None:
    """The mirror's contact as this target sees it (remote field names, folded status).

    Its consent on the target's list is the membership's (``state``). A provider that keeps one
    status per contact of the list (no ``Capabilities.list_consent``) gets a list opt-out as
    that status: for that list it is all it can hold, and the mirror reads it back as the
    list's (``mirror.apply_remote_state``), never as the contact's own.
    """
    key = getattr(contact, view.key)
    if not key:
        return None
    local_fields: dict[str, Any] = read_json(contact.fields)
    fields: dict[str, str | None] = {}
    for remote_name, local_name in view.fields.items():
        value = (
            getattr(contact, local_name)
            if local_name in ("email", "phone")
            else local_fields.get(local_name)
        )
        fields[remote_name] = None if value is None else str(value)
    if view.reference is not None:
        fields[view.reference] = contact.ref
    tags = read_json(contact.tags) if caps.tags else ()
    status, list_status = contact.status, contact.state
    if not caps.list_consent:
        status = "unsubscribed" if status == "active" and list_status != "active" else status
        list_status = "active"
    return Projection.build(key, fields, tags, caps.fold_status(status), list_status)


def stage_and_diff(session: Session, cycle: CycleState) -> None:
    """Bring both sides up to date and find the differing keys, in transactions of at most
    ``CHUNK`` rows (or one range of dirty keys) each: none holds the store's write lock for
    longer than that, whatever the list's size, so the inbox and the lease renewal always get a
    turn."""
    name = cycle.target.name
    seen.clear_scratch(session, name)
    if cycle.options.scope is not None:
        _stage_scope(session, cycle, cycle.options.scope)
        return
    if cycle.caps.export:
        log.debug("exporting the remote list")
        try:
            cycle.progress("exported", _read_export(session, cycle))
            cycle.remote_read = True
        except ExportIncomplete as exc:
            # Rule 1: a partial export proves nothing about absence. The base stands in.
            session.rollback()
            seen.clear_scratch(session, name)
            cycle.result.export_complete = False
            cycle.result.message = f"export incomplete, pushing local changes only: {exc}"
    project = stored_projector(cycle.view, cycle.caps)
    cycle.progress("staged local", _project_members(session, cycle, project))
    n = seen.compute_diff(
        session,
        name,
        cycle.view,
        project,
        remote_read=cycle.remote_read,
        settle=cycle.result.export_complete,
    )
    cycle.progress("differing keys", n)
    log.debug("planning: %d differing keys", n)


def _stage_scope(session: Session, cycle: CycleState, scope: Scope) -> None:
    """A narrowed cycle: the keys' rows as just read, their local rows as they are now, and
    the keys among them that differ. A handful of keys: compared here, and neither side's
    rows as last read are touched (a row read alone is no export)."""
    name, view, caps = cycle.target.name, cycle.view, cycle.caps
    keys = sorted(scope.remote)
    local: dict[str, Projection] = {}
    for member in mirror.local_members(session, view, keys):
        p = project_local(member, view, caps)
        if p is not None and p.key in scope.remote:
            local[p.key] = p
    base = mirror.projections(session, Base, name, keys)
    unseen = mirror.unseen(session, name, keys)
    differing = []
    for key in keys:
        remote = scope.remote[key]
        here, agreed, there = local.get(key), base.get(key), remote.projection
        if here == agreed == there and not unseen.get(key):
            continue
        differing.append(
            (
                name,
                key,
                here and here.to_json(),
                agreed and agreed.to_json(),
                there.to_json(),
                remote.raw_status,
                remote.opted_out_elsewhere,
            )
        )
    seen.stage_differing(session, differing)
    session.commit()
    log.debug("narrowed to %d keys: %d differ", len(keys), len(differing))


def _read_export(session: Session, cycle: CycleState) -> int:
    """Read the whole export; parse only the rows the last complete export did not have, and
    once this one has completed, make ``remote_seen`` what it showed.

    Each row is first checked against the last export's order (``export_order``): where the
    export holds still, as a provider's export of an unchanged list does, every row is where
    it was, found by one comparison. A row not where it was (new, changed, moved, or after a
    row that went) is asked of the store, ``LOOKUP`` at a time, and parsed if it is not there.
    Memory: the last order and this one (8 bytes a row each) and a byte a row."""
    name, provider = cycle.target.name, cycle.provider
    salt = seen.salt_of(cycle.target.model_dump(mode="json"), cycle.caps)
    seen.check_salt(session, name, "remote", salt)
    last = seen.export_order(session, name)
    session.commit()
    reading = _ExportReading(session, cycle, last)
    j, end = 0, len(last)
    for fp, raw in provider.export_raw(salt.encode()):
        reading.rows += 1
        if not reading.rows % PROGRESS_ROWS:
            cycle.progress("exporting", reading.rows)
        if j < end and last[j] == fp:  # where it was
            reading.met[j] = 1
            reading.order.append(fp)
            j += 1
            continue
        ahead = last[j + 1 : j + 1 + LOOK_AHEAD].tolist() if j < end else []
        if fp in ahead:  # the rows in between went
            j += ahead.index(fp) + 1
            reading.met[j] = 1
            reading.order.append(fp)
            reading.moved = True
            j += 1
            continue
        reading.look_up(fp, raw)
    reading.finish()
    return reading.rows


LOOK_AHEAD = 8  # rows of the last export looked past for a row not where it was
LOOKUP = 1000  # rows not where they were, asked of the store at once


class _ExportReading:
    """One export being read: what was met again, what is new, the order it came in."""

    def __init__(self, session: Session, cycle: CycleState, last: array[int]) -> None:
        self.session, self.cycle, self.last = session, cycle, last
        self.met = bytearray(len(last))
        self.order: array[int] = array("q")
        self.met_elsewhere: set[int] = set()
        self.asking: list[tuple[int, int, Any]] = []
        self.fresh: list[tuple[Any, ...]] = []
        self.rows = 0
        self.moved = False

    def look_up(self, fp: int, raw: Any) -> None:
        self.moved = True
        self.asking.append((self.rows, fp, raw))
        if len(self.asking) >= LOOKUP:
            self._ask()

    def _ask(self) -> None:
        name = self.cycle.target.name
        known = seen.known_fingerprints(self.session, name, [fp for _, fp, _ in self.asking])
        self.session.commit()
        for row, fp, raw in self.asking:
            if fp in known:
                if fp not in self.met_elsewhere:
                    self.met_elsewhere.add(fp)
                    self.order.append(fp)
                continue
            contact = self.cycle.provider.read_raw(raw)
            if contact is None:
                continue  # no usable key: never stored, so read again next time
            p = contact.projection
            data = p.to_json()
            self.fresh.append(
                (
                    name,
                    row,
                    p.key,
                    fp,
                    digest_of(data),
                    data,
                    contact.raw_status,
                    contact.opted_out_elsewhere,
                )
            )
            self.order.append(fp)
        self.asking = []
        if len(self.fresh) >= mirror.CHUNK:
            seen.stage_new(self.session, self.fresh)
            self.session.commit()
            self.fresh = []

    def finish(self) -> None:
        """The export completed: stage what is new and what went, and fold them in."""
        self._ask()
        name, session = self.cycle.target.name, self.session
        seen.stage_new(session, self.fresh)
        session.commit()
        unmet = {
            fp
            for fp, again in zip(self.last, self.met, strict=True)
            if not again and fp not in self.met_elsewhere
        }
        # an identical row the export had twice and has once now: met, so not gone
        gone = sorted(unmet - unmet.intersection(self.order)) if unmet else []
        self.moved = self.moved or bool(gone)
        for start in range(0, len(gone), mirror.CHUNK):
            seen.stage_gone(session, name, gone[start : start + mirror.CHUNK])
            session.commit()
        seen.fold_export(session, name, self.order if self.moved else None)


def project_stored(
    member: mirror.MemberRow, view: mirror.LocalView, caps: Capabilities
) -> seen.Projected:
    """``project_local``'s projection as ``local_seen`` stores it: (key, digest, JSON text);
    one member's ``stored_projector``."""
    return stored_projector(view, caps)(member)


#: where the reference field takes its value in ``stored_projector``'s plan (no local name)
_REF = object()


def stored_projector(
    view: mirror.LocalView, caps: Capabilities
) -> Callable[[mirror.MemberRow], seen.Projected]:
    """``project_local``'s projection as ``local_seen`` stores it, with what depends only on
    the view worked out once: the same text as ``project_local(...).to_json()`` (a test
    compares), built without the ``Projection`` in between, since a first push projects every
    member of the list and building, validating and encoding an object per member cost as
    much as storing it. Anything out of the ordinary (a status ``Projection`` would refuse,
    fields that are not a JSON object) goes through ``project_local`` itself, which refuses it
    the same way."""
    by_email = view.key == "email"
    spec: dict[str, object] = dict(view.fields)
    if view.reference is not None:
        spec[view.reference] = _REF  # syncd's reference wins over a field of the same name
    # sorted by remote name: the kept fields come out in ``Projection``'s order; each name
    # as JSON text once, its field written as ``[name,value]`` (``compact_json``'s text)
    plan = [(f"[{quote(name)},", local) for name, local in sorted(spec.items())]
    fold: dict[str, str] = {s: caps.fold_status(s) for s in STATUSES}
    tags_kept = caps.tags
    list_consent = caps.list_consent
    encode, digest, loads = compact_json, digest_of, read_json

    def as_object(member: mirror.MemberRow) -> seen.Projected:
        p = project_local(member, view, caps)
        assert p is not None
        data = p.to_json()
        return p.key, digest(data), data

    def project(member: mirror.MemberRow) -> seen.Projected:
        key = member.email if by_email else member.phone
        if not key:
            return None, None, None
        status, list_status = member.status, member.state
        if not list_consent:
            status = "unsubscribed" if status == "active" and list_status != "active" else status
            list_status = "active"
        folded = fold.get(status)
        local_fields = loads(member.fields)
        if folded is None or list_status not in LIST_STATUSES or type(local_fields) is not dict:
            return as_object(member)
        kept: list[str] = []
        for field, local_name in plan:
            if local_name == "email":
                value: Any = member.email
            elif local_name == "phone":
                value = member.phone
            elif local_name is _REF:
                value = member.ref
            else:
                value = local_fields.get(local_name)
            if value is not None:
                value = str(value)
                if value:
                    kept.append(f"{field}{quote(value)}]")
        stored = member.tags
        tags = sorted({t for t in loads(stored) if t}) if tags_kept and stored != "[]" else []
        # ``compact_json([key, fields, tags, status(, list status)])``'s text, written out: the
        # encoder's generic walk of the nested lists cost as much as the rest of the projection
        end = (
            f"{quote(folded)}]"
            if folded in OPTED_OUT or list_status == "active"
            else f"{quote(folded)},{quote(list_status)}]"
        )
        data = f"[{quote(key)},[{','.join(kept)}],{encode(tags) if tags else '[]'},{end}"
        return key, digest(data), data

    return project


def _project_members(
    session: Session, cycle: CycleState, project: Callable[[mirror.MemberRow], seen.Projected]
) -> int:
    """Project the members that have no projection for this target (new, or written since)."""
    name, view = cycle.target.name, cycle.view
    seen.check_salt(session, name, "local", seen.salt_of(view, cycle.caps))
    projected = 0
    for ids in seen.members_to_project(session, name, view):
        projected += seen.project_members(session, name, view, ids, project)
    # a phone target meets members with no phone: counted every cycle, projected once
    cycle.result.counts["no_key"] += seen.keyless_count(session, name)
    return projected
