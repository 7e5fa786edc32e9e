"""The schedule syntax (``syncd.schedule``): what it accepts, what it refuses, what it means."""

from __future__ import annotations

import pytest

from syncd.daemon.scheduler import make_trigger
from syncd.schedule import Cron, Interval, parse_schedule


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", Interval(30, "seconds")),
        (" 5 m ", Interval(5, "minutes")),
        ("1h", Interval(1, "hours")),
        ("2d", Interval(2, "days")),
        ("*/10 * * * *", Cron("*/10 * * * *")),
        ("0 6 * * mon-fri", Cron("0 6 * * mon-fri")),
    ],
)
def test_an_interval_or_a_five_field_cron_is_read(text: str, expected: object) -> None:
    assert parse_schedule(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0s", "must be positive"),
        ("every tuesday", "five-field cron"),
        ("5 minutes", "five-field cron"),
        ("* * * *", "five-field cron"),
        ("61 * * * *", "schedule"),
    ],
)
def test_anything_else_is_refused_naming_the_value(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_the_daemon_builds_its_trigger_from_the_parsed_schedule() -> None:
    assert "interval[0:05:00]" in str(make_trigger("5m", 0))
    assert "cron[" in str(make_trigger("0 6 * * *", 10))
    with pytest.raises(ValueError, match="must be positive"):
        make_trigger("0m", 0)
