"""Remote rows that are syncd's own: finding the local contact a reference names.

With ``reference_field`` set, each contact carries syncd's stable id (``contact.ref``) at the
provider. A remote row whose key has no base and no local contact, but whose reference is a
local contact's, is not a sign-up: it is a create whose answer was lost, or a contact whose key
changed on one side. This module looks the owners up, a chunk of the diff at a time, so that
``reconcile`` (pure) can decide what each one means (``reconcile.Owner``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from syncd.core.reconcile import Owner, Rules
from syncd.store import mirror
from syncd.store.models import Base, LocalSeen, RemoteSeen


@dataclass
class Owners:
    by_remote_key: dict[str, Owner] = field(default_factory=dict)
    moved: dict[str, str] = field(default_factory=dict)  # old key -> the key it moved to


def find_owners(
    session: Session, target: str, view: mirror.LocalView, rules: Rules, *, remote_read: bool
) -> Owners:
    """The owner of every base-less, local-less remote row that carries a reference
    (``remote_read``: the remote side is this cycle's export, else the base stands in)."""
    found = Owners()
    if view.reference is None:
        return found
    for chunk in mirror.iter_diff(session, target):
        refs = {
            ref: row.key
            for row in chunk
            if row.base is None
            and row.local is None
            and (ref := rules.ref_of(row.remote)) is not None
        }
        if not refs:
            continue
        owned = {refs[c.ref]: c for c in mirror.contacts_by_ref(session, list(refs)) if c.ref}
        own_keys = [k for c in owned.values() if (k := getattr(c, view.key))]
        local = mirror.projections(session, LocalSeen, target, own_keys)
        base = mirror.projections(session, Base, target, own_keys)
        remote = mirror.projections(session, RemoteSeen, target, own_keys) if remote_read else base
        holders = mirror.contacts_by_key(session, view, list(owned))
        for key, contact in owned.items():
            own = getattr(contact, view.key)
            holder = holders.get(key)
            owner = Owner(
                local=local.get(own) if own else None,
                base=base.get(own) if own else None,
                remote_at_key=own in remote,
                key_taken=holder is not None and holder.id != contact.id,
            )
            found.by_remote_key[key] = owner
            if owner.moved_at_provider(key):
                found.moved[own] = key
    return found
