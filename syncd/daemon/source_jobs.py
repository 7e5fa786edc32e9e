"""One APScheduler job per ``[[source]]``: each source read on its ``every`` or ``cron``, never
two reads of one source at once, missed runs coalesced; and a read on demand just before a
cycle of a target its list feeds (``before_cycle``).

A read that fails is logged by the read itself (``syncd.commands.sources``) and tried again at
the next tick; it never stops the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from syncd.config import SourceConfig
from syncd.daemon.scheduler import background_scheduler, make_trigger

log = logging.getLogger("syncd.scheduler")

#: A read that ended this recently is fresh enough for a cycle: the cycle that a read's own
#: changes asked for does not read the source again.
FRESH_SECONDS = 5.0

#: Reads one source; ``skip`` names a target not to wake (the one about to cycle anyway).
PullSource = Callable[[SourceConfig, str | None], None]


class SourceJobs:
    """The jobs of the configured sources, replaceable as a whole on reload."""

    def __init__(self, pull: PullSource, *, max_parallel: int = 2) -> None:
        self._pull = pull
        self._sources: dict[str, SourceConfig] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._done_at: dict[str, float] = {}  # monotonic end of each source's last read
        self._lock = threading.Lock()
        self._scheduler = background_scheduler(max_parallel)

    def start(self, sources: list[SourceConfig]) -> None:
        self.replace(sources)
        self._scheduler.start()

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=False)

    def busy(self) -> bool:
        with self._lock:
            return any(lock.locked() for lock in self._locks.values())

    def replace(self, sources: list[SourceConfig]) -> None:
        """Swap in a new set of sources (a reload). Each first read happens at once."""
        with self._lock:
            old = set(self._sources)
            self._sources = {s.name: s for s in sources}
            for s in sources:
                self._locks.setdefault(s.name, threading.Lock())
        for name in old - set(self._sources):
            if self._scheduler.get_job(f"source:{name}"):
                self._scheduler.remove_job(f"source:{name}")
        for s in sources:
            self._scheduler.add_job(
                self._job,
                make_trigger(s.schedule, 0),
                args=[s.name],
                id=f"source:{s.name}",
                name=f"read source {s.name}",
                replace_existing=True,
                next_run_time=datetime.now(UTC),
            )

    def before_cycle(self, list_name: str, target: str) -> None:
        """Read the sources feeding ``list_name`` that ask for it, unless one just ended."""
        with self._lock:
            chosen = [s for s in self._sources.values() if s.list == list_name and s.before_cycle]
        for source in chosen:
            done = self._done_at.get(source.name)
            if done is not None and time.monotonic() - done < FRESH_SECONDS:
                continue
            self._read(source, target)

    def _job(self, name: str) -> None:
        with self._lock:
            source = self._sources.get(name)
        if source is not None:
            self._read(source, None)

    def _read(self, source: SourceConfig, skip: str | None) -> None:
        lock = self._locks[source.name]
        if not lock.acquire(blocking=False):
            # A read is going: wait for it and take its result rather than read again.
            with lock:
                return
        try:
            self._pull(source, skip)
        except Exception:  # a read must never take the daemon down
            log.exception("source read crashed", extra={"source": source.name})
        finally:
            self._done_at[source.name] = time.monotonic()
            lock.release()
