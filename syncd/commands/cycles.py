"""The library calls behind each CLI command, so tests can drive them without a process."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from syncd.config import Config, TargetConfig
from syncd.engine import confirm_later, run_cycle
from syncd.engine.result import CycleOptions, CycleResult
from syncd.errors import FatalError
from syncd.local import outbox
from syncd.providers import callback_reader, make_provider
from syncd.providers.base import Provider
from syncd.store import history, mirror, open_engine
from syncd.store.lease import Leases, new_holder
from syncd.store.models import Conflict, Rejection, Run

if TYPE_CHECKING:
    from syncd.emulators.kit.server import LoopbackServer

ProviderFactory = Callable[[Config, TargetConfig], Provider]


def open_store(config: Config) -> Engine:
    return open_engine(config.store.url)


def build_provider(config: Config, target: TargetConfig) -> Provider:
    """The real adapter for a target (tests pass their own factory to reach an emulator)."""
    return make_provider(target, default_region=config.ingest.default_region)


def run_once(
    config: Config,
    *,
    target: str | None = None,
    db: Engine | None = None,
    options: CycleOptions | None = None,
    providers: ProviderFactory = build_provider,
    callback_wait: float | None = None,
) -> list[CycleResult]:
    """One cycle for every target (or one), in the order the configuration lists them.

    Targets whose provider confirms by calling back (Netcore with a ``public_url``) need the
    listener: it serves their files and takes their callbacks while the cycles run, and then
    until every callback came, the jobs' ``callback_timeout`` passed, or ``callback_wait``
    seconds did.

    Each cycle runs under the target's lease: a target that a daemon (or another replica) is
    syncing right now is waited for, never synced twice at once.
    """
    db = db or open_store(config)
    base_options = options or CycleOptions()
    chosen = config.targets(target)
    listener = None if base_options.dry_run else _job_listener(config, db, chosen)
    leases = Leases(db, new_holder(), config.daemon.lease_timeout)
    results = []
    try:
        for t in chosen:
            with leases.hold(t.name, wait=True) as lease:
                assert lease is not None  # waiting, hold() only returns once it has the lease
                provider = providers(config, t)
                cycle_id = uuid.uuid4().hex[:12]
                # remote-born changes reach the outbox however the cycle was started
                opts = replace(
                    base_options,
                    cycle_id=cycle_id,
                    on_remote_change=outbox.recorder(
                        provider.name, cycle_id, config.webhook, list_name=t.local_list_name
                    ),
                    holder=leases.holder,
                    lease=lease,
                    peers=config.account_peers(t),
                )
                try:
                    results.append(run_cycle(db, t, provider, opts))
                finally:
                    provider.close()
            outbox.flush(db, Path(config.outbox.path))
        if listener is not None:
            _await_callbacks(db, results, chosen, callback_wait)
        if config.webhook and not base_options.dry_run:
            from syncd.commands import webhook_admin  # its sender: only with [[webhook]]s

            webhook_admin.deliver_now(db, config, leases.holder)
        if not base_options.dry_run:
            prune_history(db, config)  # from cron, no daemon prunes this store
    finally:
        if listener is not None:
            listener.stop()
    return results


def prune_history(db: Engine, config: Config) -> int:
    """Drop the history rows older than ``[history] keep`` (``syncd explain``); returns how
    many went. One indexed delete: the daemon runs it once an hour, run-once once a run."""
    return history.prune(db, timedelta(seconds=config.history.keep_seconds))


def _job_listener(config: Config, db: Engine, targets: list[TargetConfig]) -> LoopbackServer | None:
    """The job routes alone on ``[http] listen``, when a target confirms by calling back."""
    if not any(callback_reader(t) for t in targets) or not config.http.enabled:
        return None
    # the listener's HTTP server and routes: only when a target's provider calls back (most
    # run-once commands never need them)
    from syncd.commands import job_routes
    from syncd.commands.listener import listen

    return listen(config.http, job_routes.routes(db, lambda: config))


def _await_callbacks(
    db: Engine, results: list[CycleResult], targets: list[TargetConfig], wait: float | None
) -> None:
    """Wait for the callbacks of this run's jobs, then say how each waiting target ended."""
    waiting = {r.target: r for r in results if r.outcome == "awaiting"}
    if not waiting:
        return
    timeouts = [t.callback_timeout for t in targets if t.name in waiting]
    limit = min(max(timeouts), wait if wait is not None else float("inf"))
    deadline = time.monotonic() + limit
    while confirm_later.open_jobs(db, list(waiting)) and time.monotonic() < deadline:
        time.sleep(0.1)
    with Session(db) as session:
        for name, result in waiting.items():
            left = confirm_later.waiting_rows(session, name)
            refused = session.execute(
                select(func.count()).select_from(Rejection).where(col(Rejection.target) == name)
            ).scalar_one()
            if left:
                result.message = (
                    f"{left} rows still wait for the provider's callback; if none comes they are "
                    "sent again once callback_timeout has passed"
                )
            elif refused:
                result.outcome = "rejected"
                result.message = f"the provider's callbacks refused {refused} rows"
            else:
                result.outcome = "converged"
                result.message = "confirmed by the provider's callbacks"
            result.counts["confirmed_later"] = result.counts["awaiting"] - left
            run = _last_run(session, name)
            if run is not None:
                run.outcome, run.message = result.outcome, result.message
                run.summary = json.dumps(result.summary())
        session.commit()


def _last_run(session: Session, target: str) -> Run | None:
    query = select(Run).where(col(Run.target) == target).order_by(col(Run.id).desc()).limit(1)
    return session.execute(query).scalar_one_or_none()


#: The provider's error codes that mean the configuration is wrong (the key, the list, a field
#: name): a cycle failing with one exits 2, as ``syncd check-config`` does for the same mistake.
CONFIG_CODES = frozenset(
    {
        "invalid_api_key",
        "access_denied",
        "http_401",
        "http_403",
        "list_not_found",
        "fields_missing",
        "invalid_field_name",
        "invalid_key",
        "invalid_list_name",
    }
)
EXIT_CONFIG = 2


def exit_code(results: list[CycleResult]) -> int:
    """0 all converged, 1 rows rejected, conflicts open, a cycle refused, partial (its export
    was incomplete) or stopped early, 2 the provider refused the key, the list or a field name
    (the configuration is wrong), 3 a provider was not reachable or failed otherwise."""
    return max((_exit_code(r) for r in results), default=0)


def _exit_code(result: CycleResult) -> int:
    # a failed cycle's message is "code: text" (syncd.engine.run_cycle)
    code = result.message.partition(":")[0]
    if result.outcome == "failed" and code in CONFIG_CODES:
        return EXIT_CONFIG
    return result.exit_code


@dataclass(frozen=True)
class TargetStatus:
    target: str
    provider: str
    two_way: bool
    last_run: dict[str, Any] | None
    rejected: int
    open_conflicts: int
    awaiting_callback: int = 0  # rows sent to a provider that confirms later, not yet confirmed

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "provider": self.provider,
            "two_way": self.two_way,
            "last_run": self.last_run,
            "rejected": self.rejected,
            "open_conflicts": self.open_conflicts,
            "awaiting_callback": self.awaiting_callback,
        }


def status(config: Config, db: Engine | None = None) -> list[TargetStatus]:
    db = db or open_store(config)
    out = []
    with Session(db) as session:
        for t in config.targets():
            run = _last_run(session, t.name)
            last = None
            if run is not None:
                last = {
                    "started_at": run.started_at,
                    "finished_at": run.finished_at,
                    "outcome": run.outcome,
                    "message": run.message,
                    "holder": run.holder,  # the process that ran it (leases)
                    "counts": json.loads(run.summary),
                }
            rejected = session.execute(
                select(Rejection).where(col(Rejection.target) == t.name)
            ).all()
            conflicts = session.execute(
                select(Conflict).where(
                    col(Conflict.target) == t.name, col(Conflict.resolution).is_(None)
                )
            ).all()
            provider = build_provider(config, t)
            two_way = provider.capabilities.export
            provider.close()
            awaiting = confirm_later.waiting_rows(session, t.name)
            out.append(
                TargetStatus(
                    t.name, t.provider, two_way, last, len(rejected), len(conflicts), awaiting
                )
            )
    return out


def list_conflicts(
    config: Config, target: str | None = None, db: Engine | None = None
) -> list[dict[str, Any]]:
    db = db or open_store(config)
    names = [t.name for t in config.targets(target)]
    with Session(db) as session:
        rows = session.execute(
            select(Conflict).where(col(Conflict.target).in_(names)).order_by(col(Conflict.key))
        ).scalars()
        return [
            {
                "target": c.target,
                "key": c.key,
                "fields": json.loads(c.fields),
                "resolution": c.resolution,
                "at": c.at,
            }
            for c in rows
        ]


def resolve(
    config: Config,
    key: str | None,
    take: str,
    target: str | None = None,
    db: Engine | None = None,
    fields: tuple[str, ...] = (),
) -> int:
    """Record a person's choice; the next cycle carries it out. ``key`` None: every held
    conflict of the chosen targets. ``fields``: only those fields (the name ``syncd conflicts``
    shows). Returns how many conflicts the choice reached."""
    if take not in ("local", "remote"):
        raise FatalError(f"--take must be local or remote, not {take!r}")
    db = db or open_store(config)
    names = [t.name for t in config.targets(target)]
    with Session(db) as session:
        n = mirror.resolve_conflicts(session, names, take, key=key, fields=fields)
        session.commit()
        return n
