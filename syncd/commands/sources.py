"""``syncd source pull`` and the source lines of ``syncd status``: the library calls behind them,
also what the daemon runs on each source's schedule (``syncd.daemon.runner``).

A read that fails, times out or is refused by the mass-delete guard becomes a ``PullOutcome``
with its reason (never the source's URL); the other sources are still read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from syncd.config import Config, SourceConfig
from syncd.errors import MassDeleteRefused, SourceReadFailed
from syncd.local.source import SourceReport, masked_url, pull, register_url
from syncd.local.source.state import last_read
from syncd.metrics import SOURCE_OUTCOMES

log = logging.getLogger("syncd.source")

#: What a read ended as: ``applied`` (rows may still be rejected), ``refused`` (the mass-delete
#: guard), ``failed`` (the query, the connection or the timeout).
OUTCOMES = SOURCE_OUTCOMES


@dataclass(frozen=True, slots=True)
class PullOutcome:
    source: str
    outcome: str  # one of OUTCOMES
    report: SourceReport | None = None
    reason: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"source": self.source, "outcome": self.outcome}
        if self.report is not None:
            data.update(self.report.to_dict())
        if self.reason:
            data["reason"] = self.reason
        return data


def pull_one(
    db: Engine,
    config: Config,
    source: SourceConfig,
    *,
    dry_run: bool = False,
    allow_mass_delete: bool = False,
    full: bool | None = None,
) -> PullOutcome:
    """One read of ``source``, its failure caught and logged (the daemon's and the CLI's)."""
    register_url(source)
    started = time.monotonic()
    try:
        report = pull(
            db, config, source, dry_run=dry_run, allow_mass_delete=allow_mass_delete, full=full
        )
    except MassDeleteRefused as exc:
        log.warning("%s", exc, extra={"source": source.name})
        return PullOutcome(source.name, "refused", None, str(exc), time.monotonic() - started)
    except SourceReadFailed as exc:
        log.warning("%s", exc, extra={"source": source.name})
        return PullOutcome(source.name, "failed", None, str(exc), time.monotonic() - started)
    level = logging.INFO if report.changed or report.rejected else logging.DEBUG
    log.log(level, "source read", extra={"source": source.name, "summary": report.to_dict()})
    return PullOutcome(source.name, "applied", report, seconds=report.seconds)


def pull_sources(
    db: Engine,
    config: Config,
    name: str | None = None,
    *,
    dry_run: bool = False,
    allow_mass_delete: bool = False,
) -> list[PullOutcome]:
    """Read every source (or the one named), one after another."""
    return [
        pull_one(db, config, s, dry_run=dry_run, allow_mass_delete=allow_mass_delete)
        for s in config.sources(name)
    ]


def source_status(config: Config, db: Engine, now: float | None = None) -> list[dict[str, Any]]:
    """Per configured source: where it reads from (no password), its last read and its counts."""
    at = time.time() if now is None else now
    found = []
    with db.connect() as conn:
        for source in config.source:
            last = last_read(conn, source.name)
            found.append(
                {
                    "source": source.name,
                    "database": masked_url(source),
                    "list": source.list,
                    "mode": source.mode,
                    "schedule": source.schedule,
                    "last_read_at": last.last_read_at,
                    "last_success_at": last.last_success_at,
                    "age_seconds": None if last.last_read_at is None else at - last.last_read_at,
                    "rows": last.rows,
                    "created": last.created,
                    "updated": last.updated,
                    "removed": last.removed,
                    "unchanged": last.unchanged,
                    "rejected": last.rejected,
                    "seconds": last.seconds,
                    "error": last.error,
                }
            )
    return found
