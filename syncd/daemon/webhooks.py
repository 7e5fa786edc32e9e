"""The daemon's webhook sender: a thread that delivers what the queue holds, as it becomes due.

It wakes when a cycle has recorded events (``wake``) and otherwise looks every ``POLL`` seconds,
which covers retries coming due and events another replica recorded. Each pass claims, sends
and records through ``syncd.local.webhook_send.Sender``; what each attempt came to and the age
of the oldest undelivered event go to ``/metrics``. A pass that fails (the store is away) is
logged and tried again on the next one: the rows are still in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from syncd.config import Config
from syncd.local import webhook_queue
from syncd.local.webhook_send import Sender
from syncd.metrics import Metrics

log = logging.getLogger("syncd.webhooks")

POLL = 1.0  # seconds between looks when nothing woke the sender


class Deliverer:
    def __init__(
        self, engine: Engine, holder: str, config: Callable[[], Config], metrics: Metrics
    ) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.sender = Sender(engine, holder, observe=metrics.observe_webhook)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="syncd-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """No new pass; the sends in flight finish (each bounded by its webhook's timeout)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.sender.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            busy = False
            hooks = self.config().webhook
            if hooks:
                try:
                    busy = sum(self.sender.deliver_due(hooks).values()) > 0
                    self._measure()
                except Exception:
                    log.exception("webhooks: a delivery pass failed; the next one retries")
            if not busy:
                self._wake.wait(POLL)

    def _measure(self) -> None:
        state = webhook_queue.queue_state(self.engine)
        oldest = 0.0 if state.oldest_pending is None else time.time() - state.oldest_pending
        self.metrics.set_webhook_queue(max(0.0, oldest), state.dead)
