"""How syncd writes a moment: UTC to the second, ISO 8601 with ``Z``.

The store's run, rejection, ledger and job rows, the inbox reports and the change events all use
this one form, so they sort as text and compare across files.
"""

from __future__ import annotations

from datetime import UTC, datetime


def stamp(at: datetime | None = None) -> str:
    """``at`` (now when None; a naive time is taken as UTC) as ``YYYY-MM-DDTHH:MM:SSZ``."""
    moment = datetime.now(UTC) if at is None else at
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
