"""What the daemon tells its watchers about cycles: the metrics' start values and systemd's status.

``CycleWatch`` follows one cycle through the engine's progress calls (``CycleOptions.progress``)
and turns each stage into words on the ``StatusLine`` and, once the export is whole, the export
time in the metrics. ``remembered_runs`` reads the store's run records at start, so the
last-success and last-cycle times survive a restart instead of starting over; ``interval_seconds``
gives each schedule's length for the alerts' "for N intervals"; ``inbox_backlog`` counts the
files waiting in the inbox at each scrape.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from syncd.daemon.scheduler import make_trigger
from syncd.daemon.systemd import StatusLine
from syncd.engine.result import RATE_LIMIT_WAIT
from syncd.local.inbox.ledger import eligible
from syncd.metrics import SUCCESS_OUTCOMES, Metrics
from syncd.store.models import Run

log = logging.getLogger("syncd.daemon")

#: Fire times a cron schedule is read ahead for its longest gap: a week of a daily schedule.
CRON_LOOKAHEAD = 8


class CycleWatch:
    """The progress callback of one target's cycle."""

    def __init__(self, target: str, status: StatusLine, metrics: Metrics, *, exports: bool) -> None:
        self.target, self.status, self.metrics = target, status, metrics
        self.differing = 0
        self.sent = "pushing"
        status.doing(target, "exporting" if exports else "planning")

    def __call__(self, stage: str, n: int, total: int | None = None) -> None:
        if stage == "exporting":
            self.status.doing(self.target, "exporting", f"exporting ({n:,} rows read)")
        elif stage == "exported":
            self.metrics.exported(self.target)
            self.status.doing(self.target, "planning", f"planning ({n:,} contacts exported)")
        elif stage == "differing keys":
            self.differing = n
            words = f"pushing {n:,} differing keys" if n else "finishing: no differences"
            self.status.doing(self.target, "deciding", words)
        elif stage == "rows sent":
            # one phase for all the calls: the first is shown at once, the rest at a pace
            self.sent = f"pushing {n:,}/{total or n:,}"
            self.status.doing(self.target, "sending", self.sent)
        elif stage == RATE_LIMIT_WAIT:
            words = f"{self.sent}, waiting {n:,} s for the rate limit"
            self.status.doing(self.target, "waiting", words)


def remembered_runs(db: Engine) -> tuple[dict[str, float], dict[str, float]]:
    """Per target, when its last successful cycle and its last cycle of any outcome ended, as
    the store's run records say (any replica's)."""
    finished = col(Run.finished_at)
    last = func.max(finished)
    with Session(db) as session:
        success = session.execute(
            select(col(Run.target), last)
            .where(col(Run.outcome).in_(SUCCESS_OUTCOMES), finished.is_not(None))
            .group_by(col(Run.target))
        ).all()
        anything = session.execute(
            select(col(Run.target), last)
            .where(finished.is_not(None), col(Run.outcome) != "planned")
            .group_by(col(Run.target))
        ).all()
    return _stamps((t, a) for t, a in success), _stamps((t, a) for t, a in anything)


def _stamps(rows: Iterable[tuple[str, str | None]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for target, at in rows:
        try:
            out[target] = datetime.fromisoformat(str(at)).replace(tzinfo=UTC).timestamp()
        except (TypeError, ValueError):
            log.warning("run record of %s has an unreadable end time %r", target, at)
    return out


def interval_seconds(schedule: str) -> float:
    """Seconds between runs of ``schedule``: the interval, or a cron schedule's longest gap over
    its next runs (a weekday schedule's weekend counts)."""
    trigger = make_trigger(schedule, 0)
    now = datetime.now(UTC)
    fires = [trigger.get_next_fire_time(None, now)]
    for _ in range(CRON_LOOKAHEAD):
        previous = fires[-1]
        if previous is None:
            break
        fires.append(trigger.get_next_fire_time(previous, previous))
    times = [f for f in fires if f is not None]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    return max(gaps, default=0.0)


def inbox_backlog(folder: Path) -> int:
    """Files in ``folder`` the inbox would take (its own sub-folders and partial files aside)."""
    try:
        with os.scandir(folder) as entries:
            return sum(1 for e in entries if eligible(e.name) and not e.is_dir())
    except OSError:  # no inbox folder (yet): nothing waits
        return 0
