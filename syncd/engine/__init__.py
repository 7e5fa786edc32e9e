"""One cycle for one target: export, stage, diff, reconcile, guard, push, apply, record.

The order of writes is what keeps the safety rules (DESIGN §3):

- the remote export and the local projection are staged, and the database finds the keys that
  differ; nothing is inferred from an export that did not complete (rule 1);
- a first pass reconciles every differing key that may be deleted on either side (one the local
  side lacks, or one with a base: ``reconcile.may_delete``) and counts deletions before
  anything is written, so the mass-delete guard can stop the cycle while both sides are
  untouched (rule 2);
- remote-born changes are applied to the mirror chunk by chunk, each chunk in one transaction;
- each provider call's answer is read row by row, and only confirmed rows move the base
  (rule 4) — a crash anywhere leaves a difference the next cycle sees again;
- a provider that confirms by calling back (``Capabilities.confirms_later``) gets its batch
  recorded as a job first (``syncd.engine.confirm_later``): its rows wait for the callback, are not
  sent again meanwhile, and move the base when it comes;
- between batches the cycle ends once its lease is lost or a stop is asked for, and before it
  reports it asks the store whether the lease is still its own: a cycle not sure of its lease
  to the end is ``stopped``, never ``converged`` (``CycleResult`` has the outcomes).

This module is the driver: ``run_cycle`` and the two passes over the diff, in that order. The
steps live beside it, each taking the cycle's ``CycleState`` (``state``): staging and the diff
(``stage``), the keys new locally and nothing else journalled and pushed in bulk before the
rest (``creates``), one chunk decided and its local half written (``chunk``), one batch pushed
and its answers read (``push``), conflicts, rejections and run records (``records``). What goes
in and comes out (``CycleOptions``, ``CycleResult``) is in ``result``. The decisions themselves are
``syncd.core.reconcile``'s, pure; the batches are ``syncd.core.batching``'s. A cycle narrowed to
the few keys a provider's webhook named (``CycleOptions.scope``) is ``single``'s: the same passes
over those keys alone, their remote rows read one by one.

The steps import each other by module path, never through this package, which imports them.
The engine may import ``core``, ``store``, ``providers``, ``config`` and the cross-cutting root
modules; never the local side, commands, the daemon or the CLI.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext

from sqlalchemy.engine import Engine
from sqlmodel import Session

from syncd.collector import bulk_work
from syncd.config import TargetConfig
from syncd.core.batching import Batcher
from syncd.engine import confirm_later, records
from syncd.engine.chunk import apply_chunk, decide
from syncd.engine.creates import push_creates
from syncd.engine.push import push_batch
from syncd.engine.references import find_owners
from syncd.engine.result import RATE_LIMIT_WAIT, CycleOptions, CycleResult
from syncd.engine.stage import stage_and_diff
from syncd.engine.state import CycleState
from syncd.errors import MassDeleteRefused, ProviderError, ProviderUnreachable, Stopped
from syncd.providers.base import Provider
from syncd.store import mirror, seen
from syncd.store.models import Base

log = logging.getLogger("syncd.engine")

#: Below this many deletions the share guard does not apply: on a small list one deletion is
#: already a large share, and stopping there would only teach people to pass --allow-mass-delete.
MASS_DELETE_FLOOR = 10


def run_cycle(
    db: Engine, target: TargetConfig, provider: Provider, options: CycleOptions | None = None
) -> CycleResult:
    cycle = CycleState.start(db, target, provider, options or CycleOptions())
    result = cycle.result
    dry = cycle.dry_run
    narrowed = cycle.options.scope is not None
    # a narrowed cycle (a webhook's few keys) is no run of the list: `syncd status` and the
    # metrics keep showing the last full cycle
    holder = cycle.options.holder
    run_id = None if dry or narrowed else records.record_start(db, target.name, holder)
    cycle.run_id = run_id
    calls_before = provider.stats.total()
    writes_before = provider.stats.writes
    # a wait for the provider's rate limit shows as such, not as a push that stalled
    provider.stats.on_wait = lambda seconds: cycle.progress(RATE_LIMIT_WAIT, math.ceil(seconds))
    try:
        if not narrowed:  # the fields were checked by the full cycles
            provider.prepare(
                target.remote_fields,
                create_missing=target.create_missing_fields and not dry,
            )
        # a whole list's rows are alive at once: the collector would walk them over and over
        with bulk_work if not narrowed else nullcontext(), Session(db) as session:
            try:
                stage_and_diff(session, cycle)
                if not narrowed:  # a narrowed cycle holds no contact new to both sides
                    cycle.owners = find_owners(
                        session,
                        target.name,
                        cycle.view,
                        cycle.rules,
                        remote_read=cycle.remote_read,
                    )
                _guard(session, cycle)
                _execute(session, cycle)
            finally:
                if dry:
                    # plan writes nothing anywhere: what is not committed goes back, and the
                    # export's scratch rows (committed as they streamed in) go
                    session.rollback()
                    seen.clear_scratch(session, target.name)
        cycle.confirm_lease()  # with nothing to push, no check between batches has run
        result.conclude(dry)
    except MassDeleteRefused as exc:
        result.outcome, result.message = "refused", str(exc)
    except Stopped as exc:
        result.outcome = "stopped"
        result.message = f"stopped early: {exc}; the next cycle carries on from the base"
    except ProviderUnreachable as exc:
        result.outcome, result.message = "unreachable", str(exc)
    except ProviderError as exc:
        result.outcome, result.message = "failed", f"{exc.code}: {exc}"
    except Exception as exc:  # a bug or a broken store: record it, never half-report it
        log.exception("cycle failed unexpectedly", extra={"target": target.name})
        result.outcome = "failed"
        result.message = f"internal error: {type(exc).__name__}: {exc}"
    provider.stats.on_wait = None
    result.api_calls = provider.stats.total() - calls_before
    result.write_calls = provider.stats.writes - writes_before
    if run_id is not None:
        records.record_end(db, run_id, result)
    return result


# -- pass 1: count before writing ---------------------------------------------------------


def _guard(session: Session, cycle: CycleState) -> None:
    target, caps = cycle.target, cycle.caps
    remote_deletes = local_removes = 0
    takes = records.resolutions(session, target.name)
    # Only keys the local side lacks or that have a base can be deleted on either side
    # (``reconcile.may_delete``): the others, new locally, are not decided twice. Each of
    # them counts as a row to send (the progress shown), a create or a first meeting's update.
    cycle.planned_rows += mirror.count_never_deleted(session, target.name)
    for chunk in mirror.iter_diff(session, target.name, may_delete=True):
        for _, d in decide(session, cycle, chunk, takes):
            # only deletions the provider can carry out count towards the guard, and none while
            # the export is incomplete: those are deferred (rule 1), not carried out
            remote_deletes += (
                d.remote_op == "delete"
                and (caps.delete or caps.exclude)
                and cycle.result.export_complete
            )
            local_removes += d.local_op == "remove"
            cycle.planned_rows += d.remote_op is not None
    # Each side's deletions against that side's list as staged: the provider's export (the base
    # where none can be read) and the local list. Not against the base alone: a target whose
    # creates' answers were lost has contacts at the provider and little base, and deleting a
    # few of them is no mass delete. A side is counted only where its deletions pass the floor:
    # a count reads each of its rows, and most cycles delete nothing.
    for side, n in (("remote", remote_deletes), ("local", local_removes)):
        if n <= MASS_DELETE_FLOOR or cycle.options.allow_mass_delete:
            continue
        if side == "local":
            size = seen.keyed_count(session, target.name)
        elif cycle.remote_read:
            size = seen.remote_count(session, target.name)
        else:
            size = mirror.count_rows(session, Base, target.name)
        if n > target.max_delete_fraction * size:
            raise MassDeleteRefused(
                f"{target.name}: this cycle would delete {n} of the {size} contacts "
                f"on the {side} side, more than max_delete_fraction="
                f"{target.max_delete_fraction}; nothing was written. Check the source, "
                f"then run once with --allow-mass-delete if it is intended."
            )


# -- pass 2: carry out --------------------------------------------------------------------


def _execute(session: Session, cycle: CycleState) -> None:
    target, dry = cycle.target, cycle.dry_run
    if cycle.caps.confirms_later and not dry:
        confirm_later.expire(session, target.name)  # released rows are in the diff: sent again
        session.commit()
    takes = records.resolutions(session, target.name)
    rejections = records.rejections(session, target.name)
    batcher = Batcher(cycle.caps, tuple(target.remote_fields))
    push_creates(session, cycle, batcher)  # keys new locally and nothing else, in bulk
    for chunk in mirror.iter_diff(session, target.name):
        cycle.check_stop()
        full = apply_chunk(session, cycle, chunk, takes, rejections, batcher)
        if not dry:
            session.commit()  # the chunk's local writes with their journal, then the calls
        for batch in full:
            push_batch(session, cycle, batch)
    for batch in batcher.flush():
        push_batch(session, cycle, batch)
    if not dry:
        scope = cycle.options.scope
        if scope is not None:
            # only the keys read: what the rest of the list holds was not looked at
            rejections = {k: r for k, r in rejections.items() if k in scope.remote}
        among = None if scope is None else sorted(scope.remote)
        records.forget_stale(
            session, target.name, rejections, cycle.held_keys, None if among is None else set(among)
        )
        if cycle.result.export_complete:
            # every write of this cycle was answered, and every lost answer of an earlier
            # one has been read back from this export (or settled with its key)
            mirror.drop_in_flight(session, target.name, among)
        session.commit()
        # a million staged rows go in committed chunks: never one long hold of the write lock
        seen.clear_scratch(session, target.name)
