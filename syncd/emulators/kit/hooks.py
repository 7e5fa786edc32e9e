"""Event notifications an emulated provider POSTs to a client's URL, as the real ones do.

A ``HookSender`` delivers JSON bodies from a background thread, one queue per sender: an answer
of HTTP 200 within ``timeout`` is a delivery; anything else is tried again every
``retry_interval`` seconds with a ``retry_count`` that grows by one, until ``give_up_after``
seconds have passed since the first attempt, when the hook is ``stopped`` and later events for
it are kept back. Switches make the network's faults happen on purpose: ``drop_rate`` loses a
delivery without a trace (the provider believes it sent it), ``duplicate_rate`` sends one twice.

Each provider sets the policy its documents give (Unisender: 3 s, every 10 minutes for 24 h);
tests shorten the intervals. Only loopback URLs are reached in tests; the sender itself does not
check, like the provider it stands for.
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class HookPolicy:
    timeout: float = 3.0  # seconds the handler has to answer 200
    retry_interval: float = 600.0  # seconds between attempts
    give_up_after: float = 86_400.0  # seconds after the first attempt: the hook is stopped
    drop_rate: float = 0.0  # share of deliveries lost on the way, silently
    duplicate_rate: float = 0.0  # share of deliveries sent twice
    seed: int | None = None

    def update(self, changes: dict[str, Any]) -> None:
        """Change settings by name (an admin route's JSON body)."""
        for name, value in changes.items():
            if name not in self.__dataclass_fields__ or name == "seed":
                raise ValueError(f"unknown hook setting {name!r}")
            setattr(self, name, float(value))


@dataclass
class Delivery:
    """One body for one hook URL, and how its attempts went."""

    url: str
    body: dict[str, Any]
    first_at: float = 0.0
    attempts: int = 0
    answers: list[int] = field(default_factory=list)  # HTTP status per attempt (0: no answer)
    outcome: str = "pending"  # pending | delivered | dropped | given_up


class HookSender:
    """Delivers bodies to hook URLs in the background, with the provider's retry policy.

    ``on_stopped(url)`` is called (under no lock) when a hook's deliveries are given up;
    ``query(delivery)`` names extra query parameters of an attempt (``retry_count``).
    """

    def __init__(
        self,
        policy: HookPolicy | None = None,
        *,
        on_stopped: Callable[[str], None] | None = None,
        query: Callable[[Delivery], dict[str, str]] | None = None,
        sign: Callable[[dict[str, Any]], bytes] | None = None,
    ) -> None:
        self.policy = policy or HookPolicy()
        self._on_stopped = on_stopped
        self._query = query
        self._sign = sign
        self._rng = random.Random(self.policy.seed)
        self._queue: queue.Queue[Delivery] = queue.Queue()
        self._lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self._thread: threading.Thread | None = None  # started by the first delivery

    def send(self, url: str, body: dict[str, Any]) -> Delivery:
        delivery = Delivery(url, body, first_at=time.monotonic())
        with self._lock:
            self.deliveries.append(delivery)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="emulator-hooks", daemon=True
                )
                self._thread.start()
        self._queue.put(delivery)
        return delivery

    def summary(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "url": d.url,
                    "outcome": d.outcome,
                    "attempts": d.attempts,
                    "answers": list(d.answers),
                    "body": d.body,
                }
                for d in self.deliveries
            ]

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once no delivery is pending (for tests)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if all(d.outcome != "pending" for d in self.deliveries):
                    return True
            time.sleep(0.01)
        return False

    # ---- the background thread

    def _run(self) -> None:
        waiting: list[tuple[float, Delivery]] = []
        while True:
            soonest = min((at for at, _ in waiting), default=None)
            timeout = None if soonest is None else max(0.0, soonest - time.monotonic())
            with contextlib.suppress(queue.Empty):
                waiting.append((time.monotonic(), self._queue.get(timeout=timeout)))
            now = time.monotonic()
            due = [d for at, d in waiting if at <= now]
            waiting = [(at, d) for at, d in waiting if at > now]
            for delivery in due:
                again = self._attempt(delivery)
                if again:
                    waiting.append((time.monotonic() + self.policy.retry_interval, delivery))

    def _attempt(self, delivery: Delivery) -> bool:
        """One attempt; True when another is due."""
        policy = self.policy
        if delivery.attempts == 0 and self._rng.random() < policy.drop_rate:
            self._finish(delivery, "dropped")
            return False
        copies = 2 if delivery.attempts == 0 and self._rng.random() < policy.duplicate_rate else 1
        status = 0
        for _ in range(copies):
            status = self._post(delivery)
        with self._lock:
            delivery.attempts += 1
            delivery.answers.append(status)
        if status == 200:
            self._finish(delivery, "delivered")
            return False
        if time.monotonic() - delivery.first_at + policy.retry_interval > policy.give_up_after:
            self._finish(delivery, "given_up")
            if self._on_stopped is not None:
                self._on_stopped(delivery.url)
            return False
        return True

    def _post(self, delivery: Delivery) -> int:
        params = self._query(delivery) if self._query is not None else {}
        content = self._sign(delivery.body) if self._sign is not None else None
        try:
            response = httpx.post(
                delivery.url,
                params=params,
                content=content,
                json=None if content is not None else delivery.body,
                headers={"content-type": "application/json"},
                timeout=self.policy.timeout,
            )
        except httpx.HTTPError:
            return 0
        return response.status_code

    def _finish(self, delivery: Delivery, outcome: str) -> None:
        with self._lock:
            delivery.outcome = outcome
