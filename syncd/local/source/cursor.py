"""The cursor of a ``mode = "cursor"`` source: the highest ``cursor_column`` value seen, kept as
JSON between reads, and the value the next read starts from (that minus ``overlap``).

A timestamp (``datetime``, or ISO 8601 text as SQLite keeps it) goes back ``overlap`` seconds; a
date goes back whole days; a number goes back ``overlap`` as a number (epoch seconds, or a
version counter where a few extra rows read again cost nothing). Any other text starts exactly
at the last value. A row that is read again and has not changed is recognised by its fingerprint
and costs nothing more.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any


def encode(value: Any) -> dict[str, Any] | None:
    """The JSON form of a cursor value (None: no value seen)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return {"kind": "datetime", "value": value.isoformat()}
    if isinstance(value, dt.date):
        return {"kind": "date", "value": value.isoformat()}
    if isinstance(value, bool):
        raise ValueError("a boolean cannot be a cursor")
    if isinstance(value, int | float | decimal.Decimal):
        return {"kind": "number", "value": str(value)}
    return {"kind": "text", "value": str(value)}


def later(a: Any, b: Any) -> Any:
    """The greater of two raw cursor values (None counts as nothing seen)."""
    if a is None:
        return b
    if b is None:
        return a
    try:
        return b if b > a else a
    except TypeError:  # mixed kinds: keep the one seen first
        return a


def since_value(encoded: dict[str, Any] | None, overlap_seconds: float) -> Any:
    """The value the next cursor read starts from (None: no cursor yet, read everything)."""
    if encoded is None:
        return None
    kind, value = encoded["kind"], encoded["value"]
    back = dt.timedelta(seconds=overlap_seconds)
    if kind == "datetime":
        return dt.datetime.fromisoformat(value) - back
    if kind == "date":
        return dt.date.fromisoformat(value) - dt.timedelta(days=math.ceil(back / dt.timedelta(1)))
    if kind == "number":
        number = decimal.Decimal(value) - decimal.Decimal(overlap_seconds)
        return int(number) if number == number.to_integral_value() else float(number)
    return _text_since(value, back)


def _text_since(value: str, back: dt.timedelta) -> str:
    """ISO 8601 text (SQLite's timestamps) goes back as a timestamp and keeps its spelling."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    separator = "T" if "T" in value else " "
    spec = "seconds" if "." not in value else "microseconds"
    if len(value) == 10:  # a date alone
        return (parsed - back).date().isoformat()
    return (parsed - back).isoformat(sep=separator, timespec=spec)
