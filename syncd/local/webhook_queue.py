"""The webhook queue: each change event, once per matching ``[[webhook]]``, kept until delivered.

:func:`enqueue` adds one ``webhook_delivery`` row per matching webhook to the session that
records the event in the outbox (``syncd.local.outbox.recorder``), so the mirror change, its
outbox row and its deliveries commit together or not at all: nothing is lost to a crash, and
the outbox files keep working as before (their flush deletes ``outbox_event`` rows, never these).

A row is pending until a 2xx answer deletes it, or dead (dead-letter, kept for ``syncd status``
and ``syncd webhooks replay``) once its ``max_age`` is over. Taking work:

- **Ordered per contact.** A row is due only when no earlier pending row of the same webhook,
  target and key exists, so one contact's events reach an endpoint in the order recorded (a
  failing event holds its contact's later ones back; other contacts go on).
- **Once across replicas.** :func:`claim` marks the rows it takes with the process and a time
  limit (the send's timeout and a margin) in one short transaction: on PostgreSQL the rows are
  read ``FOR UPDATE SKIP LOCKED``, so two replicas never take the same row; on SQLite the
  transaction begins with a write, which takes the store's single write lock first. A process
  that dies holding rows loses them when the limit passes, and another sends them again (at
  least once). No transaction stays open while a request is in flight.

Sending, signing and the retry schedule are ``syncd.local.webhook_send``'s.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, exists, func, or_, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from syncd.config import WebhookConfig, WebhookEvent
from syncd.local.change_event import ChangeEvent, Kind
from syncd.store.models import WebhookDelivery, WebhookEndpoint

#: A change event's kind -> the webhook event type it is sent as (every kind has one:
#: ``tests/local/test_webhooks.py``). A block is an opt-out the
#: company must honour like an unsubscribe; a resubscribe is an edit (consent only ever moves
#: towards opted-out automatically, so it is never sent as a sign-up).
EVENT_TYPES: dict[Kind, WebhookEvent] = {
    "signup": "contact.created",
    "update": "contact.updated",
    "resubscribe": "contact.updated",
    "unsubscribe": "contact.unsubscribed",
    "block": "contact.unsubscribed",
    # leaving one list is an opt-out too (the event's ``list`` and ``list_status`` say which)
    "list_unsubscribe": "contact.unsubscribed",
    "list_resubscribe": "contact.updated",
    "delete": "contact.deleted",
}

#: Seconds a claim outlives the send's own timeout: the answer's handling and a slow commit.
CLAIM_MARGIN = 5.0
_ERROR_CHARS = 300  # what status keeps of an attempt's failure


@dataclass(frozen=True, slots=True)
class Claimed:
    """A pending delivery this process has taken and now sends."""

    id: int
    webhook: str
    event_id: str
    body: str
    attempts: int  # earlier attempts
    created_at: float


def enqueue(
    session: Session,
    event: ChangeEvent,
    webhooks: Iterable[WebhookConfig],
    now: float | None = None,
) -> int:
    """Queue ``event`` for each webhook that takes its type; returns how many rows were added."""
    event_type = EVENT_TYPES[event.kind]
    at = time.time() if now is None else now
    body = event.model_dump_json()
    added = 0
    for webhook in webhooks:
        if event_type not in webhook.events:
            continue
        session.add(
            WebhookDelivery(
                webhook=webhook.name,
                event_id=event.id,
                event_type=event_type,
                target=event.target,
                key=event.key,
                body=body,
                created_at=at,
                next_attempt_at=at,
            )
        )
        added += 1
    return added


def claim(
    engine: Engine,
    holder: str,
    webhooks: Sequence[WebhookConfig],
    *,
    now: float | None = None,
    limit: int = 50,
) -> list[Claimed]:
    """Take up to ``limit`` due rows of these webhooks for ``holder`` (see the module docstring)."""
    if not webhooks:
        return []
    at = time.time() if now is None else now
    hold = {w.name: w.timeout + CLAIM_MARGIN for w in webhooks}
    d = aliased(WebhookDelivery)
    e = aliased(WebhookDelivery)
    earlier = exists().where(
        col(e.webhook) == d.webhook,
        col(e.target) == d.target,
        col(e.key) == d.key,
        col(e.state) == "pending",
        col(e.id) < col(d.id),
    )
    query = (
        select(d)
        .where(
            col(d.state) == "pending",
            col(d.next_attempt_at) <= at,
            or_(col(d.claimed_until).is_(None), col(d.claimed_until) < at),
            col(d.webhook).in_(sorted(hold)),
            ~earlier,
        )
        .order_by(col(d.id))
        .limit(limit)
        .with_for_update(skip_locked=True, of=d)
    )
    with Session(engine) as session:
        due = select(col(d.id)).where(
            col(d.state) == "pending",
            col(d.next_attempt_at) <= at,
            col(d.webhook).in_(sorted(hold)),
        )
        if session.execute(due.limit(1)).first() is None:
            return []  # the everyday case: one indexed read, no write lock
    with Session(engine) as session:
        if engine.dialect.name == "sqlite":
            # a write first: the transaction holds SQLite's one write lock before it reads
            session.execute(text("UPDATE webhook_delivery SET id = id WHERE 0 = 1"))
        rows = list(session.execute(query).scalars())
        taken = [
            Claimed(r.id, r.webhook, r.event_id, r.body, r.attempts, r.created_at)
            for r in rows
            if r.id is not None
        ]
        for name in {c.webhook for c in taken}:
            ids = [c.id for c in taken if c.webhook == name]
            session.execute(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id).in_(ids))
                .values(claimed_by=holder, claimed_until=at + hold[name])
            )
        session.commit()
    return taken


def confirm(engine: Engine, item: Claimed) -> None:
    """A 2xx answer: the delivery is done and its row goes."""
    with Session(engine) as session:
        session.execute(delete(WebhookDelivery).where(col(WebhookDelivery.id) == item.id))
        session.commit()


def retry(engine: Engine, item: Claimed, holder: str, error: str, at: float) -> None:
    """A failed attempt: due again at ``at`` (the claim is released)."""
    _after_failure(engine, item, holder, error, next_attempt_at=at, dead=False)


def bury(engine: Engine, item: Claimed, holder: str, error: str, now: float | None = None) -> None:
    """A failed attempt past ``max_age``: the row stays, dead, until replayed."""
    at = time.time() if now is None else now
    _after_failure(engine, item, holder, error, next_attempt_at=at, dead=True)


def _after_failure(
    engine: Engine, item: Claimed, holder: str, error: str, *, next_attempt_at: float, dead: bool
) -> None:
    values: dict[str, Any] = {
        "attempts": item.attempts + 1,
        "last_error": error[:_ERROR_CHARS],
        "next_attempt_at": next_attempt_at,
        "claimed_by": None,
        "claimed_until": None,
    }
    if dead:
        values |= {"state": "dead", "dead_at": next_attempt_at}
    with Session(engine) as session:
        # only while the claim is still ours: after it lapsed another process owns the row
        session.execute(
            update(WebhookDelivery)
            .where(
                col(WebhookDelivery.id) == item.id,
                col(WebhookDelivery.claimed_by) == holder,
            )
            .values(**values)
        )
        session.commit()


def disable(engine: Engine, webhook: WebhookConfig, reason: str, now: float | None = None) -> int:
    """410 Gone: the endpoint is off at this URL and its pending rows are dead-lettered.

    Returns how many rows died. Replaying them (or changing the URL) turns it back on.
    """
    at = time.time() if now is None else now
    with Session(engine) as session:
        session.execute(delete(WebhookEndpoint).where(col(WebhookEndpoint.name) == webhook.name))
        session.commit()
    try:
        with Session(engine) as session:
            session.add(
                WebhookEndpoint(name=webhook.name, url=webhook.url, disabled_at=at, reason=reason)
            )
            session.commit()
    except IntegrityError:
        pass  # another send of the same pass (or replica) saw the 410 too and said so first
    with Session(engine) as session:
        died = session.execute(
            update(WebhookDelivery)
            .where(
                col(WebhookDelivery.webhook) == webhook.name,
                col(WebhookDelivery.state) == "pending",
            )
            .values(
                state="dead",
                dead_at=at,
                last_error=reason[:_ERROR_CHARS],
                claimed_by=None,
                claimed_until=None,
            )
        )
        session.commit()
    return int(getattr(died, "rowcount", 0) or 0)


def bury_pending(engine: Engine, reasons: dict[str, str], now: float | None = None) -> int:
    """Dead-letter the pending rows of these webhooks (name -> why); writes only if any."""
    at = time.time() if now is None else now
    w = WebhookDelivery
    mine = (col(w.state) == "pending", col(w.webhook).in_(sorted(reasons)))
    died = 0
    with Session(engine) as session:
        names = set(session.execute(select(col(w.webhook)).where(*mine).distinct()).scalars())
        for name in sorted(names):
            result = session.execute(
                update(w)
                .where(col(w.state) == "pending", col(w.webhook) == name)
                .values(state="dead", dead_at=at, last_error=reasons[name][:_ERROR_CHARS])
            )
            died += int(getattr(result, "rowcount", 0) or 0)
        session.commit()
    return died


def disabled(engine: Engine, webhooks: Sequence[WebhookConfig]) -> dict[str, str]:
    """The webhooks among these that a 410 turned off at their current URL: name -> reason."""
    urls = {w.name: w.url for w in webhooks}
    with Session(engine) as session:
        rows = session.execute(select(WebhookEndpoint)).scalars()
        return {r.name: r.reason for r in rows if urls.get(r.name) == r.url}


def replay(
    engine: Engine,
    *,
    since: float | None = None,
    event_id: str | None = None,
    now: float | None = None,
) -> int:
    """Send dead-lettered rows again (those dead since ``since``, or of one event).

    They start over: due now, attempts and ``max_age`` counted from now. Their endpoints are
    turned back on. Returns how many rows were revived.
    """
    at = time.time() if now is None else now
    where = [col(WebhookDelivery.state) == "dead"]
    if since is not None:
        where.append(col(WebhookDelivery.dead_at) >= since)
    if event_id is not None:
        where.append(col(WebhookDelivery.event_id) == event_id)
    with Session(engine) as session:
        names = set(session.execute(select(col(WebhookDelivery.webhook)).where(*where)).scalars())
        revived = session.execute(
            update(WebhookDelivery)
            .where(*where)
            .values(
                state="pending",
                attempts=0,
                created_at=at,
                next_attempt_at=at,
                dead_at=None,
                claimed_by=None,
                claimed_until=None,
            )
        )
        if names:
            session.execute(
                delete(WebhookEndpoint).where(col(WebhookEndpoint.name).in_(sorted(names)))
            )
        session.commit()
    return int(getattr(revived, "rowcount", 0) or 0)


@dataclass(frozen=True, slots=True)
class QueueState:
    """What ``syncd status`` and ``/metrics`` show of the queue."""

    pending: dict[str, int]  # webhook -> rows not delivered yet
    dead: dict[str, int]  # webhook -> dead-lettered rows
    oldest_pending: float | None  # unix time the oldest undelivered event was recorded

    def to_dict(self) -> dict[str, Any]:
        return {"pending": self.pending, "dead": self.dead, "oldest_pending": self.oldest_pending}


def queue_state(engine: Engine) -> QueueState:
    w = WebhookDelivery
    with Session(engine) as session:
        counts = session.execute(
            select(col(w.webhook), col(w.state), func.count()).group_by(
                col(w.webhook), col(w.state)
            )
        ).all()
        oldest = session.execute(
            select(func.min(col(w.created_at))).where(col(w.state) == "pending")
        ).scalar_one()
    pending = {name: n for name, st, n in counts if st == "pending"}
    dead = {name: n for name, st, n in counts if st == "dead"}
    return QueueState(pending, dead, None if oldest is None else float(oldest))


def dead_letters(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """The most recently dead-lettered rows, newest first."""
    w = WebhookDelivery
    with Session(engine) as session:
        rows = session.execute(
            select(w).where(col(w.state) == "dead").order_by(col(w.dead_at).desc()).limit(limit)
        ).scalars()
        return [
            {
                "webhook": r.webhook,
                "event": r.event_id,
                "type": r.event_type,
                "target": r.target,
                "key": r.key,
                "attempts": r.attempts,
                "dead_at": r.dead_at,
                "last_error": r.last_error,
            }
            for r in rows
        ]
