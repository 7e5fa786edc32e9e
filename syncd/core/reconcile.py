"""The three-way merge: one key's local, base and remote projections -> one decision.

This is DESIGN.md §2 written as code. It is a pure function of its inputs: no I/O, no clock, no
randomness, so it can be tested row by row of the table and run on millions of keys. Conflicts
are decided from the base, never from timestamps.

Symbols: L = local projection, B = base (what both sides last agreed on), R = remote projection;
each may be absent (None). The decision says what to write on each side and what the base
becomes once those writes are confirmed.

References (``Rules.reference``): where a target keeps syncd's stable id of each contact in a
remote field, a remote row without a base that carries a local contact's id is *ours*, not a
sign-up: a create whose answer was lost, or a contact whose key changed at the provider. The
engine finds the owning contact (``Owner``); the rows below decide what it means.

Absence on both sides (``Rules.absence_exports``, ``ABSENCE_EXPORTS``): a key deleted locally
that the export lacks too is forgotten only once enough complete exports have lacked it; until
then its base stays, so that a contact the export only seemed to lack is deleted when it shows
again, not taken for a sign-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from syncd.core.projection import Projection, is_opted_out

Policy = Literal["local", "remote", "manual"]
RemoteOp = Literal["create", "update", "delete"]
LocalOp = Literal["upsert", "remove"]
Take = Literal["local", "remote"]
#: a person's resolution of a held conflict: one side for the whole contact, or one per field
Takes = Take | Mapping[str, Take]

#: How many complete exports must lack a key that the local side deleted before syncd forgets
#: it (drops its base). See ``reconcile``'s "gone on both sides" for why one is not enough.
ABSENCE_EXPORTS = 3


@dataclass(frozen=True, slots=True)
class Rules:
    """The parts of a target's configuration that reconciliation needs."""

    policy: Callable[[str], Policy] = lambda _field: (
        "local"
    )  # who wins a field changed on both sides
    edit_beats_delete: bool = True  # one side edited, the other deleted: keep the edit
    reference: str | None = None  # the remote field holding syncd's stable id (reference_field)
    # who wins a field both sides hold with different values when there is no base yet (a first
    # sync against a filled list): neither value is an edit, so ``policy`` does not apply
    first_sync: Policy = "manual"
    # complete exports that must lack a key deleted locally before its base goes; 1 takes each
    # export at its word, as DESIGN §2's table reads; the engine passes ABSENCE_EXPORTS
    absence_exports: int = 1

    def ref_of(self, p: Projection | None) -> str | None:
        return None if p is None or self.reference is None else p.field_map.get(self.reference)


@dataclass(frozen=True, slots=True)
class Owner:
    """The local contact whose reference a base-less remote row carries, seen under its own key.

    ``local`` None: it was deleted or left the list. ``key_taken``: another local contact holds
    the remote row's key, so the mirror cannot take that key for this one.
    """

    local: Projection | None
    base: Projection | None  # the base of the owner's own key
    remote_at_key: bool  # the export holds the owner's own key too
    key_taken: bool = False

    def moved_at_provider(self, key: str) -> bool:
        """Synced under its own key, gone from there, now under ``key``: the provider moved it."""
        return (
            self.local is not None
            and self.local.key != key
            and self.base is not None
            and not self.remote_at_key
            and not self.key_taken
        )


@dataclass(frozen=True, slots=True)
class FieldConflict:
    field: str
    local: str | None
    remote: str | None
    base: str | None


@dataclass(frozen=True, slots=True)
class Sent:
    """A create or update syncd sent for a key and never read the answer of.

    The mirror already holds ``row`` (a local write of the same decision is committed before
    the call); the provider holds it only if the write landed. The export tells, part by part
    (each field, each tag, the status): a part the write was to change that still shows its
    ``before`` value did not land; any other part did, or was edited there since. Tags are read
    one by one, not as a set: a tag the write added that is still missing did not land, even
    when the provider removed another tag meanwhile.

    An update names only the fields in which ``row`` differs from ``before`` (where the provider
    keeps what a call does not name, ``syncd.core.batching``), carries the tags only when the two
    sets differ, and the status only to record an opt-out ``before`` lacks. A part it did not send
    has the same value in both, so it is never taken as sent: whatever the export shows there is
    measured against ``before``, and a change is the provider's own edit (a field edited, a tag
    removed), made while the write was on its way.
    """

    row: Projection  # as sent
    before: Projection | None  # the remote row it was to change (None: a create)

    def agreed(self, remote: Projection) -> Projection:
        """What both sides last agreed on: the base to reconcile ``remote`` against."""
        before = self.before or Projection.build(remote.key)
        s, b, r = self.row.field_map, before.field_map, remote.field_map

        def part(sent: Any, was: Any, now: Any) -> Any:
            return was if sent != was and now == was else sent

        fields = {f: part(s.get(f), b.get(f), r.get(f)) for f in s.keys() | b.keys()}
        sent_tags, was_tags, now_tags = set(self.row.tags), set(before.tags), set(remote.tags)
        tags = [
            t
            for t in sent_tags | was_tags | now_tags
            if part(t in sent_tags, t in was_tags, t in now_tags)
        ]
        return Projection.build(
            remote.key,
            fields,
            tags,
            part(self.row.status, before.status, remote.status),
            part(self.row.list_status, before.list_status, remote.list_status),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    key: str
    case: str  # which row of the table applied (shown by `plan`, asserted by tests)
    remote_op: RemoteOp | None = None
    remote_row: Projection | None = None  # desired remote state; for delete, the last known one
    remote_before: Projection | None = None  # R as exported
    local_op: LocalOp | None = None
    local_row: Projection | None = None  # the state to write into the mirror (upsert)
    base: Projection | None = None  # the base once carried out; None = drop it
    conflicts: tuple[FieldConflict, ...] = ()
    held: bool = False  # a manual conflict is open: touch neither side
    keep_base: bool = False  # write nothing at all, not even the base
    # the provider changed the contact's key: the mirror's contact under this key takes the
    # decision's key, and this key's base goes (with the local write, in one transaction)
    rekey_from: str | None = None
    # gone on both sides, base kept: this export counts as one more that lacked the key
    unseen: bool = False

    @property
    def is_noop(self) -> bool:
        return self.remote_op is None and self.local_op is None

    @property
    def writes_remote(self) -> bool:
        return self.remote_op is not None

    @property
    def overwrite_tags(self) -> bool:
        """Tags must be replaced (not added to) only when a tag has to go at the remote.

        A create starts from a remote state too when the provider still holds the contact
        outside the list (``off_list`` of ``reconcile``): its tags would otherwise survive.
        """
        return (
            self.remote_op in ("create", "update")
            and self.remote_before is not None
            and self.remote_row is not None
            and bool(self.remote_before.tags - self.remote_row.tags)
        )

    @property
    def pushes_status(self) -> bool:
        """The consent columns are sent only to record an opt-out the remote does not have
        yet: the contact's own, or its leaving this list (``Projection.list_status``)."""
        if self.remote_op not in ("create", "update") or self.remote_row is None:
            return False
        if self.remote_row.mailable:
            return False
        if self.remote_op == "create" or self.remote_before is None:
            return True  # what the provider kept off the list is not on the list's record
        row, before = self.remote_row, self.remote_before
        return (is_opted_out(row.status) and before.status != row.status) or (
            row.list_status == "unsubscribed" and before.list_status != "unsubscribed"
        )


def may_delete(local: bool, base: bool) -> bool:
    """Whether ``reconcile`` can decide a delete at the provider or a removal from the mirror
    for a key with a local row or without (``local``), with a base or without (``base``): only
    for a key the local side lacks, or one both sides agreed on before. A key new locally (a
    create, a first meeting, a lost create recognised) is never deleted on either side. The
    mass-delete guard counts deletions among the keys this allows alone, so a first push of
    new contacts is counted without deciding each one twice (``syncd.engine``)."""
    return not local or base


def reconcile(
    local: Projection | None,
    base: Projection | None,
    remote: Projection | None,
    rules: Rules = Rules(),
    take: Takes | None = None,
    owner: Owner | None = None,
    moved_to: str | None = None,
    sent: Sent | None = None,
    off_list: Projection | None = None,
    unseen: int = 0,
    own: Projection | None = None,
    opted_out_there: str | None = None,
) -> Decision:
    """Decide one key. ``take`` settles a manual conflict that a person resolved (one side for
    every field, or a side per field).

    ``owner``: the remote row has no base and carries the reference of a local contact that is
    not under this key (see ``Owner``). ``moved_to``: this key's contact was moved by the
    provider to that key, whose decision carries the move. ``sent``: the last create or update
    syncd sent for this key and never read the answer of. ``off_list``: the remote state of this
    key when syncd took it off the list at a provider that keeps it in the account; the export
    of the list no longer shows it, but its tags are still there. ``unseen``: how many complete
    exports lacked this key while the local side lacked it too, since both sides last agreed
    (kept with the base, see "gone on both sides" below). ``own``: where the key is off this
    list locally, the contact the mirror still has (on other lists, or a delete's tombstone) as
    this target would see it: this list's side does not show it, yet it may have changed since
    both sides agreed (an opt-out made locally, a re-activation, an edit pushed to the account
    through another list), and a contact pulled back from the provider keeps its status
    (``_revive``). ``opted_out_there``: for a key new on this list, the contact's own opt-out
    as another list of the account last exported it.
    """
    key = _key_of(local, base, remote)

    if unseen and local is not None:
        # the base is a local delete's tombstone (see "gone on both sides"), not an agreement
        # about this contact: back on the local side, it is a new contact there, met as if no
        # base were kept (so a copy identical to the base is created, not taken for a delete
        # at the provider)
        base = None

    if sent is not None and remote is not None:
        # a write whose answer was lost: where it landed, reading it back is syncd's own echo,
        # not a remote edit (DESIGN §8); where it did not, it is still to be done
        base = sent.agreed(remote)

    if (
        remote is not None
        and base is not None
        and is_opted_out(base.status)
        and not is_opted_out(remote.status)
        and remote.list_status != "active"
        and not _active_here(local, own)
    ):
        # the address is active there while the person is still unsubscribed from the list: not
        # a re-subscription (that would put the list back too), but an address the provider
        # could not mark opted out as a whole (Unisender keeps a `new` address's status), so
        # the opt-out went to the list only; the contact's own opt-out stands. Unless the local
        # contact is active again (made so locally, and maybe pushed to another list, which
        # made the address active): then the mark is what it says, the list's opt-out
        remote = remote.replace(status=base.status)

    if moved_to is not None:
        # the provider changed this contact's key: the new key's decision moves it; nothing here
        return Decision(key, "moved_at_provider", base=base, keep_base=True)

    if base is None and remote is not None and local is None and owner is not None:
        if owner.moved_at_provider(key):
            # synced under another key, now here at the provider: follow the key change and
            # merge as usual, from the base of the old key
            assert owner.local is not None and owner.base is not None
            d = _merge(
                key,
                _rekeyed(owner.local, key),
                _rekeyed(owner.base, key),
                remote,
                rules,
                take,
                "key_changed_remote",
            )
            if d.held:
                return d
            return replace(
                d,
                local_op="upsert",
                local_row=d.local_row or d.base,
                rekey_from=owner.local.key,
            )
        # ours, under a key the mirror no longer has (a lost create, then a local delete or key
        # change): as if that create had been confirmed, so the table carries out the delete
        # instead of bringing the contact back
        return replace(reconcile(None, remote, remote, rules), case="recognised_stale")

    if base is None:
        ref = rules.ref_of(local)
        if local is not None and remote is not None and ref and ref == rules.ref_of(remote):
            # our own create whose answer was lost: the remote holds what was sent, take it as
            # the base so that later local edits are pushed as edits, not merged as a meeting
            return _merge(key, local, remote, remote, rules, take, "recognised_create")
        if local is not None and remote is None:
            # new locally, unknown remotely: create it at the provider; back on the list after
            # syncd took it off, the create starts from what the provider kept (its tags)
            if opted_out_there is not None and not is_opted_out(local.status):
                # the account holds the contact opted out as a whole: the create puts it on
                # this list without its status (rule 3), and the mirror takes the provider's
                # opt-out now, as it would from the list's next export
                kept = local.replace(status=opted_out_there)
                return Decision(
                    key, "create_remote_opted_out", "create", local, off_list,
                    local_op="upsert", local_row=kept, base=kept,
                )  # fmt: skip
            return Decision(key, "create_remote", "create", local, off_list, base=local)
        if local is None and remote is not None:
            # born at the provider (a sign-up): bring it into the mirror
            return Decision(key, "create_local", local_op="upsert", local_row=remote, base=remote)
        if local is not None and remote is not None:
            # both sides have it and no history (first sync against a filled list)
            return _first_meeting(key, local, remote, rules, take)
        return Decision(key, "unchanged")  # nothing anywhere (cannot come out of the diff)

    if local is not None and remote is not None:
        return _merge(key, local, base, remote, rules, take, None)

    # From here on exactly one side lacks the key while the base has it.

    if local is not None and remote is None:
        if local == base:
            # same locally, gone remotely: the provider deleted it; follow
            return Decision(key, "remote_deleted", local_op="remove", base=None)
        if rules.edit_beats_delete:
            # edited locally, deleted remotely: the edit wins; put it back at the provider
            return Decision(key, "recreate_remote", "create", local, None, base=local)
        return Decision(key, "remote_delete_wins", local_op="remove", base=None)

    if local is None and remote is not None:
        if not remote.mailable:
            # deleting an opted-out contact at the provider would erase its opt-out record
            # (DESIGN §8), the whole contact's or this list's; if it changed remotely, the mirror
            # takes it back so consent is kept
            if remote == base:
                return Decision(
                    key, "keep_opted_out", remote_before=remote, base=base, keep_base=True
                )
            if own is not None and _echoes_own(base, remote, own):
                # all that changed there is the mirror's own data, written to the account
                # through another list: no edit at the provider, so the contact stays off this
                # list locally and its opt-out record stays there, now agreed as it reads
                return Decision(key, "keep_opted_out_echo", remote_before=remote, base=remote)
            return _revive(key, base, remote, own, "revive_local_opted_out")
        if remote == base:
            # deleted (or dropped from the list) locally, unchanged remotely: delete there
            return Decision(key, "local_deleted", "delete", remote, remote, base=None)
        if own is not None and _echoes_own(base, remote, own):
            # deleted (or dropped from this list) locally, and all that changed there since is
            # the mirror's own data: fields and tags are the account's, and another list's
            # target on the account wrote the contact's local edits there. Nobody edited it at
            # the provider, so the local delete stands
            return Decision(key, "local_deleted_echo", "delete", remote, remote, base=None)
        if rules.edit_beats_delete:
            # edited remotely, deleted locally: the edit wins; the contact returns to the mirror
            return _revive(key, base, remote, own, "revive_local")
        return Decision(key, "local_delete_wins", "delete", remote, remote, base=None)

    # Gone on both sides. The export is complete as far as syncd can tell, but a file cut at a
    # line break is valid CSV and Unisender states no row count: a contact in the missing tail
    # looks deleted there too. Dropping the base at once would forget the local delete, and the
    # next whole export would bring the contact back as a sign-up. So the base stays, as the
    # local delete's tombstone, until ``rules.absence_exports`` complete exports have lacked the
    # key; should it show again meanwhile, with the base's data, the row above deletes it, after
    # the usual checks (an opt-out recorded there is kept; an edit there follows the policy).
    #
    # Why not send the delete anyway (the provider answers a delete of an absent contact as
    # done)? Because it would be a write decided without seeing the row: the contact may have
    # opted out at the provider since the base, and a delete erases that record (DESIGN §8);
    # Unisender's delete may reach the whole account, beyond the list whose export lacked it;
    # and taking a contact off a list (``on_local_delete = "exclude"``) goes through the same
    # upsert there, which creates a contact it does not find. Counting exports writes nothing
    # at the provider, goes through the ordinary rows (the guard counts the delete when it
    # comes, rule 2; an incomplete export stages the base as the remote side, so it never
    # reaches this row, rule 1), and costs only these keys in the next few diffs. The count is
    # small because a contact that signs up again at the provider within it, with exactly the
    # base's data, is taken for the old one and deleted.
    if unseen + 1 < rules.absence_exports:
        return Decision(key, "absence_unconfirmed", base=base, keep_base=True, unseen=True)
    return Decision(key, "drop_base", base=None)


def _first_meeting(
    key: str, local: Projection, remote: Projection, rules: Rules, take: Takes | None
) -> Decision:
    """Merge with an empty base: a value one side lacks comes from the other, tags add up,
    an opt-out from either side stays (rule 3). A field both sides hold with different values
    has no ancestor to tell which is an edit, so ``first_sync`` decides it, not ``policy``:
    under ``manual`` the contact is held (``first_meeting_held``) until a person chooses. The
    reference field is syncd's own id, never the person's choice: the local one goes out.
    """
    first = replace(
        rules,
        policy=lambda name: "local" if name == rules.reference else rules.first_sync,
    )
    d = _merge(key, local, Projection.build(key), remote, first, take, "first_meeting")
    return replace(d, case="first_meeting_held") if d.held else d


def _rekeyed(p: Projection, key: str) -> Projection:
    return Projection(key, p.fields, p.tags, p.status, p.list_status)


def _pull_back(key: str, remote: Projection, case: str) -> Decision:
    return Decision(key, case, local_op="upsert", local_row=remote, base=remote)


def _active_here(local: Projection | None, own: Projection | None) -> bool:
    """The contact is active locally: on this list, or, off it, in the mirror."""
    here = local if local is not None else own
    return here is not None and not is_opted_out(here.status)


def _echoes_own(base: Projection, remote: Projection, own: Projection) -> bool:
    """Every change from the base to the remote row is a value the mirror's own contact holds
    now (a field, a tag added or removed, the contact's status). This list's own consent is
    the list's alone, so a change of it is never an echo; one that follows the contact's status
    (opted out as a whole is off every list) is the status's."""
    if remote.list_status != base.list_status and not is_opted_out(base.status):
        return False
    if remote.status != base.status and remote.status != own.status:
        return False
    if any(t not in own.tags for t in remote.tags - base.tags):
        return False
    if any(t in own.tags for t in base.tags - remote.tags):
        return False
    was, now, ours = base.field_map, remote.field_map, own.field_map
    return all(now.get(f) in (was.get(f), ours.get(f)) for f in was.keys() | now.keys())


def _revive(
    key: str, base: Projection, remote: Projection, own: Projection | None, case: str
) -> Decision:
    """Pull a contact that is off this list locally back from the provider. Its status is
    merged with the one the mirror kept (``own``) like any other: a local opt-out made since
    goes out with it, and a provider's opt-out stays."""
    if own is None:
        return _pull_back(key, remote, case)
    back = remote.replace(status=_merge_consent(own.status, base.status, remote.status))
    if back == remote:
        return _pull_back(key, remote, case)
    return Decision(key, case, "update", back, remote, local_op="upsert", local_row=back, base=back)


def _merge(
    key: str,
    local: Projection,
    base: Projection,
    remote: Projection,
    rules: Rules,
    take: Takes | None,
    case: str | None,
) -> Decision:
    if local == remote:
        # both sides made the same change (or already agree): only the base moves
        return Decision(key, case or "agree", base=local)
    if local == base:
        # only the remote changed: pull it into the mirror
        return Decision(key, case or "pull", local_op="upsert", local_row=remote, base=remote)
    if remote == base and not _would_resubscribe(local, remote):
        # only the local side changed: push it
        return Decision(key, case or "push", "update", local, remote, base=local)

    fields, conflicts, unresolved = _merge_fields(local, base, remote, rules, take)
    if unresolved:
        return Decision(
            key,
            "conflict_held",
            remote_before=remote,
            conflicts=conflicts,
            held=True,
            keep_base=True,
        )
    merged = Projection.build(
        key,
        fields,
        _merge_sets(local.tags, base.tags, remote.tags),
        _merge_consent(local.status, base.status, remote.status),
        _merge_consent(local.list_status, base.list_status, remote.list_status),
    )
    return Decision(
        key,
        case or "merge",
        remote_op="update" if merged != remote else None,
        remote_row=merged if merged != remote else None,
        remote_before=remote,
        local_op="upsert" if merged != local else None,
        local_row=merged if merged != local else None,
        base=merged,
        conflicts=conflicts,  # recorded even when the policy settled them
    )


def _would_resubscribe(local: Projection, remote: Projection) -> bool:
    """Pushing ``local`` would make the contact active again, as a whole or on this list."""
    return (is_opted_out(remote.status) and not is_opted_out(local.status)) or (
        remote.list_status != "active" and local.list_status == "active"
    )


def _merge_fields(
    local: Projection, base: Projection, remote: Projection, rules: Rules, take: Takes | None
) -> tuple[dict[str, str | None], tuple[FieldConflict, ...], bool]:
    """Fields changed on one side only come from that side; both sides -> the policy decides,
    unless a person chose a side for the contact or for that field (``take``).

    Returns the merged fields, every conflict met, and whether one waits for a person.
    """
    lf, bf, rf = local.field_map, base.field_map, remote.field_map
    merged: dict[str, str | None] = {}
    conflicts: list[FieldConflict] = []
    unresolved = False
    for name in sorted(lf.keys() | bf.keys() | rf.keys()):
        lv, bv, rv = lf.get(name), bf.get(name), rf.get(name)
        if lv == rv or rv == bv:
            merged[name] = lv
        elif lv == bv:
            merged[name] = rv
        else:
            # changed on both sides, differently: the policy decides (manual holds the key)
            conflicts.append(FieldConflict(name, lv, rv, bv))
            chosen = take.get(name) if isinstance(take, Mapping) else take
            policy = chosen or rules.policy(name)
            unresolved = unresolved or policy == "manual"
            merged[name] = lv if policy == "local" else rv if policy == "remote" else bv
    return merged, tuple(conflicts), unresolved


def _merge_sets(
    local: frozenset[str], base: frozenset[str], remote: frozenset[str]
) -> frozenset[str]:
    """Additions and removals from either side both apply.

    An element in the base survives only if neither side removed it; an element not in the
    base is there if either side added it.
    """
    return (local & remote & base) | ((local | remote) - base)


def _merge_consent(local: str, base: str, remote: str) -> str:
    """Consent only moves towards opted-out automatically; the provider's opt-out always wins.

    The same rule for the contact's own status and for its consent on the list, each merged
    on its own: a person who left this list only is not unsubscribed as a whole, and the
    reverse (DESIGN §9).
    """
    if is_opted_out(remote):
        # never push an opted-out contact back as active (DESIGN rule 3)
        return local if is_opted_out(local) else remote
    if local != base:
        return local  # a local unsubscribe (or an explicit local re-activation)
    return remote  # a remote change, or nothing changed


def _key_of(*projections: Projection | None) -> str:
    for p in projections:
        if p is not None:
            return p.key
    raise ValueError("reconcile needs at least one of local, base, remote")
