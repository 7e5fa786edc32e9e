"""One APScheduler job per target: never two cycles of a target at once, missed runs coalesced.

APScheduler skips a run while the previous one of the same job is still going
(``max_instances=1``). That is right for ticks, but an inbox file landing mid-cycle must not be
lost: ``run_soon`` therefore marks the target and the running job goes round once more before it
returns. A failing cycle is logged with its reason and its next ticks are skipped with an
exponential backoff, so a provider outage does not become a hammering; it never stops the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from syncd.config import TargetConfig
from syncd.schedule import Interval, parse_schedule

log = logging.getLogger("syncd.scheduler")

BACKOFF_BASE = 5.0

#: Runs one cycle; True when it succeeded. The float is how recent a cycle of the target (in
#: any replica) makes this one needless: half the wait until the next tick for a scheduled
#: tick, 0 when the cycle was asked for (inbox files changed the target's list).
RunCycle = Callable[[TargetConfig, float], bool]


def make_trigger(schedule: str, jitter: float) -> Any:
    """The APScheduler trigger of a schedule (syntax: ``syncd.schedule``), in UTC."""
    parsed = parse_schedule(schedule)
    jitter_s = int(jitter) or None
    if isinstance(parsed, Interval):
        return IntervalTrigger(**{parsed.unit: parsed.amount}, jitter=jitter_s, timezone=UTC)
    trigger = CronTrigger.from_crontab(parsed.expression, timezone=UTC)
    trigger.jitter = jitter_s
    return trigger


def background_scheduler(max_parallel: int) -> BackgroundScheduler:
    """The APScheduler of the daemon's jobs (cycles, source reads): at most ``max_parallel``
    at once, a job never beside itself, its missed runs coalesced into one, however late."""
    return BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=max_parallel)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone=UTC,
    )


class _TargetState:
    def __init__(self, target: TargetConfig) -> None:
        self.target = target
        self.again = threading.Event()  # a run was asked for while one was going
        self.failures = 0
        self.not_before = 0.0  # monotonic time before which ticks are skipped (backoff)
        self.running = False


class TargetScheduler:
    """The jobs of the configured targets, replaceable as a whole on reload."""

    def __init__(self, run_cycle: RunCycle, *, max_parallel: int, backoff_max: float) -> None:
        self._run_cycle = run_cycle
        self._backoff_max = backoff_max
        self._lock = threading.Lock()
        self._states: dict[str, _TargetState] = {}
        self._scheduler = background_scheduler(max_parallel)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, targets: list[TargetConfig]) -> None:
        self.replace(targets)
        self._scheduler.start()

    def shutdown(self) -> None:
        """Take no new runs; cycles in flight are told to stop by the daemon's stop flag."""
        self._scheduler.shutdown(wait=False)

    def alive(self) -> bool:
        return bool(self._scheduler.running)

    def busy(self) -> bool:
        with self._lock:
            return any(s.running for s in self._states.values())

    def replace(self, targets: list[TargetConfig]) -> None:
        """Swap in a new set of targets (a reload). Each first run happens at once."""
        with self._lock:
            old = set(self._states)
            self._states = {t.name: self._states.get(t.name) or _TargetState(t) for t in targets}
            for t in targets:
                self._states[t.name].target = t
        for name in old - {t.name for t in targets}:
            if self._scheduler.get_job(name):
                self._scheduler.remove_job(name)
        for t in targets:
            self._scheduler.add_job(
                self._job,
                make_trigger(t.schedule, t.jitter),
                args=[t.name],
                id=t.name,
                name=f"sync {t.name}",
                replace_existing=True,
                next_run_time=datetime.now(UTC),
            )

    # -- runs -----------------------------------------------------------------------------

    def run_soon(self, names: set[str]) -> None:
        """Sync these targets now rather than at their next tick (inbox files landed)."""
        now = datetime.now(UTC)
        with self._lock:
            chosen = [s for n, s in self._states.items() if n in names]
        for state in chosen:
            state.again.set()
            state.not_before = 0.0  # new local data: worth a try even while backing off
            if self._scheduler.get_job(state.target.name):
                self._scheduler.modify_job(state.target.name, next_run_time=now)

    def _job(self, name: str) -> None:
        with self._lock:
            state = self._states.get(name)
        if state is None:
            return
        if time.monotonic() < state.not_before and not state.again.is_set():
            log.info("skipping a tick while backing off", extra={"target": name})
            return
        state.running = True
        try:
            while True:
                fresh_for = 0.0 if state.again.is_set() else self._half_the_wait(name)
                state.again.clear()
                self._one(state, fresh_for)
                if not state.again.is_set():
                    break
        finally:
            state.running = False

    def _half_the_wait(self, name: str) -> float:
        job = self._scheduler.get_job(name)
        if job is None or job.next_run_time is None:
            return 0.0
        wait = float((job.next_run_time - datetime.now(UTC)).total_seconds())
        return max(0.0, wait / 2)

    def _one(self, state: _TargetState, fresh_for: float) -> None:
        name = state.target.name
        try:
            ok = self._run_cycle(state.target, fresh_for)
        except Exception:  # a cycle must never take the daemon down
            log.exception("cycle crashed", extra={"target": name})
            ok = False
        if ok:
            state.failures, state.not_before = 0, 0.0
            return
        state.failures += 1
        wait = min(self._backoff_max, BACKOFF_BASE * 2 ** (state.failures - 1))
        state.not_before = time.monotonic() + wait
        log.warning(
            "cycle failed; retrying at a tick at least %.0f s from now",
            wait,
            extra={"target": name},
        )
