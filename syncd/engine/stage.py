"""Staging: both sides of a target written to the stage tables, and the keys that differ.

The provider's export goes to ``stage_remote`` and the mirror's members, projected as this
target sees them (``project_local``), to ``stage_local``; the database then finds the keys whose
local, base and remote rows are not all equal (``mirror.compute_diff``), and only those are
read back and reconciled. Rows stream through the store: no side is held in Python memory.

Rule 1 (DESIGN §3) is kept here: an export that did not complete is thrown away, and the base
stands in for the remote side, so that nothing is inferred from a row's absence. A provider
without an export (``Capabilities.export``) always has the base there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from sqlmodel import Session

from syncd.core.projection import Projection, digest_of
from syncd.engine.result import Scope
from syncd.engine.state import CycleState
from syncd.errors import ExportIncomplete
from syncd.providers.base import Capabilities, RemoteContact
from syncd.store import mirror
from syncd.store.models import StageLocal, StageRemote

log = logging.getLogger("syncd.engine")


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
    local_fields: dict[str, Any] = json.loads(contact.fields)
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
    tags = json.loads(contact.tags) if caps.tags else ()
    status, list_status = contact.status, contact.state
    if not caps.list_consent:
        status = "unsubscribed" if status == "active" and list_status != "active" else status
        list_status = "active"
    return Projection.build(key, fields, tags, caps.fold_status(status), list_status)


def stage_and_diff(session: Session, cycle: CycleState) -> None:
    """Stage both sides and find the differing keys, in transactions of at most ``CHUNK`` rows
    (or one key range of the diff) each: none holds the store's write lock for longer than
    that, whatever the list's size, so the inbox and the lease renewal always get a turn."""
    name = cycle.target.name
    mirror.clear_stage(session, name)
    if cycle.options.scope is not None:
        _stage_scope(session, cycle, cycle.options.scope)
        return
    if cycle.caps.export:
        log.debug("exporting the remote list")
        try:
            n = mirror.stage_rows(session, StageRemote, _remote_rows(cycle), commit_chunks=True)
            cycle.progress("exported", n)
        except ExportIncomplete as exc:
            # Rule 1: a partial export proves nothing about absence. Start over from the base.
            session.rollback()
            mirror.clear_stage(session, name)
            mirror.stage_remote_as_base(session, name)
            cycle.result.export_complete = False
            cycle.result.message = f"export incomplete, pushing local changes only: {exc}"
    else:
        mirror.stage_remote_as_base(session, name)
    n = mirror.stage_rows(session, StageLocal, _local_rows(session, cycle), commit_chunks=True)
    cycle.progress("staged local", n)
    n = mirror.compute_diff(session, name, commit_chunks=True)
    cycle.progress("differing keys", n)
    log.debug("planning: %d differing keys", n)


def _stage_scope(session: Session, cycle: CycleState, scope: Scope) -> None:
    """A narrowed cycle: the keys' rows as just read, their local rows, and their diff alone."""
    name, keys = cycle.target.name, sorted(scope.remote)
    mirror.stage_rows(session, StageRemote, _remote_rows(cycle, scope.remote.values()))
    members = mirror.local_members(session, cycle.view, keys)
    local = ((m, project_local(m, cycle.view, cycle.caps)) for m in members)
    mirror.stage_rows(
        session,
        StageLocal,
        (_local_row(name, p) for _, p in local if p is not None and p.key in scope.remote),
    )
    n = mirror.compute_diff(session, name, keys=keys)
    session.commit()
    log.debug("narrowed to %d keys: %d differ", len(keys), n)


def _remote_rows(
    cycle: CycleState, read: Iterable[RemoteContact] | None = None
) -> Iterator[dict[str, Any]]:
    for remote in cycle.provider.export() if read is None else read:
        data = remote.projection.to_json()
        yield {
            "target": cycle.target.name,
            "key": remote.projection.key,
            "digest": digest_of(data),
            "data": data,
            "raw_status": remote.raw_status,
            "opted_out_elsewhere": remote.opted_out_elsewhere,
        }


def _local_rows(session: Session, cycle: CycleState) -> Iterator[dict[str, str]]:
    for page in mirror.iter_local_members(session, cycle.view):
        for contact in page:
            p = project_local(contact, cycle.view, cycle.caps)
            if p is None:
                cycle.result.counts["no_key"] += 1  # a phone target meets one with no phone
                continue
            yield _local_row(cycle.target.name, p)


def _local_row(target: str, p: Projection) -> dict[str, str]:
    data = p.to_json()
    return {"target": target, "key": p.key, "digest": digest_of(data), "data": data}
