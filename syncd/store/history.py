"""The per-key history of cycles: written with the writes it describes, read by ``explain``.

One row per key a cycle decided something about (``syncd.store.models.History``): the table
case, what was sent (``sent``: the call, the row's fields and the flags) and the outcome
(``outcome``: ``confirmed``, ``rejected`` with the provider's code and message, ``held`` with
the reason, ...). The engine adds the rows of one chunk or one batch with one ``executemany``
in that chunk's or batch's transaction, so a row exists exactly when what it says was
committed, and a cycle with no differing key writes none.

Local writes add theirs the same way (``syncd.local.ingest.write``): one row per contact a
file, ``syncd ingest`` or the ingest API changed, with no target and the source named.

Rows older than ``[history] keep`` are pruned by the daemon (``prune``), through the index on
``at``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col

from syncd.store.mirror import many
from syncd.store.models import History


def now_ms() -> str:
    """History times to the millisecond: steps of one contact a second apart stay in order."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Entry:
    """One step of one key, as ``explain --json`` shows it."""

    at: str
    cycle: int | None
    target: str | None
    key: str
    case: str
    sent: dict[str, Any] | None
    outcome: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "cycle": self.cycle,
            "target": self.target,
            "case": self.case,
            "sent": self.sent,
            "outcome": self.outcome,
        }


def row(
    run_id: int | None,
    target: str | None,
    key: str,
    case: str,
    outcome: dict[str, Any],
    sent: dict[str, Any] | None = None,
    at: str | None = None,
) -> dict[str, Any]:
    """One history row as the insert takes it."""
    return {
        "at": at or now_ms(),
        "run_id": run_id,
        "target": target,
        "key": key,
        "case": case,
        "sent": None if sent is None else encode(sent),
        "outcome": encode(outcome),
    }


#: the text ``row`` makes of a ``sent`` or ``outcome`` (also for rows built without ``row``):
#: ``json.dumps`` with options builds an encoder per call; a first push writes a row per contact
encode = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode

#: An insert's head, the columns in the order of ``as_tuple``.
INSERT_HEAD = 'INSERT INTO history (at, run_id, target, key, "case", sent, outcome)'

#: The insert of ``LocalSteps.row``'s rows: its head, and the values of one row. A local step
#: has no cycle, target or sent text: written as NULL in the statement rather than bound, since
#: sqlite3 binds a None through its adapter look-up (about 0.7 µs each, three a row).
LOCAL_INSERT_HEAD = 'INSERT INTO history (at, key, "case", outcome, run_id, target, sent)'
LOCAL_ROW_VALUES = "(?, ?, ?, ?, NULL, NULL, NULL)"


# NDJSON records may each carry other columns: the texts kept are bounded, whatever the file.
_KEPT_CARRIED = 256


class LocalSteps:
    """The history rows of a local write (``syncd.local.ingest.write``), one per changed contact.

    Each is the row ``row`` makes for ``{"result": "applied", "source": source, "line": line,
    "carried": carried}`` under case ``local_OUTCOME``, text for text, but built from parts
    made once: a million-row file would otherwise spend more on encoding these than on its
    contacts.
    """

    def __init__(self, source: str) -> None:
        self._source = json.dumps(source, ensure_ascii=False)
        self._carried: dict[tuple[str, ...], str] = {}

    def row(
        self, at: str, key: str, outcome: str, carried: Sequence[str], line: int
    ) -> tuple[str, str, str, str]:
        """at, key, case, outcome: the values of ``LOCAL_ROW_VALUES`` (run_id, target and sent
        are NULL)."""
        names = carried if isinstance(carried, tuple) else tuple(carried)
        said = self._carried.get(names)
        if said is None:
            said = json.dumps(list(names), ensure_ascii=False)
            if len(self._carried) < _KEPT_CARRIED:
                self._carried[names] = said
        # json.dumps(..., sort_keys=True) of the outcome: its keys in that order.
        text = (
            f'{{"carried": {said}, "line": {int(line)}, "result": "applied", '
            f'"source": {self._source}}}'
        )
        return (at, key, f"local_{outcome}", text)


def add(session: Session | Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Add the rows in the caller's transaction, in one executemany through the driver
    (nothing for none): a first push adds one per contact."""
    add_tuples(session, [as_tuple(r) for r in rows])


def as_tuple(r: dict[str, Any]) -> tuple[Any, ...]:
    """A row of ``row`` in the order of ``INSERT_HEAD`` (as ``add_tuples`` takes it)."""
    return (r["at"], r["run_id"], r["target"], r["key"], r["case"], r["sent"], r["outcome"])


def add_tuples(session: Session | Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """``add`` for rows already in the order of ``INSERT_HEAD``."""
    many(session, f"{INSERT_HEAD} VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def last_steps(session: Session, target: str, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The case and outcome (JSON) of each key's latest row on ``target``."""
    found: dict[str, tuple[str, str]] = {}
    for i in range(0, len(keys), 500):
        latest = (
            select(func.max(col(History.id)))
            .where(col(History.target) == target, col(History.key).in_(keys[i : i + 500]))
            .group_by(col(History.key))
        )
        rows = session.execute(
            select(col(History.key), col(History.case), col(History.outcome)).where(
                col(History.id).in_(latest)
            )
        )
        found.update({key: (case, outcome) for key, case, outcome in rows})
    return found


def for_key(session: Session, keys: Sequence[str], target: str | None = None) -> list[Entry]:
    """A contact's history under any of its keys, oldest first: on ``target`` (None: every
    target) and its local writes, which belong to no target."""
    if not keys:
        return []
    stmt = select(History).where(col(History.key).in_(list(keys)))
    if target is not None:
        stmt = stmt.where(or_(col(History.target) == target, col(History.target).is_(None)))
    found = session.execute(stmt.order_by(col(History.id))).scalars()
    return [
        Entry(
            at=h.at,
            cycle=h.run_id,
            target=h.target,
            key=h.key,
            case=h.case,
            sent=None if h.sent is None else json.loads(h.sent),
            outcome=json.loads(h.outcome),
        )
        for h in found
    ]


def count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(History)).scalar_one())


def prune(engine: Engine, keep: timedelta, now: datetime | None = None) -> int:
    """Drop the rows older than ``keep``; returns how many went."""
    cutoff = (now or datetime.now(UTC)) - keep
    edge = cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with Session(engine) as session:
        result = session.execute(delete(History).where(col(History.at) < edge))
        session.commit()
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
