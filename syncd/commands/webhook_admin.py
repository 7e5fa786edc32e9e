"""The library behind ``syncd webhooks replay``, the webhook lines of ``syncd status``, and the
one delivery pass ``syncd run-once`` makes.

The queue itself is ``syncd.local.webhook_queue``'s; this reads a ``--since``, puts the queue's
state into words and JSON, and sends what is due once (``deliver_now``): an event whose
attempt fails waits for its retry time, which the daemon (or a later ``run-once``) keeps.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from syncd.clock import stamp
from syncd.config import Config
from syncd.local import webhook_queue
from syncd.local.webhook_send import Sender
from syncd.schedule import Interval, parse_schedule

_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: an ISO-8601 time (UTC when it names no zone) or a duration ago ('2h')."""
    at = time.time() if now is None else now
    try:
        interval = parse_schedule(text)
    except ValueError:
        interval = None
    if isinstance(interval, Interval):
        return at - interval.amount * _SECONDS[interval.unit]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a time such as 2026-12-01T08:00:00Z or a duration such as 2h"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def deliver_now(db: Engine, config: Config, holder: str) -> Counter[str]:
    """Send everything due now, each contact's events in order; counts by outcome."""
    total: Counter[str] = Counter()
    sender = Sender(db, holder)
    try:
        while got := sender.deliver_due(config.webhook):
            total += got
    finally:
        sender.close()
    return total


def webhook_status(config: Config, db: Engine, now: float | None = None) -> dict[str, Any]:
    """Per configured webhook (and any other name still holding rows): pending, dead, off."""
    at = time.time() if now is None else now
    state = webhook_queue.queue_state(db)
    off = webhook_queue.disabled(db, config.webhook)
    names = [w.name for w in config.webhook]
    names += sorted((set(state.pending) | set(state.dead)) - set(names))
    oldest = state.oldest_pending
    return {
        "webhooks": [
            {
                "name": name,
                "configured": any(w.name == name for w in config.webhook),
                "pending": state.pending.get(name, 0),
                "dead": state.dead.get(name, 0),
                "disabled": off.get(name),
            }
            for name in names
        ],
        "oldest_undelivered_seconds": None if oldest is None else max(0.0, at - oldest),
        "dead_letters": [
            {**d, "dead_at": None if d["dead_at"] is None else stamp(_utc(d["dead_at"]))}
            for d in webhook_queue.dead_letters(db, limit=20)
        ],
    }


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def status_lines(status: dict[str, Any]) -> list[str]:
    lines = []
    for w in status["webhooks"]:
        line = f"webhook {w['name']}: {w['pending']} waiting, {w['dead']} dead-lettered"
        if not w["configured"]:
            line += " (no longer configured: its rows are kept, not sent)"
        if w["disabled"]:
            line += f"; turned off: {w['disabled']} (syncd webhooks replay turns it back on)"
        lines.append(line)
    age = status["oldest_undelivered_seconds"]
    if age is not None:
        lines.append(f"  oldest undelivered event: {age:.0f} s")
    for d in status["dead_letters"]:
        lines.append(
            f"  dead: {d['webhook']} {d['event']} {d['type']} {d['target']}/{d['key']} "
            f"after {d['attempts']} attempts at {d['dead_at']}: {d['last_error']}"
        )
    return lines
