"""A cycle narrowed to the contacts a provider's webhook named: re-read, then reconciled alone.

A webhook is a prompt, never the truth (it has no signed timestamp and may be replayed, lost or
repeated): ``refresh`` re-reads each named contact at the provider (``Provider.read_one``) and
runs the ordinary cycle (``syncd.engine.run_cycle``) over those keys only (``Scope``), so the
three-way merge, the push, the outbox and the base follow exactly the rules of a full cycle, and
the base moves only on what was read. The periodic export stays the safety net.

What a single read does not give (Unisender's ``getContact`` has no tags; see ``ContactRead``)
is taken from the base, so it reads as unchanged there; a key the provider does not show on the
list, or one that neither the mirror nor the base knows (a contact new to both sides), is left
to the next export: only a complete export proves an absence or names a newcomer's owner.

A provider that cannot be read but reports opt-outs (Octopush's STOP callback) is the one case
where the notification is the statement itself: the contact as syncd last knew it (the base,
else the local row), opted out, stands as the provider's row. Without an export nothing at the
provider could ever say otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.engine import Engine
from sqlmodel import Session

from syncd.config import TargetConfig
from syncd.core.projection import Projection
from syncd.engine import run_cycle
from syncd.engine.result import CycleOptions, CycleResult, Scope
from syncd.engine.stage import project_local
from syncd.providers.base import ContactRead, Provider, RemoteContact
from syncd.store import mirror
from syncd.store.models import Base

log = logging.getLogger("syncd.engine")

REREAD = "reread"
OPT_OUT = "opt_out"


def refresh(
    db: Engine,
    target: TargetConfig,
    provider: Provider,
    work: Sequence[tuple[str, str]],
    options: CycleOptions | None = None,
) -> CycleResult | None:
    """Re-read (``reread``) or opt out (``opt_out``) each key, then reconcile those keys.

    None when no key was left to decide (none shown by the provider, or none known here).
    """
    caps = provider.capabilities
    reread = [k for k, kind in work if kind == REREAD and caps.read_one]
    opt_out = [k for k, kind in work if kind == OPT_OUT]
    reads = {key: provider.read_one(key) for key in dict.fromkeys(reread)}
    keys = sorted({*reads, *opt_out})
    view = mirror.LocalView.of(target, list_consent=caps.list_consent)
    with Session(db) as session:
        base = mirror.projections(session, Base, target.name, keys)
        local = {
            p.key: p
            for m in mirror.local_members(session, view, keys)
            if (p := project_local(m, view, caps)) is not None
        }
    remote: dict[str, RemoteContact] = {}
    for key, read in reads.items():
        known = base.get(key) or local.get(key)
        if read is None or known is None:
            log.info("%s: not re-read here (%s); the next export decides", key,
                     "not on the list" if read is None else "new to both sides",
                     extra={"target": target.name})  # fmt: skip
            continue
        remote[key] = _completed(read, known)
    for key in opt_out:
        known = base.get(key) or local.get(key)
        if known is None:
            log.info("%s: opt-out for a contact unknown here", key, extra={"target": target.name})
            continue
        opted = known.replace(status="unsubscribed")
        remote[key] = RemoteContact(opted, "unsubscribed")
    if not remote:
        return None
    chosen = options or CycleOptions()
    chosen.scope = Scope(remote)
    return run_cycle(db, target, provider, chosen)


def _completed(read: ContactRead, known: Projection) -> RemoteContact:
    """The read row, with what the read did not give taken from ``known`` (the base)."""
    p = read.contact.projection
    fields = {n: v for n, v in known.field_map.items() if n not in read.fields_read}
    fields.update(p.field_map)
    tags = p.tags if read.tags_read else known.tags
    whole = Projection.build(p.key, fields, tags, p.status, p.list_status)
    return read.contact._replace(projection=whole)
