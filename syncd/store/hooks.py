"""Provider webhooks in the store: each target's path token and the queue of keys they named.

A target's token (``token_for``) is made once with ``secrets.token_urlsafe`` and kept: the
provider was given the URL that holds it, so it changes only when ``forget_token`` drops it (and
the hook is installed again). The queue (``enqueue``) holds one row per (target, key, kind): a
webhook delivered twice, or two events about one contact, queue it once. ``take`` claims rows by
deleting them in the transaction that reads them, so an event arriving while its key is being
re-read queues it again rather than folding into a read that may already be past it; a claim
whose work failed goes back with ``enqueue``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from syncd.store.mirror import _insert
from syncd.store.models import HookQueue, HookToken

#: Kinds of queued work: re-read the contact, or take the provider's word that it opted out.
REREAD = "reread"
OPT_OUT = "opt_out"
KINDS = (REREAD, OPT_OUT)


def token_for(engine: Engine, target: str) -> str:
    """The target's token, made on first use (by whichever replica asks first)."""
    with Session(engine) as session:
        stmt = _insert(session, _table(HookToken)).on_conflict_do_nothing()
        session.execute(
            stmt,
            [{"target": target, "token": secrets.token_urlsafe(32), "created_at": time.time()}],
        )
        session.commit()
        found = session.scalars(select(col(HookToken.token)).where(col(HookToken.target) == target))
        return str(found.one())


def known_token(engine: Engine, target: str) -> str | None:
    """The target's token if one was made (the webhook route never makes one)."""
    with Session(engine) as session:
        found = session.scalars(
            select(col(HookToken.token)).where(col(HookToken.target) == target)
        ).first()
        return None if found is None else str(found)


def forget_token(engine: Engine, target: str) -> None:
    with Session(engine) as session:
        session.execute(delete(HookToken).where(col(HookToken.target) == target))
        session.commit()


def enqueue(engine: Engine, target: str, keys: Sequence[str], kind: str) -> int:
    """Queue each key once; returns how many were not queued already."""
    if kind not in KINDS:
        raise ValueError(f"unknown hook work {kind!r}")
    rows = [
        {"target": target, "key": k, "kind": kind, "queued_at": time.time()}
        for k in dict.fromkeys(keys)
    ]
    if not rows:
        return 0
    with Session(engine) as session:
        table = _table(HookQueue)
        stmt = _insert(session, table).on_conflict_do_nothing().returning(table.c.id)
        added = 0
        for row in rows:  # a row returned: inserted (rowcount is not reliable on every driver)
            added += len(session.execute(stmt, row).all())
        session.commit()
        return int(added)


def waiting(engine: Engine) -> dict[str, int]:
    """Queued keys per target."""
    with Session(engine) as session:
        rows = session.execute(
            select(col(HookQueue.target), func.count()).group_by(col(HookQueue.target))
        ).all()
        return {str(target): int(n) for target, n in rows}


def take(engine: Engine, target: str, limit: int = 500) -> list[tuple[str, str]]:
    """Claim up to ``limit`` queued (key, kind) of the target, oldest first."""
    with Session(engine) as session:
        found = session.execute(
            select(col(HookQueue.id), col(HookQueue.key), col(HookQueue.kind))
            .where(col(HookQueue.target) == target)
            .order_by(col(HookQueue.id))
            .limit(limit)
        ).all()
        if found:
            session.execute(delete(HookQueue).where(col(HookQueue.id).in_([r[0] for r in found])))
        session.commit()
        return [(str(key), str(kind)) for _, key, kind in found]


def _table(model: Any) -> Any:
    return model.__table__
