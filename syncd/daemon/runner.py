"""`syncd run`: the long-running service around the engine.

It starts clean after any stop (ingests the files that arrived meanwhile, resumes from the base),
syncs each target on its schedule and at once when inbox files change its local list, tells the
world how it is (sd_notify, /healthz, /readyz, /metrics, one log event a line), reloads its
configuration on SIGHUP or when the file changes, and stops clean on SIGTERM/SIGINT: no new
work, the batch in flight finishes (bounded by ``daemon.stop_timeout``), exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sqlalchemy import text
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from syncd.commands import api_routes, hook_routes, job_routes, sources
from syncd.commands.cycles import build_provider, prune_history
from syncd.config import Config, SourceConfig, TargetConfig, load_config
from syncd.daemon import observe
from syncd.daemon.hook_worker import HookWorker
from syncd.daemon.http import StatusServer
from syncd.daemon.scheduler import TargetScheduler
from syncd.daemon.source_jobs import SourceJobs
from syncd.daemon.systemd import Notifier, StatusLine, WatchdogPinger
from syncd.daemon.webhooks import Deliverer
from syncd.engine import run_cycle
from syncd.engine.result import CycleOptions
from syncd.errors import ConfigError
from syncd.local import outbox
from syncd.local.inbox import Inbox
from syncd.local.source import register_url
from syncd.local.source.state import last_read
from syncd.logs import log_context, register_secret
from syncd.metrics import Metrics, set_call_observer
from syncd.providers import PROVIDERS
from syncd.store import open_engine
from syncd.store.lease import Lease, Leases, new_holder

log = logging.getLogger("syncd.daemon")

#: Outcomes after which the target counts as healthy (the provider answered and the cycle ended
#: in a defined state); "unreachable", "failed" and "partial" (the export keeps coming back
#: incomplete, so deletes never happen) start or continue a failing streak.
#: Seconds between two prunings of the history (``[history] keep`` is counted in days).
HISTORY_PRUNE_EVERY = 3600.0

HEALTHY = {"converged", "rejected", "conflicts", "refused", "stopped", "awaiting"}


@dataclass
class _Health:
    last_outcome: str = "never run"
    failing_since: float | None = None  # monotonic


class Daemon:
    def __init__(self, config_path: Path, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.db = open_engine(config.store.url)
        # every cycle runs under its target's lease: replicas sharing a store take turns
        self.leases = Leases(self.db, new_holder(), config.daemon.lease_timeout)
        self.metrics = Metrics()
        self.notifier = Notifier()
        self.status_line = StatusLine(self.notifier, targets=len(config.target))
        inbox_folder = Path(config.inbox.path)  # [inbox] changes take effect at a restart
        self.metrics.count_inbox_with(lambda: observe.inbox_backlog(inbox_folder))
        self.health: dict[str, _Health] = {}
        self._health_lock = threading.Lock()
        self._prune_lock = threading.Lock()
        self._pruned_at: float | None = None  # monotonic; None: not yet since the start
        self._register_secrets(config)
        self.scheduler = TargetScheduler(
            self._run_cycle,
            max_parallel=config.daemon.max_parallel,
            backoff_max=config.daemon.retry_backoff_max,
        )
        self.inbox = Inbox(
            self.db, config, on_applied=self._lists_changed, metrics_hook=self.metrics.observe_inbox
        )
        self.http: StatusServer | None = None
        if config.http.enabled:
            self.http = StatusServer(
                config.http, health=self._healthy, ready=self._ready, metrics=self.metrics
            )
            jobs = job_routes.routes(self.db, lambda: self.config)  # Netcore's files, callbacks
            for method in job_routes.METHODS:
                self.http.add_route(method, job_routes.PREFIX, jobs)
            if config.http.ingest_enabled:  # the ingest API: changed lists sync at once
                api = api_routes.routes(self.db, lambda: self.config, self._lists_changed)
                for method in api_routes.METHODS:
                    self.http.add_route(method, api_routes.PREFIX, api)
        self.deliverer = Deliverer(self.db, self.leases.holder, lambda: self.config, self.metrics)
        # provider webhooks in: the route queues keys, the worker re-reads them
        self.hook_worker = HookWorker(
            self.db,
            self.leases,
            lambda: self.config,
            self.metrics,
            stopping=self.stop_event,
            after=self._after_hook,
        )
        if self.http is not None:
            hooks = hook_routes.routes(
                self.db, lambda: self.config, self._hook_prompt, self.metrics.observe_hook
            )
            self.http.add_route("POST", hook_routes.PREFIX, hooks)
        self.sources = SourceJobs(self._pull_source)
        self._config_watch = Observer()
        self._pinger: WatchdogPinger | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        set_call_observer(self.metrics.observe_call)
        # Watch the configuration before anything answers: a change made once /healthz is up
        # must not fall between the load and the watch. One check at start covers the change
        # made before the watch (a reload with nothing new does nothing).
        self._watch_config()
        self.reload_event.set()
        self._track_targets()
        if self.http is not None:
            self.http.start()
        self.scheduler.start(list(self.config.target))
        self._track_sources()
        self.sources.start(list(self.config.source))
        self.deliverer.start()  # events left undelivered by the last run go first
        if self.http is not None:
            self.hook_worker.start()  # keys queued before a stop go first
        # watch first, then scan: a file renamed in between is seen by one of the two, and a
        # file seen by both is simply gone the second time
        self.inbox.start()
        self.inbox.scan()  # files that arrived while the daemon was down, oldest first
        self._pinger = WatchdogPinger(self.notifier, alive=self.scheduler.alive)
        self._pinger.start()
        self.notifier.ready()
        self.status_line.set_targets(len(self.config.target))
        log.info(
            "started",
            extra={"targets": [t.name for t in self.config.target], "holder": self.leases.holder},
        )
        while not self.stop_event.wait(0.5):
            if self.reload_event.is_set():
                self.reload_event.clear()
                self._reload()
        return self._shutdown()

    def request_stop(self) -> None:
        self.stop_event.set()

    def _shutdown(self) -> int:
        self.notifier.stopping()
        self.metrics.set_up(False)  # a scrape during the stop sees it going
        log.info("stopping: no new work; waiting for the batch in flight")
        deadline = time.monotonic() + self.config.daemon.stop_timeout
        self.inbox.stop(timeout=self.config.daemon.stop_timeout)
        self.scheduler.shutdown()
        self.sources.shutdown()
        while (self.scheduler.busy() or self.sources.busy()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.scheduler.busy():
            log.warning("a cycle was still running at the stop timeout; it is abandoned safely")
        self._config_watch.stop()
        if self._pinger is not None:
            self._pinger.stop()
        self.hook_worker.stop(timeout=self.config.daemon.stop_timeout)
        outbox.flush(self.db, Path(self.config.outbox.path))
        self.deliverer.stop(timeout=self.config.daemon.stop_timeout)
        if self.http is not None:
            self.http.stop()
        self.db.dispose()
        log.info("stopped")
        return 0

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s received", signal.Signals(signum).name)
            self.stop_event.set()

        def reload(_signum: int, _frame: FrameType | None) -> None:
            self.reload_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    # -- cycles ---------------------------------------------------------------------------

    def _run_cycle(self, target: TargetConfig, fresh_for: float) -> bool:
        if self.stop_event.is_set():
            return True
        # this process's hook worker holds the lease for one batch at most: wait for it rather
        # than skip the tick
        deadline = time.monotonic() + self.config.daemon.lease_timeout
        while (
            self.leases.holder_of(target.name) == self.leases.holder
            and time.monotonic() < deadline
            and not self.stop_event.is_set()
        ):
            time.sleep(0.05)
        with self.leases.hold(target.name, fresh_for=fresh_for) as lease:
            if lease is None:
                log.debug("%s is in hand or was just synced by another process", target.name)
                return True  # not a failure: the target is looked after
            self.metrics.set_lease_held(target.name, True)
            try:
                # the sources feeding the list first, so the cycle pushes what they say now
                self.sources.before_cycle(target.local_list_name, target.name)
                return self._leased_cycle(target, lease)
            finally:
                self.metrics.set_lease_held(target.name, False)
                self.status_line.drop(target.name)  # when the cycle raised

    def _leased_cycle(self, target: TargetConfig, lease: Lease) -> bool:
        cycle_id = uuid.uuid4().hex[:12]
        with log_context(target=target.name, cycle=cycle_id):
            provider = build_provider(self.config, target)
            watch = observe.CycleWatch(
                target.name,
                self.status_line,
                self.metrics,
                exports=provider.capabilities.export,
            )
            started = time.monotonic()
            try:
                result = run_cycle(
                    self.db,
                    target,
                    provider,
                    CycleOptions(
                        progress=watch,
                        on_remote_change=outbox.recorder(
                            provider.name,
                            cycle_id,
                            self.config.webhook,
                            list_name=target.local_list_name,
                        ),
                        should_stop=self.stop_event.is_set,
                        lease=lease,
                        cycle_id=cycle_id,
                        holder=self.leases.holder,
                        peers=self.config.account_peers(target),
                    ),
                )
            finally:
                provider.close()
            self.metrics.observe_cycle(
                result,
                rejected_codes=result.rejected_codes,
                seconds=time.monotonic() - started,
            )
            # local changes not at the provider yet: held rejections, open conflicts, deferrals
            s = result.summary()
            self.metrics.set_pending(target.name, s["rejected"] + s["conflicts"] + s["deferred"])
            summary = result.summary()
            level = logging.INFO if result.outcome in HEALTHY else logging.WARNING
            log.log(level, "cycle %s", result.outcome, extra={"summary": summary})
            outbox.flush(self.db, Path(self.config.outbox.path))
            self.deliverer.wake()
            self._prune_history()
        self._record_health(target.name, result.outcome)
        return result.outcome in HEALTHY

    def _hook_prompt(self, target: str, full: bool) -> None:
        """A webhook queued keys of ``target`` (or, ``full``, asks for a whole cycle)."""
        if full:
            self.scheduler.run_soon({target})
        else:
            self.hook_worker.wake()

    def _after_hook(self) -> None:
        self.deliverer.wake()

    def _prune_history(self) -> None:
        """At most once an hour, after a cycle: history past ``[history] keep`` goes."""
        with self._prune_lock:
            now = time.monotonic()
            if self._pruned_at is not None and now - self._pruned_at < HISTORY_PRUNE_EVERY:
                return
            self._pruned_at = now
        gone = prune_history(self.db, self.config)
        if gone:
            log.info("history: %d rows older than %s pruned", gone, self.config.history.keep)

    def _lists_changed(self, lists: set[str], skip: str | None = None) -> None:
        names = {t.name for t in self.config.target if t.local_list_name in lists} - {skip}
        if names:
            log.info("local lists %s changed: syncing %s now", sorted(lists), sorted(names))
            self.scheduler.run_soon({n for n in names if n is not None})

    def _pull_source(self, source: SourceConfig, skip: str | None) -> None:
        """One read of a source (scheduled, or before a cycle of ``skip``); the targets whose
        lists it changed sync at once, except ``skip``, whose cycle is about to run."""
        if self.stop_event.is_set():
            return
        with log_context(source=source.name):
            outcome = sources.pull_one(self.db, self.config, source)
        report = outcome.report
        changes = {}
        if report is not None:
            changes = {
                "created": report.created,
                "updated": report.updated,
                "removed": report.removed,
                "rejected": len(report.rejected),
            }
        self.metrics.observe_source(
            source.name,
            outcome.outcome,
            rows=report.rows if report else 0,
            changes=changes,
            seconds=outcome.seconds,
        )
        if report is not None and report.lists:
            self._lists_changed(set(report.lists), skip)

    # -- health ---------------------------------------------------------------------------

    def _record_health(self, target: str, outcome: str) -> None:
        with self._health_lock:
            h = self.health.setdefault(target, _Health())
            h.last_outcome = outcome
            if outcome in HEALTHY:
                h.failing_since = None
            elif h.failing_since is None:
                h.failing_since = time.monotonic()
            failing = [n for n, h in self.health.items() if h.failing_since is not None]
        self.status_line.finished(target, outcome, failing)

    def _healthy(self) -> tuple[bool, str]:
        if self.stop_event.is_set():
            return False, "stopping"
        if not self.scheduler.alive():
            return False, "scheduler not running"
        return True, "ok"

    def _ready(self) -> tuple[bool, str]:
        try:
            with self.db.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any reason the store is unusable makes us unready
            return False, f"store unreachable: {type(exc).__name__}"
        limit = self.config.daemon.ready_failing_for
        now = time.monotonic()
        with self._health_lock:
            stale = [
                n
                for n, h in self.health.items()
                if h.failing_since and now - h.failing_since > limit
            ]
        if stale:
            return False, f"failing for more than {limit:g} s: {', '.join(sorted(stale))}"
        return True, "ok"

    def _track_targets(self) -> None:
        """A series per configured target in the metrics, starting from what the store
        remembers of its last runs (a restart, or a target configured again, keeps them)."""
        success: dict[str, float] = {}
        cycles: dict[str, float] = {}
        try:
            success, cycles = observe.remembered_runs(self.db)
        except Exception:  # a store that cannot answer yet: the first cycles will tell
            log.warning("could not read the last runs for the metrics", exc_info=True)
        intervals = {t.name: observe.interval_seconds(t.schedule) for t in self.config.target}
        self.metrics.track_targets(intervals, last_success=success, last_cycle=cycles)

    def _track_sources(self) -> None:
        remembered: dict[str, float | None] = {}
        try:
            with self.db.connect() as conn:
                for s in self.config.source:
                    remembered[s.name] = last_read(conn, s.name).last_success_at
        except Exception:  # a store that cannot answer yet: the first reads will tell
            log.warning("could not read the sources' last reads for the metrics", exc_info=True)
            remembered = {s.name: None for s in self.config.source}
        self.metrics.track_sources(remembered)

    # -- configuration --------------------------------------------------------------------

    def _register_secrets(self, config: Config) -> None:
        for t in config.target:
            register_secret(t.api_key.get_secret_value())
        for w in config.webhook:
            for secret in w.secrets():
                register_secret(secret)
        if config.http.ingest_token is not None:
            register_secret(config.http.ingest_token.get_secret_value())
        for source in config.source:
            register_url(source)

    def _watch_config(self) -> None:
        """Reload when the configuration file is written (closed after writing), created or
        renamed into place; other files in its folder cost nothing and log nothing.

        The folder is watched, not the file, so that an editor's write-beside-and-rename is
        seen. Where the system reports a file closed after writing (inotify), only those events,
        creations and renames are asked for: a log file or a database beside the configuration
        is written without being closed, and its writes then never wake the watcher at all.
        Elsewhere modifications are asked for too, and filtered here by path.
        """
        path = self.config_path.resolve()
        kinds: list[type[FileSystemEvent]] = [FileCreatedEvent, FileMovedEvent, FileClosedEvent]
        if type(self._config_watch).__name__ != "InotifyObserver":
            kinds.append(FileModifiedEvent)

        class _Handler(FileSystemEventHandler):
            def __init__(self, daemon: Daemon) -> None:
                self.daemon = daemon

            def on_any_event(self, event: FileSystemEvent) -> None:
                touched = {str(event.src_path), str(getattr(event, "dest_path", "") or "")}
                if str(path) in touched and event.event_type in (
                    "modified",
                    "created",
                    "moved",
                    "closed",
                ):
                    self.daemon.reload_event.set()

        self._config_watch.schedule(
            _Handler(self), str(path.parent), recursive=False, event_filter=kinds
        )
        self._config_watch.start()

    def _reload(self) -> None:
        try:
            new = load_config(self.config_path, providers=PROVIDERS)
        except ConfigError as exc:
            log.error(
                "configuration not reloaded; the running one stays",
                extra={"problems": exc.problems},
            )
            return
        if new == self.config:
            return
        for section in ("store", "inbox", "outbox", "http"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("[%s] changed: it takes effect at the next restart", section)
        self._register_secrets(new)
        self.config = new.model_copy(
            update={s: getattr(self.config, s) for s in ("store", "inbox", "outbox", "http")}
        )
        self.scheduler.replace(list(self.config.target))
        self.sources.replace(list(self.config.source))
        self.inbox.reconfigure(self.config)
        self._track_targets()
        self._track_sources()
        log.info("configuration reloaded", extra={"targets": [t.name for t in self.config.target]})
        self.status_line.set_targets(len(self.config.target), "reloaded")
