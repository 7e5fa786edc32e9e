"""Sending queued change events to the ``[[webhook]]`` endpoints, signed (Standard Webhooks).

Each attempt POSTs the change event (``schemas/change-event.schema.json``) exactly as recorded,
with the headers of the Standard Webhooks specification (https://www.standardwebhooks.com/):

- ``webhook-id``: the event's id, the same on every attempt, so the consumer drops duplicates;
- ``webhook-timestamp``: the attempt's unix time in seconds;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the
  base64-decoded secret (after ``whsec_``), one per configured secret, separated by spaces, so a
  consumer holding either the new or the old secret accepts it during a rotation.

The answer decides (:func:`deliver_due`): a 2xx within ``timeout`` confirms and the row goes;
410 Gone turns the endpoint off (``webhook_queue.disable``); anything else (another status, a
redirect, a timeout, a refused connection) is retried after :func:`backoff`, exponential with
jitter, until ``max_age`` after the event was recorded, and then dead-lettered. Signing uses
``hmac`` and ``hashlib`` only; the tests check it with the ``standardwebhooks`` package.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy.engine import Engine

from syncd import __version__
from syncd.config import WebhookConfig
from syncd.local import webhook_queue
from syncd.local.webhook_queue import Claimed

log = logging.getLogger(__name__)

#: Deliveries sent at once by one process: they are always of different contacts.
PARALLEL = 8
OUTCOMES = ("delivered", "retried", "dead", "gone")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``msg_id.timestamp.body`` with a ``whsec_`` secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The request headers of one attempt, signed with every secret given."""
    return {
        "content-type": "application/json",
        "user-agent": f"syncd/{__version__}",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }


def backoff(
    attempts: int, first: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after the ``attempts``-th failure: ``first`` doubled each time, at most
    ``cap``, then jittered down to between half and all of it, so endpoints coming back are
    not met by every event at the same instant."""
    ceiling = min(cap, first * 2.0 ** max(0, attempts - 1))
    return ceiling * (0.5 + 0.5 * rand())


def attempt(
    client: httpx.Client, webhook: WebhookConfig, item: Claimed, now: float
) -> tuple[int | None, str]:
    """POST once: (the answer's status, or None when there was no answer; a short reason)."""
    body = item.body.encode()
    try:
        answer = client.post(
            webhook.url,
            content=body,
            headers=headers(webhook.secrets(), item.event_id, int(now), body),
            timeout=webhook.timeout,
        )
    except httpx.TimeoutException:
        return None, f"no answer within {webhook.timeout:g} s"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return answer.status_code, f"HTTP {answer.status_code}"


class Sender:
    """Delivers what is due, for every configured webhook, as one process (``holder``)."""

    def __init__(
        self,
        engine: Engine,
        holder: str,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.holder = holder
        self.clock = clock
        self.observe = observe or (lambda _webhook, _outcome: None)
        # no redirects: a 3xx is not a confirmation, and following one could carry the
        # signed body somewhere the configuration never named
        self.client = httpx.Client(transport=transport, follow_redirects=False)
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="syncd-webhook")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def deliver_due(self, webhooks: Sequence[WebhookConfig], limit: int = 50) -> Counter[str]:
        """One pass: claim what is due, send it, record each answer; counts by outcome."""
        off = webhook_queue.disabled(self.engine, webhooks)
        if off:  # events recorded since the 410 go straight to the dead letters
            webhook_queue.bury_pending(self.engine, off, now=self.clock())
        live = [w for w in webhooks if w.name not in off]
        taken = webhook_queue.claim(self.engine, self.holder, live, now=self.clock(), limit=limit)
        by_name = {w.name: w for w in live}
        return Counter(self._pool.map(lambda c: self._one(by_name[c.webhook], c), taken))

    def _one(self, webhook: WebhookConfig, item: Claimed) -> str:
        now = self.clock()
        status, reason = attempt(self.client, webhook, item, now)
        outcome = self._record(webhook, item, status, reason)
        self.observe(webhook.name, outcome)
        level = logging.DEBUG if outcome == "delivered" else logging.WARNING
        log.log(
            level,
            "webhook %s: event %s %s (%s)",
            webhook.name,
            item.event_id,
            outcome,
            reason,
            extra={"webhook": webhook.name, "event": item.event_id, "attempt": item.attempts + 1},
        )
        return outcome

    def _record(
        self, webhook: WebhookConfig, item: Claimed, status: int | None, reason: str
    ) -> str:
        now = self.clock()
        if status is not None and 200 <= status < 300:
            webhook_queue.confirm(self.engine, item)
            return "delivered"
        if status == 410:
            webhook_queue.disable(
                self.engine, webhook, f"endpoint answered 410 Gone: {reason}", now
            )
            return "gone"
        wait = backoff(item.attempts + 1, webhook.backoff_first, webhook.backoff_max)
        if now + wait - item.created_at > webhook.max_age_seconds:
            webhook_queue.bury(
                self.engine, item, self.holder, f"gave up after max_age: {reason}", now
            )
            return "dead"
        webhook_queue.retry(self.engine, item, self.holder, reason, now + wait)
        return "retried"
