"""One chunk of the diff: decided, its local half written, its remote half journalled and batched.

``decide`` reconciles a chunk's keys with what ``reconcile`` needs beyond the three snapshots:
a person's resolution of a conflict, the owner of a remote row that is syncd's own, the writes
of an earlier cycle whose answer was lost (``InFlight``) and the state left at a provider that
keeps a contact taken off the list (``OffList``). The guard pass and the execute pass both use it.

``apply_chunk`` is the execute pass for one chunk, inside the mirror's write lock: it re-reads
the contacts it would write (an inbox file may have edited them since they were staged), writes
what came from the provider into the mirror (with the outbox's record of it), moves the base of
keys that need no call, journals the calls about to be made, and hands the writes to the batcher.
The caller commits all of it in one transaction and only then pushes the full batches, so a local
write never commits without its remote half's journal, and the lock is never held across a call.

What the provider cannot do is decided here too (``_row_change``): an opt-out at a provider
without statuses, a delete at a provider without deletes. Each such contact is reported, never
dropped silently.

Each key the chunk settles, holds or writes locally gets its history step (``_Steps``) in the
chunk's transaction; a key batched for a call gets its step once the answer is read
(``syncd.engine.push``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sqlmodel import Session

# by module path, not from the package: syncd.engine imports this module (no circle)
import syncd.engine.confirm_later as confirm_later
import syncd.engine.records as records
from syncd.core.batching import Batch, Batcher
from syncd.core.projection import Projection, RemoteChange, is_opted_out
from syncd.core.reconcile import Decision, Sent, Takes, reconcile
from syncd.engine.stage import project_local
from syncd.engine.state import CycleState
from syncd.providers.base import RowChange
from syncd.store import history, mirror
from syncd.store.models import Base, Contact, Rejection, RemoteSeen

log = logging.getLogger("syncd.engine")


def decide(
    session: Session, cycle: CycleState, chunk: list[mirror.DiffRow], takes: dict[str, Takes]
) -> list[tuple[mirror.DiffRow, Decision]]:
    """Each key of the chunk decided, with the lost answers among its keys (see InFlight),
    those taken off the list that the provider keeps (see OffList) and those deleted locally
    whose absence at the provider is still being counted (``Base.unseen``).

    Rows that syncd's own machinery would send are checked against this cycle's export first
    (``_checked_against_export``): an update goes only to a contact the export showed."""
    keys = [row.key for row in chunk]
    target = cycle.target.name
    sent = mirror.in_flight(session, target, keys)  # the chunk's writes whose answer was lost
    # the chunk's keys syncd took off the list
    creates = _creates(chunk)  # the keys new on this list
    off_list = _off_list(session, cycle, keys, creates) if cycle.caps.tags else {}
    opted_out_there = _opted_out_in_account(session, cycle, creates)
    unseen = mirror.unseen(session, target, [row.key for row in chunk if row.base is not None])
    # off this list locally, the contact the mirror still has: its status is its own, and an
    # edit of it pushed through another list of the account is no edit at the provider
    off_here = [r.key for r in chunk if r.local is None and r.base is not None and r.remote]
    own = _own(cycle, mirror.own_contacts(session, cycle.view, off_here)) if off_here else {}
    decided = []
    for row in chunk:
        local = _as_local(cycle, row, sent.get(row.key))
        d = reconcile(
            local,
            row.base,
            _remote_of(cycle, row, row.key in unseen),
            cycle.rules,
            takes.get(row.key),
            cycle.owners.by_remote_key.get(row.key),
            cycle.owners.moved.get(row.key),
            sent.get(row.key),
            off_list.get(row.key),
            unseen.get(row.key, 0),
            own.get(row.key),
            opted_out_there.get(row.key),
        )
        decided.append((row, _checked_against_export(cycle, row, d, local, row.key in sent)))
    return decided


def _off_list(
    session: Session, cycle: CycleState, keys: list[str], creates: list[str]
) -> dict[str, Projection]:
    """What the provider keeps of these keys outside this target's list, for a create to start
    from: this target's own record of taking the contact off its list, and the tags of every
    record of it on the account's other lists (another target took it off its list, or, for a
    key this list would create, holds it on its list still and takes it off only when its own
    cycle comes, maybe after this one). Each record is the account's contact as its target last
    saw it, and another target may have changed the tags since: the create starts from all of
    them together, so that a tag the mirror dropped goes whichever record saw it last (a tag
    too many only makes the create replace the tags, which it may always do). Of another
    list's records only the tags are taken: the fields are that target's to manage."""
    found = mirror.off_list(session, cycle.target.name, keys)
    elsewhere: dict[str, set[str]] = {}
    for peer in cycle.options.peers:
        records = [mirror.off_list(session, peer, keys)]
        if creates:
            records.append(mirror.projections(session, Base, peer, creates))
        for kept in records:
            for key, record in kept.items():
                elsewhere.setdefault(key, set()).update(record.tags)
    for key, tags in elsewhere.items():
        own = found.get(key)
        found[key] = (
            Projection.build(key, {}, tags) if own is None else own.replace(tags=own.tags | tags)
        )
    return found


def _creates(chunk: list[mirror.DiffRow]) -> list[str]:
    """The chunk's keys new on this list: a local row, no base, no row in the export."""
    return [r.key for r in chunk if r.local is not None and r.base is None and not r.remote]


def _opted_out_in_account(
    session: Session, cycle: CycleState, creates: list[str]
) -> dict[str, str]:
    """The contact's own opt-out (``unsubscribed`` or ``blocked``) for each key this list
    would create, where another list of the account showed it in its last complete export:
    the address is opted out in the account, which a create cannot undo (rule 3). Not from a
    base: an opt-out that Unisender could keep only as a list's mark (a `new` address) is
    agreed as the contact's own there, while the address stays open to a create."""
    found: dict[str, str] = {}
    for peer in cycle.options.peers if creates else ():
        for key, seen in mirror.projections(session, RemoteSeen, peer, creates).items():
            if is_opted_out(seen.status) and found.get(key) != "blocked":
                found[key] = seen.status  # blocked over unsubscribed: the stronger word
    return found


def _own(cycle: CycleState, found: dict[str, mirror.MemberRow]) -> dict[str, Projection]:
    """The mirror's contacts as this target would see them on its list."""
    own = {}
    for key, member in found.items():
        projected = project_local(member, cycle.view, cycle.caps)
        if projected is not None:
            own[key] = projected
    return own


def _as_local(cycle: CycleState, row: mirror.DiffRow, sent: Sent | None) -> Projection | None:
    """The local row as reconcile is to see it, for a key this cycle's export does not show.

    Where the local row holds nothing but what syncd itself sent or is about to send, the
    contact has no local edit the provider has not been asked to take, and its absence from
    the export is the provider's delete, which wins exactly as it does without
    ``reference_field``:

    - a row that differs from its base only in syncd's reference (a contact pulled from the
      provider, whose reference is not written there yet);
    - a row that is the update whose answer was lost (``sent``), reference apart.

    Seen as local edits, either would make it "edited locally, deleted remotely" and re-create
    the contact at the provider. The row then reconciles as its base (unchanged locally). A
    create whose answer was lost is left as it is: absent from the export, it may never have
    arrived, and sending it again is how it gets there.
    """
    local, base = row.local, row.base
    if local is None or base is None or row.remote is not None:
        return local
    reference = cycle.rules.reference
    sent_update = sent.row if sent is not None and sent.before is not None else None
    for own in (base, sent_update):
        if own is not None and _same_apart_from(reference, local, own):
            return base
    return local


def _checked_against_export(
    cycle: CycleState, row: mirror.DiffRow, d: Decision, local: Projection | None, sent: bool
) -> Decision:
    """Hold an update that no complete export of this cycle vouches for.

    importContacts is an upsert: an update for a contact no longer at the provider re-creates
    it. With an incomplete export (rule 1) the remote side is the base, so whether the contact
    is still there is unknown. The rows syncd sends of its own accord, the reference written
    after a pull and a write re-sent after its answer was lost, wait for a complete export.
    """
    if d.remote_op != "update" or not cycle.caps.export or cycle.result.export_complete:
        return d
    reference = cycle.rules.reference
    own_reference = (
        reference is not None
        and local is not None
        and row.base is not None
        and _same_apart_from(reference, local, row.base)
    )
    if not (sent or own_reference):
        return d
    return Decision(d.key, "update_deferred", base=row.base, keep_base=True)


def _same_apart_from(field: str | None, a: Projection, b: Projection) -> bool:
    """Equal in everything but ``field`` (None: equal)."""
    af, bf = a.field_map, b.field_map
    if field is not None:
        af.pop(field, None)
        bf.pop(field, None)
    return af == bf and a.tags == b.tags and (a.status, a.list_status) == (b.status, b.list_status)


def _remote_of(cycle: CycleState, row: mirror.DiffRow, tombstone: bool) -> Projection | None:
    """The remote side to decide ``row`` from. Where the export was not read whole, the base
    stands in for it (rule 1), but a base kept as a local delete's tombstone says nothing of a
    contact added back locally since: that one is decided as unknown at the provider, so its
    create waits for a complete export instead of meeting the old base as the provider's row."""
    if tombstone and row.local is not None and not cycle.result.export_complete:
        return None
    return row.remote


def apply_chunk(
    session: Session,
    cycle: CycleState,
    chunk: list[mirror.DiffRow],
    takes: dict[str, Takes],
    rejections: dict[str, Rejection],
    batcher: Batcher,
) -> list[Batch]:
    """Decide the chunk and write its local half; return the batches it filled, to be
    pushed once that is committed (the lock taken here is not held across a call)."""
    counts = cycle.result.counts
    target = cycle.target.name
    if not cycle.dry_run:
        mirror.take_write_turn(session)
    decisions = decide(session, cycle, chunk, takes)
    edited = _edited_since_staged(session, cycle, decisions)
    wanted = [d.key for _, d in decisions if d.local_op or d.remote_op == "delete"]
    wanted += [d.rekey_from for _, d in decisions if d.rekey_from]
    contacts = mirror.contacts_by_key(session, cycle.view, wanted) if wanted else {}
    full: list[Batch] = []
    awaiting = (
        confirm_later.pending_keys(session, target, [d.key for _, d in decisions])
        if cycle.caps.confirms_later
        else set()
    )
    settle: list[Projection] = []
    forget: list[str] = []
    steps = _Steps(cycle)
    flying: list[tuple[Projection, Projection | None]] = []
    leaving: list[Projection] = []
    unseen: list[str] = []
    for row, d in decisions:
        if d.key in edited:
            counts["edited_during_cycle"] += 1  # decided on a stale read: next cycle
            cycle.held_keys.add(d.key)
            steps.add(d, "held", reason="edited locally while the cycle ran: decided again next")
            continue
        if d.held:
            counts["conflicts_open"] += 1
            counts[d.case] += 1  # conflict_held, or first_meeting_held (first_sync = "manual")
            cycle.held_keys.add(d.key)
            if not cycle.dry_run:
                records.record_conflict(session, target, d, row, takes.get(d.key))
            steps.steady(d, "held", reason=_HELD.get(d.case, d.case))
            continue
        if d.keep_base:
            counts[d.case] += 1
            if d.unseen:
                unseen.append(d.key)  # one more export lacked a key deleted locally
            steps.steady(d, "held", reason=_HELD.get(d.case, "nothing written this cycle"))
            continue
        if d.key in awaiting and d.remote_op is not None:
            counts["still_awaiting"] += 1  # sent before; its callback has not come yet
            cycle.held_keys.add(d.key)
            steps.steady(d, "awaiting", reason="sent before; its callback has not come yet")
            continue
        counts["conflicts_settled"] += len(d.conflicts)
        if d.local_op is not None:
            event = _apply_local(session, cycle, d, row, contacts.get(d.rekey_from or d.key))
            if not cycle.dry_run:
                cycle.local_notes[d.key] = {
                    "changed": records.changes(row.local, d.local_row),
                    "event": dict(event) if event else None,  # the outbox event that told of it
                }
        if d.rekey_from is not None:
            forget.append(d.rekey_from)  # the old key's base goes with the move
        if d.remote_op is None:
            if d.base is None:
                forget.append(d.key)
            else:
                settle.append(d.base)
            steps.add(d, "applied" if d.local_op else "settled", moved_from=d.rekey_from)
            continue
        change = _row_change(cycle, d, contacts.get(d.key), row.opted_out_elsewhere)
        if change is None:
            if d.remote_op == "delete" and not cycle.dry_run:
                forget.append(d.key)  # reported once; the provider cannot act on it
            steps.add(d, "not_sent", reason=_not_sent_reason(d))
            continue
        if change.op in ("delete", "exclude") and d.remote_op != "delete":
            # an opt-out the provider cannot hold: off the list, and forget what was there
            d = replace(d, base=None)
        held = rejections.get(d.key)
        if held is not None and not held.retryable and held.digest == change.row.digest():
            counts["held_rejected"] += 1  # refused before; waits until the record changes
            cycle.held_keys.add(d.key)
            steps.steady(
                d,
                "held",
                reason="refused before; waits until the local record changes",
                code=held.code,
                message=held.message,
            )
            continue
        if not cycle.result.export_complete and change.op in ("create", "delete", "exclude"):
            counts["deferred"] += 1  # the remote state is unknown: no creates or deletes
            steps.add(d, "deferred", reason=f"the export was incomplete: the {change.op} waits")
            continue
        cycle.pending[d.key] = d
        if change.op in ("create", "update"):
            flying.append((change.row, change.remote))
        elif change.op == "exclude" and cycle.caps.tags:
            leaving.append(change.row)
        full += batcher.add(change, with_status=d.pushes_status, overwrite_tags=d.overwrite_tags)
    if not cycle.dry_run:
        mirror.set_base(session, target, settle)
        mirror.drop_base(session, target, forget)
        mirror.count_unseen(session, target, unseen)
        mirror.drop_off_list(session, target, [p.key for p in settle])
        _journal(session, cycle, flying, leaving)
        # a lost answer is settled once its key's base moves: kept, it would misread the
        # next export against a base it no longer belongs to
        mirror.drop_in_flight(session, target, [p.key for p in settle] + forget)
        records.clear_conflicts(session, target, [d.key for _, d in decisions if not d.held])
        steps.write(session)
    return full


def _edited_since_staged(
    session: Session, cycle: CycleState, decisions: list[tuple[mirror.DiffRow, Decision]]
) -> set[str]:
    """Keys whose decision writes the mirror but whose contact changed since it was staged
    (an inbox file applied during this cycle). Written back, the pulled row would undo that
    local edit; left alone, the next cycle decides them again from what is there now.
    Called with the write lock held, so nothing can change them between this read and the
    chunk's commit."""
    owners = cycle.owners.by_remote_key
    staged: dict[str, Projection | None] = {}
    for row, d in decisions:
        if d.local_op is not None:
            staged[d.key] = row.local
        if d.rekey_from is not None and owners.get(d.key) is not None:
            staged[d.rekey_from] = owners[d.key].local
    if not staged or cycle.dry_run:
        return set()
    now: dict[str, Projection] = {}
    for member in mirror.local_members(session, cycle.view, sorted(staged)):
        p = project_local(member, cycle.view, cycle.caps)
        if p is not None:
            now[p.key] = p
    changed = {key for key, was in staged.items() if now.get(key) != was}
    keys = {d.key for _, d in decisions if d.key in changed or d.rekey_from in changed}
    if keys:
        log.info(
            "%d contacts were edited locally while this cycle ran; the next cycle takes them up",
            len(keys),
            extra={"target": cycle.target.name},
        )
    return keys


def _journal(
    session: Session,
    cycle: CycleState,
    flying: list[tuple[Projection, Projection | None]],
    leaving: list[Projection],
) -> None:
    """Record the chunk's writes before they are sent, in the transaction of its local
    writes, so that a local write is never committed without its remote half and a lost
    answer still leaves a trace:

    - creates and updates (InFlight), for the next export to read back;
    - excludes at a provider that keeps the contact and its tags (OffList): the state left
      there, from which a later return to the list starts. Recorded only on confirmation,
      an exclude whose answer was lost would leave no record, and tags removed locally in
      the meantime would stay at the provider. A record whose exclude did not land is
      harmless: it is read only when the contact is created again, and dropped once the
      key has a base.
    """
    if cycle.caps.export:  # only an export can read them back
        mirror.set_in_flight(session, cycle.target.name, flying)
    mirror.set_off_list(session, cycle.target.name, leaving)


def _row_change(
    cycle: CycleState, d: Decision, contact: Contact | None, opted_out_elsewhere: bool = False
) -> RowChange | None:
    """The write for a decision, as far as the provider's capabilities allow (or None).

    A contact the local side deleted leaves the list instead of being deleted when the provider
    records its opt-out from another list (``opted_out_elsewhere``): the delete reaches the
    whole account and would erase that record (DESIGN §8, consent per list).
    """
    assert d.remote_op is not None and d.remote_row is not None
    if d.pushes_status and d.remote_row.status not in cycle.caps.statuses:
        return _opt_out_without_status(cycle, d)
    if d.remote_op != "delete":
        return RowChange(d.remote_op, d.remote_row, d.remote_before)
    tombstoned = contact is None or contact.deleted
    if (
        tombstoned
        and cycle.target.on_local_delete == "delete"
        and cycle.caps.delete
        and not opted_out_elsewhere
    ):
        return RowChange("delete", d.remote_row, d.remote_before)
    return _off_the_list(cycle, d, "the provider has no documented way to delete a contact")


def _opt_out_without_status(cycle: CycleState, d: Decision) -> RowChange | None:
    """The provider cannot record an opt-out: it must not be asked to hold the contact.

    Never created there (it would be messaged as active); if it is there already, it is
    taken off the list, and reported where even that is impossible.
    """
    if d.remote_op == "create":
        cycle.result.counts["withheld_opted_out"] += 1
        return None
    return _off_the_list(cycle, d, "opted out, but the provider can neither record an opt-out "
                                   "nor remove the contact: remove it by hand")  # fmt: skip


def _off_the_list(cycle: CycleState, d: Decision, reason: str) -> RowChange | None:
    assert d.remote_row is not None
    if cycle.caps.exclude:
        return RowChange("exclude", d.remote_row, d.remote_before)
    if cycle.caps.delete:
        return RowChange("delete", d.remote_row, d.remote_before)
    cycle.result.counts["unsupported"] += 1
    _report_unsupported(cycle, d.key, reason)
    return None


def _report_unsupported(cycle: CycleState, key: str, reason: str) -> None:
    """Per contact, never silently: a log line each, and the first few in the run message."""
    log.warning("%s: %s", key, reason, extra={"target": cycle.target.name})
    shown = cycle.result.unsupported
    if len(shown) < 20:
        shown.append(f"{key}: {reason}")


def _apply_local(
    session: Session,
    cycle: CycleState,
    d: Decision,
    row: mirror.DiffRow,
    contact: Contact | None,
) -> Mapping[str, str] | None:
    """Write the decision's local half; returns the outbox event that tells of it."""
    counts = cycle.result.counts
    if cycle.dry_run:
        counts["pulled" if d.local_op == "upsert" else "removed_local"] += 1
        return None
    if d.local_op == "upsert":
        assert d.local_row is not None
        mirror.apply_remote_state(session, cycle.view, d.local_row, row.raw_status, contact)
        counts["pulled"] += 1
    elif mirror.remove_from_list(session, cycle.view, contact):
        counts["removed_local"] += 1
    if cycle.options.on_remote_change is not None:
        change = RemoteChange(cycle.target.name, d.key, d.case, row.local, d.local_row)
        return cycle.options.on_remote_change(session, change)
    return None


# -- history ------------------------------------------------------------------------------

#: Why a key that differs was left as it is, by case.
_HELD = {
    "conflict_held": "a field changed on both sides: waits for syncd resolve",
    "first_meeting_held": "first meeting with different data (first_sync = manual): waits for "
    "syncd resolve",
    "keep_opted_out": "deleted locally, opted out at the provider: kept there so the opt-out "
    "stays on record",
    "absence_unconfirmed": "gone on both sides: the local delete is kept until more exports "
    "lack the key",
    "moved_at_provider": "the provider changed the key: the new key carries the contact",
    "update_deferred": "an update syncd sends of its own accord waits for a complete export",
}


def _not_sent_reason(d: Decision) -> str:
    if d.remote_op == "create":
        return "opted out, and the provider cannot record an opt-out: not created there"
    return "the provider cannot carry this out: remove the contact there by hand"


class _Steps:
    """The chunk's history rows, written with its writes (``syncd.store.history``).

    A key left as it was for the same reason as in its last row (a held conflict, a refusal
    waiting for an edit, an opt-out kept) is not written again each cycle: its row says since
    when.
    """

    def __init__(self, cycle: CycleState) -> None:
        self.cycle = cycle
        self.rows: list[dict[str, Any]] = []
        self.steady_keys: set[str] = set()

    def add(self, d: Decision, result: str, **said: Any) -> None:
        if self.cycle.dry_run:
            return
        cycle = self.cycle
        notes = cycle.local_notes.pop(d.key, {})
        self.rows.append(records.step(cycle.run_id, cycle.target.name, d, result, **notes, **said))

    def steady(self, d: Decision, result: str, **said: Any) -> None:
        self.add(d, result, **said)
        self.steady_keys.add(d.key)

    def write(self, session: Session) -> None:
        rows = self.rows
        if self.steady_keys:
            last = history.last_steps(session, self.cycle.target.name, sorted(self.steady_keys))
            rows = [
                r
                for r in rows
                if r["key"] not in self.steady_keys
                or last.get(r["key"]) != (r["case"], r["outcome"])
            ]
        history.add(session, rows)
