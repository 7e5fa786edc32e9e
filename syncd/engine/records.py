"""What the store keeps about a target besides its base: conflicts, rejections and runs.

- A **conflict** held under ``conflict = "manual"`` (or a first meeting held under
  ``first_sync = "manual"``) waits in the ``conflict`` table until ``syncd resolve`` writes a
  resolution there, for the contact or per field; the next cycle reads it (``resolutions``) and
  carries it out. A key that no longer differs, or was decided without holding, drops its row.
- A **rejection** is a row the provider refused (written where the answer is read,
  ``syncd.engine.push``); a permanent one waits until the local record changes. Read once per
  cycle (``rejections``), dropped once its key settles.
- A **run** record is opened before a cycle and closed after it with the outcome and summary
  (``syncd status``, ``syncd runs``, the daemon's metrics). A dry run leaves none.
- A **step** is one key's line of history (``syncd.store.history``): the case that applied and
  what came of it. ``step`` builds it; the chunk (``syncd.engine.chunk``) and the push
  (``syncd.engine.push``) add their steps with their own writes, so only keys that differed get
  one, and a dry run none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from syncd.clock import stamp
from syncd.core.projection import Projection
from syncd.core.reconcile import Decision, FieldConflict, Takes
from syncd.engine.result import CycleResult
from syncd.store import history, mirror
from syncd.store.models import Conflict, Rejection, Run

# -- conflicts and rejections -------------------------------------------------------------


def resolutions(session: Session, target: str) -> dict[str, Takes]:
    """The sides a person chose: for the whole contact (``resolution``), else per field (a
    ``take`` in a field's entry, written by ``syncd resolve --field``)."""
    rows = session.execute(
        select(col(Conflict.key), col(Conflict.resolution), col(Conflict.fields)).where(
            col(Conflict.target) == target,
            or_(col(Conflict.resolution).is_not(None), col(Conflict.fields).contains('"take"')),
        )
    )
    found: dict[str, Takes] = {}
    for key, resolution, fields in rows:
        if resolution in ("local", "remote"):
            found[key] = resolution
            continue
        per_field = {
            f["field"]: f["take"]
            for f in json.loads(fields)
            if f.get("take") in ("local", "remote")
        }
        if per_field:
            found[key] = per_field
    return found


def rejections(session: Session, target: str) -> dict[str, Rejection]:
    rows = session.execute(select(Rejection).where(col(Rejection.target) == target)).scalars()
    return {r.key: r for r in rows}


def record_conflict(
    session: Session, target: str, d: Decision, row: mirror.DiffRow, take: Takes | None = None
) -> None:
    """Hold the key's conflict; the sides already chosen for some of its fields stay."""
    chosen = take if isinstance(take, Mapping) else {}
    session.merge(
        Conflict(
            target=target,
            key=d.key,
            fields=json.dumps([_conflict_dict(c, chosen.get(c.field)) for c in d.conflicts]),
            local=row.local.to_json() if row.local else None,
            remote=row.remote.to_json() if row.remote else None,
            base=row.base.to_json() if row.base else None,
            resolution=None,
            at=stamp(),
        )
    )


def clear_conflicts(session: Session, target: str, keys: list[str]) -> None:
    mirror.drop_keys(session, "conflict", target, keys)


def forget_stale(
    session: Session,
    target: str,
    rejections: dict[str, Rejection],
    held_keys: set[str],
    among: set[str] | None = None,
) -> None:
    """Rejections and conflicts whose key no longer differs have settled by themselves
    (``among``: only these keys were looked at; None: all)."""
    stale = [k for k in rejections if k not in held_keys and (among is None or k in among)]
    mirror.drop_rejections(session, target, stale)
    open_keys = session.execute(
        select(col(Conflict.key)).where(col(Conflict.target) == target)
    ).scalars()
    clear_conflicts(
        session,
        target,
        [k for k in open_keys if k not in held_keys and (among is None or k in among)],
    )


def _conflict_dict(c: FieldConflict, take: str | None = None) -> dict[str, str | None]:
    entry = {"field": c.field, "local": c.local, "remote": c.remote, "base": c.base}
    if take is not None:
        entry["take"] = take
    return entry


# -- history ------------------------------------------------------------------------------


def step(
    run_id: int | None,
    target: str,
    d: Decision,
    result: str,
    *,
    sent: dict[str, Any] | None = None,
    at: str | None = None,
    **said: Any,
) -> dict[str, Any]:
    """One key's history row: ``result`` (confirmed, rejected, held, applied, settled,
    deferred, awaiting, not_sent) and what explains it (``reason``, ``code``, ``message``),
    the conflicts met and which side each took; for a write to the mirror, what it changed
    (``changed``) and the outbox event it recorded (``event``). ``at``: when (None: now; the
    rows of one answer share its time)."""
    outcome: dict[str, Any] = {"result": result}
    outcome.update({k: v for k, v in said.items() if v is not None})
    if d.local_op is not None:
        outcome["local"] = d.local_op  # the mirror was written: upsert or remove
    if d.conflicts:
        outcome["conflicts"] = [_settled(c, d) for c in d.conflicts]
    return history.row(run_id, target, d.key, d.case, outcome, sent, at)


def changes(before: Projection | None, after: Projection | None) -> dict[str, list[Any]]:
    """What a write to the mirror changed: each field, ``tags``, ``status`` and
    ``list_status`` whose value differs, as ``[before, after]`` (null: not set)."""
    old = {} if before is None else before.field_map
    new = {} if after is None else after.field_map
    found: dict[str, list[Any]] = {
        name: [old.get(name), new.get(name)]
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    }
    for name in ("tags", "status", "list_status"):
        was = None if before is None else getattr(before, name)
        now = None if after is None else getattr(after, name)
        if was != now:
            found[name] = [sorted(v) if isinstance(v, frozenset) else v for v in (was, now)]
    return found


def _settled(c: FieldConflict, d: Decision) -> dict[str, str | None]:
    """A field changed on both sides, and the side it took (``held``: waits for a person)."""
    entry = _conflict_dict(c)
    if d.held:
        entry["took"] = "held"
        return entry
    after = d.base if d.base is not None else d.remote_row or d.local_row
    value = after.field_map.get(c.field) if after is not None else None
    entry["took"] = "local" if value == c.local else "remote" if value == c.remote else "merged"
    return entry


# -- runs ---------------------------------------------------------------------------------


def _now_ms() -> str:
    """Run records to the millisecond: cycles a second apart must still be told apart."""
    return history.now_ms()


def record_start(db: Engine, target: str, holder: str | None) -> int:
    with Session(db) as session:
        run = Run(target=target, started_at=_now_ms(), holder=holder)
        session.add(run)
        session.commit()
        assert run.id is not None
        return run.id


def record_end(db: Engine, run_id: int, result: CycleResult) -> None:
    with Session(db) as session:
        run = session.get(Run, run_id)
        if run is None:
            return
        run.finished_at = _now_ms()
        run.outcome = result.outcome
        run.summary = json.dumps(result.summary())
        run.message = result.message
        session.commit()
