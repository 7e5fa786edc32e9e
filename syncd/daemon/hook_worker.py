"""The daemon's hook worker: drains the keys provider webhooks queued, and keeps hooks installed.

The webhook route (``syncd.commands.hook_routes``) queues keys in the store and wakes this
worker; it waits a moment (``SETTLE``) so that a burst (a retry, a duplicate, several events
about one contact) is read once, claims the target's queued keys and re-reads and reconciles
them (``syncd.engine.single.refresh``): the outbox gets what changed, as after a full cycle.

It runs under the target's lease, as a full cycle does, so the two never work on a target at
once, in this process or another replica. The lease is taken without counting as a cycle's
start (``Leases.hold(cycle=False)``): a webhook never makes a scheduled export look needless.
While a cycle holds the lease the keys stay queued and are taken once it ends; keys whose work
failed are queued again. Besides the wake-ups it looks at the queue every ``RECHECK`` seconds,
for keys queued through another replica's listener.

Every ``[daemon] hook_check_interval`` seconds (and at start) it asks the provider for the
state of each installed hook and sets a ``stopped`` one again, with a log line and
``syncd_hook_reinstalls_total``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine

from syncd.commands import hooks as hook_admin
from syncd.commands.cycles import build_provider
from syncd.config import Config, TargetConfig
from syncd.engine.result import CycleOptions
from syncd.engine.single import refresh
from syncd.local import outbox
from syncd.logs import log_context
from syncd.metrics import Metrics
from syncd.store import hooks as store_hooks
from syncd.store.lease import Lease, Leases

log = logging.getLogger("syncd.hooks")

SETTLE = 0.15  # seconds a wake-up waits for the rest of a burst
RECHECK = 5.0  # seconds between looks at the queue without a wake-up
BUSY_RETRY = 1.5  # seconds before the next batch, or a target whose lease was held, is tried
BATCH = 500  # keys re-read under one hold of the lease


class HookWorker:
    def __init__(
        self,
        db: Engine,
        leases: Leases,
        config: Callable[[], Config],
        metrics: Metrics,
        *,
        stopping: threading.Event,
        after: Callable[[], None],
    ) -> None:
        self._db = db
        self._leases = leases
        self._config = config
        self._metrics = metrics
        self._stopping = stopping
        self._after = after  # flush the outbox and wake the webhook deliverer
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_check = 0.0

    def start(self) -> None:
        """Started with the listener whatever the targets say: a reload may turn hooks on."""
        self._thread = threading.Thread(target=self._run, name="syncd-hooks", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        wait = 0.0
        while not self._stopping.is_set():
            if self._wake.wait(wait):
                time.sleep(SETTLE)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                busy = self._drain()
                self._check_hooks()
            except Exception:  # the store or a bug: log it, keep the worker alive
                log.exception("hook work failed")
                busy = True
            wait = BUSY_RETRY if busy else RECHECK

    def _drain(self) -> bool:
        """Work every target with queued keys; True when some wait (for their lease, or behind
        a full batch)."""
        config = self._config()
        by_name = {t.name: t for t in config.target if t.hooks}
        busy = False
        for name in store_hooks.waiting(self._db):
            target = by_name.get(name)
            if target is None:
                store_hooks.take(self._db, name, limit=100_000)  # hooks turned off: drop them
                continue
            busy |= not self._work(config, target)
        return busy

    def _work(self, config: Config, target: TargetConfig) -> bool:
        """A batch of the target's queued keys under its lease; False when the lease was not
        free or more keys wait (the next batch comes after ``BUSY_RETRY``)."""
        with self._leases.hold(target.name, cycle=False) as lease:
            if lease is None:
                return False
            work = store_hooks.take(self._db, target.name, limit=BATCH)
            if work:
                self._refresh(config, target, work, lease)
        # one batch per hold: a cycle waiting for the lease gets it between two batches
        return len(work) < BATCH

    def _refresh(
        self, config: Config, target: TargetConfig, work: list[tuple[str, str]], lease: Lease
    ) -> None:
        cycle_id = "hook-" + uuid.uuid4().hex[:8]
        with log_context(target=target.name, cycle=cycle_id):
            provider = build_provider(config, target)
            try:
                result = refresh(
                    self._db,
                    target,
                    provider,
                    work,
                    CycleOptions(
                        on_remote_change=outbox.recorder(
                            provider.name,
                            cycle_id,
                            config.webhook,
                            list_name=target.local_list_name,
                        ),
                        should_stop=self._stopping.is_set,
                        lease=lease,
                        cycle_id=cycle_id,
                        holder=self._leases.holder,
                        peers=config.account_peers(target),
                    ),
                )
            except Exception as exc:
                for kind in {k for _, k in work}:
                    keys = [key for key, k in work if k == kind]
                    store_hooks.enqueue(self._db, target.name, keys, kind)
                log.warning("re-reading %d contacts failed; they stay queued: %s", len(work), exc)
                self._metrics.hook_refreshes.labels(target.name, "failed").inc(len(work))
                return
            finally:
                provider.close()
            outcome = "skipped" if result is None else result.outcome
            self._metrics.hook_refreshes.labels(target.name, outcome).inc(len(work))
            log.info(
                "webhook: %d contacts re-read: %s",
                len(work),
                outcome,
                extra={"summary": None if result is None else result.summary()},
            )
            if result is not None:
                outbox.flush(self._db, Path(config.outbox.path))
                self._after()

    # -- keeping hooks installed --------------------------------------------------------

    def _check_hooks(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        config = self._config()
        self._next_check = now + config.daemon.hook_check_interval
        try:
            again = hook_admin.reinstall_stopped(config, self._db)
        except Exception as exc:
            log.warning("could not check the provider webhooks: %s", exc)
            return
        for state in again:
            log.warning(
                "the provider had stopped the webhook of %s: installed again",
                state.target,
                extra={"target": state.target},
            )
            self._metrics.hook_reinstalls.labels(state.target).inc()
