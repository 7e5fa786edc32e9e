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

import json
import logging
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from sqlmodel import Session

from syncd.core.projection import Projection, digest_of
from syncd.engine.state import CycleState
from syncd.errors import ExportIncomplete
from syncd.providers.base import Capabilities
from syncd.store import mirror, seen

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
    """Bring both sides up to date and find the differing keys, in transactions of at most
    ``CHUNK`` rows (or one range of dirty keys) each: none holds the store's write lock for
    longer than that, whatever the list's size, so the inbox and the lease renewal always get a
    turn."""
    name = cycle.target.name
    seen.clear_scratch(session, name)
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
    project = _projector(cycle)
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


def _read_export(session: Session, cycle: CycleState) -> int:
    """Read the whole export; parse only the rows whose fingerprint the last complete export
    did not have, and once this one has completed, make ``remote_seen`` what it showed.
    Memory: the known fingerprints as one sorted array (8 bytes a row) and a byte a row to
    mark those met again; new rows go to the store ``CHUNK`` at a time."""
    name, provider = cycle.target.name, cycle.provider
    salt = seen.salt_of(cycle.target.model_dump(mode="json"), cycle.caps)
    seen.check_salt(session, name, "remote", salt)
    known = seen.remote_fingerprints(session, name)
    session.commit()
    met = bytearray(len(known))
    fresh: list[tuple[Any, ...]] = []
    rows = 0
    for fp, raw in provider.export_raw(salt.encode()):
        rows += 1
        if not rows % PROGRESS_ROWS:
            cycle.progress("exporting", rows)
        at = bisect_left(known, fp)
        if at < len(known) and known[at] == fp:
            met[at] = 1
            continue
        contact = provider.read_raw(raw)
        if contact is None:
            continue
        p = contact.projection
        data = p.to_json()
        fresh.append(
            (
                name,
                rows,
                p.key,
                fp,
                digest_of(data),
                data,
                contact.raw_status,
                contact.opted_out_elsewhere,
            )
        )
        if len(fresh) >= mirror.CHUNK:
            seen.stage_new(session, fresh)
            session.commit()
            fresh = []
    seen.stage_new(session, fresh)
    session.commit()
    gone = [fp for fp, again in zip(known, met, strict=True) if not again]
    for start in range(0, len(gone), mirror.CHUNK):
        seen.stage_gone(session, name, gone[start : start + mirror.CHUNK])
        session.commit()
    seen.fold_export(session, name)
    return rows


def _projector(cycle: CycleState) -> Callable[[mirror.MemberRow], seen.Projected]:
    view, caps = cycle.view, cycle.caps

    def project(member: mirror.MemberRow) -> seen.Projected:
        p = project_local(member, view, caps)
        if p is None:
            return None, None, None
        data = p.to_json()
        return p.key, digest_of(data), data

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
    cycle.result.counts["no_key"] += seen.local_counts(session, name)[1]
    return projected
