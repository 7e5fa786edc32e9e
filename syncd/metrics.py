"""Every Prometheus metric syncd exports, defined once.

The metrics live in their own ``CollectorRegistry`` rather than prometheus-client's global one,
so that a test (or a second daemon in one process) starts from zero instead of inheriting counts
and tripping over duplicate registrations.

A target's series exist from the moment it is configured (``track_targets``): its counters at 0
and its last-success time at 0 until a cycle succeeds, so ``increase()`` sees the first cycle and
an alert can tell "never" from "no series". ``render`` answers in OpenMetrics when the scraper
asks for it (its Accept header), in the classic text format otherwise.

Provider HTTP calls are observed through a module-level hook (``set_call_observer``) rather than
by handing a ``Metrics`` to every adapter: the HTTP layer stays unaware of Prometheus, and a
process without metrics pays one no-op call per request.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from syncd import __version__

# prometheus-client is imported by ``Metrics`` itself, not with this module: every provider's
# HTTP layer imports the call hook below, and `syncd ingest` or `run-once` never export a metric.
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge

#: (provider, method, outcome, seconds) for one HTTP attempt; outcome as in ``CallStats``.
CallObserver = Callable[[str, str, str, float], None]

#: Cycles that ran to the end. Rejected rows and open conflicts need a person, but the rest of the
#: list converged, so they count as success; unreachable, failed, refused, stopped and partial (an
#: incomplete export: creates and deletes wait) do not. ``syncd_cycles_total``'s ``outcome`` label
#: tells them apart, e.g. ``increase(syncd_cycles_total{outcome="partial"}[1h])``.
SUCCESS_OUTCOMES = frozenset({"converged", "rejected", "conflicts"})

#: The ``operation`` label -> the ``CycleResult.counts`` keys it sums.
ROW_OPERATIONS: Mapping[str, tuple[str, ...]] = {
    "created": ("create",),
    "updated": ("update",),
    "deleted": ("delete", "exclude"),
    "pulled": ("pulled",),
    "removed_local": ("removed_local",),
    # Only rows the provider refused in this cycle: held rows were counted when first refused.
    "rejected": ("rejected",),
}

INBOX_OUTCOMES = ("processed", "failed")

#: Every outcome a daemon's cycle can end with (``CycleResult``; "planned" is a dry run's, never
#: the daemon's). Each starts at 0 for every target, so the first refusal is an increase.
CYCLE_OUTCOMES = (
    "converged",
    "awaiting",
    "rejected",
    "conflicts",
    "partial",
    "refused",
    "stopped",
    "unreachable",
    "failed",
)

#: How a source's read ends (``syncd.commands.sources``) and what an applied one counts.
SOURCE_OUTCOMES = ("applied", "refused", "failed")
SOURCE_OPERATIONS = ("created", "updated", "removed", "rejected")

#: Outcomes after which the counts of open conflicts are the whole list's, not a cycle cut short.
_COUNTED_WHOLE = SUCCESS_OUTCOMES | {"awaiting", "partial"}


class FinishedCycle(Protocol):
    """What the metrics read of a finished cycle (the engine's ``CycleResult`` is one): metrics
    sit below every layer, so they name the three values rather than the engine's type."""

    @property
    def target(self) -> str: ...

    @property
    def outcome(self) -> str: ...

    @property
    def counts(self) -> Mapping[str, int]: ...


# Provider calls range from tens of milliseconds to a long export download (timeouts are 30 s by
# default), so the default buckets, which stop at 10 s, would lump the slow tail together.
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# A no-change cycle of a small list takes well under a second; a first sync of a million
# contacts takes tens of minutes.
CYCLE_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)


class Metrics:
    """syncd's metrics in one registry, with helpers that speak syncd's own types."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            Info,
            ProcessCollector,
            disable_created_metrics,
        )

        # prometheus-client leaves this one unannotated; naming its type keeps strict mypy quiet
        # whether or not a later release annotates it.
        _disable_created: Callable[[], None] = disable_created_metrics
        # Each counter would also export a "<name>_created" gauge: twice the series for a start
        # time nobody graphs, and "syncd_rows_created" would read like operation="created".
        # The switch is process-wide; syncd is the only exporter in its process.
        _disable_created()
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)  # memory, CPU, open files of the daemon itself
        self.registry = registry

        def counter(name: str, documentation: str, *labels: str) -> Counter:
            return Counter(name, documentation, labels, registry=registry)

        def gauge(name: str, documentation: str, *labels: str) -> Gauge:
            return Gauge(name, documentation, labels, registry=registry)

        self.cycles = counter("syncd_cycles_total", "Sync cycles finished.", "target", "outcome")
        self.rows = counter(
            "syncd_rows_total",
            "Rows pushed to or pulled from providers, by operation.",
            "target",
            "operation",
        )
        self.api_calls = counter(
            "syncd_api_calls_total",
            "Provider HTTP attempts (each retry counts).",
            "provider",
            "method",
            "outcome",
        )
        self.api_call_seconds = Histogram(
            "syncd_api_call_seconds",
            "Duration of provider HTTP attempts.",
            ["provider", "method"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.rejected_rows = counter(
            "syncd_rejected_rows_total",
            "Rows a provider refused, by the provider's error code.",
            "target",
            "code",
        )
        self.last_success = gauge(
            "syncd_last_success_timestamp_seconds",
            "Unix time the target's last successful cycle ended.",
            "target",
        )
        self.inbox_files = counter("syncd_inbox_files_total", "Inbox files handled.", "outcome")
        self.pending_local = gauge(
            "syncd_pending_local_changes", "Local changes not yet pushed to the target.", "target"
        )
        self.up = gauge("syncd_up", "1 while the daemon is running.")
        self.cycle_seconds = Histogram(
            "syncd_cycle_duration_seconds",
            "Duration of sync cycles, from the lease taken to the run recorded.",
            ["target"],
            buckets=CYCLE_BUCKETS,
            registry=registry,
        )
        self.last_cycle = gauge(
            "syncd_last_cycle_timestamp_seconds",
            "Unix time the target's last cycle ended, whatever its outcome (the daemon's start "
            "for a target that has never run).",
            "target",
        )
        self.last_export = gauge(
            "syncd_last_complete_export_timestamp_seconds",
            "Unix time the target's last complete export of the remote list was staged.",
            "target",
        )
        self.open_conflicts = gauge(
            "syncd_open_conflicts", "Conflicts waiting for `syncd resolve`.", "target"
        )
        self.lease_held = gauge(
            "syncd_lease_held", "1 while this process holds the target's lease.", "target"
        )
        self.interval = gauge(
            "syncd_schedule_interval_seconds",
            "Seconds between the target's scheduled cycles (a cron schedule's longest gap).",
            "target",
        )
        self.inbox_waiting = gauge(
            "syncd_inbox_waiting_files", "Contact files in the inbox not yet taken."
        )
        self.build_info = Info("syncd_build", "The running syncd's version.", registry=registry)
        self.build_info.info({"version": __version__})
        # -- webhooks (syncd.daemon.webhooks) --
        self.webhook_deliveries = counter(
            "syncd_webhook_deliveries_total",
            "Webhook delivery attempts, by outcome: delivered, retried, dead (max_age over), "
            "gone (410: the endpoint is turned off).",
            "webhook",
            "outcome",
        )
        self.webhook_oldest = gauge(
            "syncd_webhook_oldest_undelivered_seconds",
            "Age of the oldest change event not yet delivered to a webhook (0: none waits).",
        )
        self.webhook_dead = gauge(
            "syncd_webhook_dead_letters", "Events kept after their retries ran out.", "webhook"
        )
        # -- provider webhooks in (syncd.daemon.hook_worker) --
        self.hooks_received = counter(
            "syncd_hooks_received_total",
            "Provider webhooks received, by outcome: queued, duplicate (its keys were queued "
            "already), ignored (nothing to re-read), forbidden (wrong token or auth: 403), "
            "bad_request.",
            "target",
            "outcome",
        )
        self.hook_reinstalls = counter(
            "syncd_hook_reinstalls_total",
            "Provider webhooks the provider had stopped and the daemon installed again.",
            "target",
        )
        self.hook_refreshes = counter(
            "syncd_hook_refreshes_total",
            "Contacts re-read and reconciled because a provider webhook named them, by the "
            "narrowed cycle's outcome.",
            "target",
            "outcome",
        )
        # -- sources (syncd.daemon.source_jobs) --
        self.source_reads = counter(
            "syncd_source_reads_total",
            "Reads of a [[source]], by outcome: applied, refused (mass-delete guard), failed "
            "(query, connection or timeout; nothing applied).",
            "source",
            "outcome",
        )
        self.source_rows = counter(
            "syncd_source_rows_total", "Rows a [[source]]'s applied reads returned.", "source"
        )
        self.source_changes = counter(
            "syncd_source_changes_total",
            "What a [[source]]'s applied reads did, by operation: created, updated, removed "
            "(left the list), rejected (bad rows).",
            "source",
            "operation",
        )
        self.source_last_success = gauge(
            "syncd_source_last_success_timestamp_seconds",
            "Unix time the source's last applied read ended (0: never).",
            "source",
        )
        self.source_seconds = Histogram(
            "syncd_source_read_duration_seconds",
            "Duration of a [[source]]'s reads, from the query sent to the read applied.",
            ["source"],
            buckets=CYCLE_BUCKETS,
            registry=registry,
        )
        for outcome in INBOX_OUTCOMES:
            self.inbox_files.labels(outcome)  # show 0 rather than no series before the first file
        self.up.set(1)
        self._targets: set[str] = set()
        self._sources: set[str] = set()
        self._codes: dict[str, set[str]] = {}  # the rejection codes seen per target

    def track_targets(
        self,
        intervals: Mapping[str, float],
        *,
        last_success: Mapping[str, float] | None = None,
        last_cycle: Mapping[str, float] | None = None,
        now: float | None = None,
    ) -> None:
        """Show a series for every configured target from the start, and none for a target
        that is no longer configured (a reload). ``intervals`` are the targets' schedules in
        seconds; ``last_success`` and ``last_cycle`` are what the store remembers of earlier
        runs, for a target this process has not synced yet."""
        now = time.time() if now is None else now
        for gone in self._targets - set(intervals):
            self._forget(gone)
        for target, seconds in intervals.items():
            self.interval.labels(target).set(seconds)
            if target in self._targets:
                continue
            for outcome in CYCLE_OUTCOMES:
                self.cycles.labels(target, outcome)
            for operation in ROW_OPERATIONS:
                self.rows.labels(target, operation)
            self.last_success.labels(target).set((last_success or {}).get(target, 0.0))
            self.last_cycle.labels(target).set((last_cycle or {}).get(target, now))
            self.lease_held.labels(target).set(0)
            self.open_conflicts.labels(target)
            self.pending_local.labels(target)
            self.cycle_seconds.labels(target)
        self._targets = set(intervals)

    def _forget(self, target: str) -> None:
        for metric, labels in (
            (self.cycles, [(target, o) for o in CYCLE_OUTCOMES]),
            (self.rows, [(target, o) for o in ROW_OPERATIONS]),
            (self.last_success, [(target,)]),
            (self.last_cycle, [(target,)]),
            (self.last_export, [(target,)]),
            (self.lease_held, [(target,)]),
            (self.open_conflicts, [(target,)]),
            (self.pending_local, [(target,)]),
            (self.interval, [(target,)]),
            (self.cycle_seconds, [(target,)]),
            (self.rejected_rows, [(target, c) for c in self._codes.pop(target, ())]),
        ):
            for values in labels:
                with contextlib.suppress(KeyError):  # never had that series
                    metric.remove(*values)

    def observe_cycle(
        self,
        result: FinishedCycle,
        *,
        rejected_codes: Mapping[str, int] | None = None,
        seconds: float | None = None,
        now: float | None = None,
    ) -> None:
        """Count a finished cycle that took ``seconds``. ``rejected_codes`` breaks this cycle's
        refused rows down by code; without it they are counted under ``unspecified``."""
        target = result.target
        now = time.time() if now is None else now
        self.cycles.labels(target, result.outcome).inc()
        if result.outcome == "planned":
            return  # a dry run changed nothing
        self.last_cycle.labels(target).set(now)
        if seconds is not None:
            self.cycle_seconds.labels(target).observe(max(0.0, seconds))
        if result.outcome in _COUNTED_WHOLE:
            self.open_conflicts.labels(target).set(result.counts.get("conflicts_open", 0))
        for operation, keys in ROW_OPERATIONS.items():
            n = sum(result.counts.get(k, 0) for k in keys)
            if n:
                self.rows.labels(target, operation).inc(n)
        codes = rejected_codes
        if codes is None:
            codes = {"unspecified": result.counts.get("rejected", 0)}
        for code, n in codes.items():
            if n:
                self.rejected_rows.labels(target, code or "unspecified").inc(n)
                self._codes.setdefault(target, set()).add(code or "unspecified")
        if result.outcome in SUCCESS_OUTCOMES:
            self.last_success.labels(target).set(now)

    def track_sources(
        self, sources: Mapping[str, float | None], *, now: float | None = None
    ) -> None:
        """A series per configured source from the start (counters at 0, the last success as
        the store remembers it, else 0); none for a source no longer configured."""
        for gone in self._sources - set(sources):
            for metric, labels in (
                (self.source_reads, [(gone, o) for o in SOURCE_OUTCOMES]),
                (self.source_rows, [(gone,)]),
                (self.source_changes, [(gone, o) for o in SOURCE_OPERATIONS]),
                (self.source_last_success, [(gone,)]),
                (self.source_seconds, [(gone,)]),
            ):
                for values in labels:
                    with contextlib.suppress(KeyError):
                        metric.remove(*values)
        for source, last_success in sources.items():
            if source in self._sources:
                continue
            for outcome in SOURCE_OUTCOMES:
                self.source_reads.labels(source, outcome)
            for operation in SOURCE_OPERATIONS:
                self.source_changes.labels(source, operation)
            self.source_rows.labels(source)
            self.source_seconds.labels(source)
            self.source_last_success.labels(source).set(last_success or 0.0)
        self._sources = set(sources)

    def observe_source(
        self,
        source: str,
        outcome: str,
        *,
        rows: int = 0,
        changes: Mapping[str, int] | None = None,
        seconds: float | None = None,
        now: float | None = None,
    ) -> None:
        """One read of a source: its outcome (``SOURCE_OUTCOMES``), rows and changes."""
        if outcome not in SOURCE_OUTCOMES:
            raise ValueError(f"source outcome must be one of {SOURCE_OUTCOMES}, not {outcome!r}")
        self.source_reads.labels(source, outcome).inc()
        if seconds is not None:
            self.source_seconds.labels(source).observe(max(0.0, seconds))
        if outcome != "applied":
            return
        self.source_rows.labels(source).inc(rows)
        for operation, n in (changes or {}).items():
            if n:
                self.source_changes.labels(source, operation).inc(n)
        self.source_last_success.labels(source).set(time.time() if now is None else now)

    def exported(self, target: str, now: float | None = None) -> None:
        """The target's remote list was exported whole."""
        self.last_export.labels(target).set(time.time() if now is None else now)

    def set_lease_held(self, target: str, held: bool) -> None:
        self.lease_held.labels(target).set(1 if held else 0)

    def count_inbox_with(self, waiting: Callable[[], int]) -> None:
        """Ask ``waiting`` for the inbox's backlog at every scrape."""
        self.inbox_waiting.set_function(waiting)

    def observe_call(self, provider: str, method: str, outcome: str, seconds: float) -> None:
        """One provider HTTP attempt; fits ``CallObserver``."""
        self.api_calls.labels(provider, method, outcome).inc()
        self.api_call_seconds.labels(provider, method).observe(max(0.0, seconds))

    def observe_inbox(self, outcome: str) -> None:
        if outcome not in INBOX_OUTCOMES:
            raise ValueError(f"inbox outcome must be one of {INBOX_OUTCOMES}, not {outcome!r}")
        self.inbox_files.labels(outcome).inc()

    def observe_webhook(self, webhook: str, outcome: str) -> None:
        self.webhook_deliveries.labels(webhook, outcome).inc()

    def observe_hook(self, target: str, outcome: str) -> None:
        self.hooks_received.labels(target, outcome).inc()

    def set_webhook_queue(self, oldest_seconds: float, dead: Mapping[str, int]) -> None:
        self.webhook_oldest.set(oldest_seconds)
        self.webhook_dead.clear()  # a replayed webhook's series goes back to nothing
        for webhook, n in dead.items():
            self.webhook_dead.labels(webhook).set(n)

    def set_pending(self, target: str, n: int) -> None:
        self.pending_local.labels(target).set(n)

    def set_up(self, up: bool) -> None:
        self.up.set(1 if up else 0)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its Content-Type, for ``GET /metrics``: OpenMetrics when
        ``accept`` (the scraper's Accept header) asks for it, the classic text format else."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


# --------------------------------------------------------------------------- call hook


def _ignore_call(provider: str, method: str, outcome: str, seconds: float) -> None:
    pass


_call_observer: CallObserver = _ignore_call


def set_call_observer(fn: CallObserver | None) -> None:
    """Send every provider HTTP attempt to ``fn`` (e.g. ``Metrics.observe_call``); None stops."""
    global _call_observer
    _call_observer = fn or _ignore_call


def call_observer() -> CallObserver:
    """The current observer; never None, so the HTTP layer can call it unconditionally."""
    return _call_observer
