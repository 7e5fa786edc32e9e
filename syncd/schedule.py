"""The syntax of a target's ``schedule``: an interval ('30s', '5m', '1h', '1d') or a five-field
cron expression (UTC).

``parse_schedule`` reads the text into an :class:`Interval` or a :class:`Cron` and refuses
anything else with a message naming the value; the configuration checks every target's schedule
with it, and the daemon's scheduler (``syncd.daemon.scheduler``) turns the result into a trigger.
Cron fields are checked by APScheduler's own crontab parser, the one the daemon schedules with,
so a schedule accepted here is one the daemon can run. Nothing here reads a clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC

__all__ = ["Cron", "Interval", "Schedule", "parse_schedule"]

_INTERVAL = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True, slots=True)
class Interval:
    """Every ``amount`` ``unit`` (APScheduler's keyword: seconds, minutes, hours or days)."""

    amount: int
    unit: str


@dataclass(frozen=True, slots=True)
class Cron:
    """A five-field crontab line (minute hour day month day-of-week), in UTC."""

    expression: str


Schedule = Interval | Cron


def parse_schedule(text: str) -> Schedule:
    """The schedule ``text`` says; ValueError naming the value when it says neither kind."""
    match = _INTERVAL.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        if amount <= 0:
            raise ValueError(f"schedule {text!r}: the interval must be positive")
        return Interval(amount, _UNITS[unit])
    if len(text.split()) != 5:
        raise ValueError(
            f"schedule {text!r}: use an interval such as '5m' or a five-field cron expression"
        )
    # APScheduler only for a cron line: every command checks the configuration's schedules
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text, timezone=UTC)  # each field's range and syntax
    except ValueError as exc:
        raise ValueError(f"schedule {text!r}: {exc}") from None
    return Cron(text)
