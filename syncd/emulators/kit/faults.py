"""The fault switches every emulator shares: which calls fail, how, and how often.

``Faults`` holds the switches and rolls them per call (``draw``); the emulator says how its provider
words an injected error code (a ``FaultAnswer``), so one set of switches serves every wire format.
``fault_means_later`` tells the emulators which injected codes stand for a rate limit.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import httpx

from syncd.emulators.kit.server import DropConnection

FaultAnswer = Callable[[str, dict[str, str] | None], httpx.Response]
"""The provider's own answer for an injected error code, given the ``Retry-After`` headers."""

_LATER_CODES = frozenset({"retry_later"})  # plus every code that names a limit


def fault_means_later(code: str) -> bool:
    """Whether an injected error code stands for "come back later" (a rate limit)."""
    return code in _LATER_CODES or "limit" in code


@dataclass
class Faults:
    """Injected failures. ``methods`` names the API methods they hit (empty: all); async ones are
    named ``async/exportContacts``, ``async/getTaskResult`` (their bare name matches too), and the
    export file's download ``download`` (drops, hangs and 5xx only: a file has no envelope).
    ``export_never_completes``, ``export_truncate`` and ``export_cut_rows`` apply to exports
    regardless of ``methods``; ``export_cut_rows`` ends the export file after that many data
    rows, at a line break, with no error: a silently short export, valid to the last byte.
    A timeout hangs ``hang_seconds`` and then answers (the call IS applied).

    Two faults concern the rows of an import rather than the call (the importer reads them):
    ``row_reject_rate`` refuses that share of rows in the answer's ``log`` with
    ``row_reject_code`` (the rest of the call applies, §1.4); ``refuse_rate`` picks that share of
    contact keys (fixed per key and ``seed``, so a retry or a smaller batch meets the same key
    again) whose presence makes the provider refuse the whole call with an untyped error naming
    the row, as it does for "Contacts X and Y already exist but owned by different subscribers"
    (§1.2). ``injected`` counts every fault served, by kind, for reports.
    ``answer_delay`` (Unisender/Selzy): the call is applied at once and its answer held that
    long, so a client that dies meanwhile has written without knowing it."""

    latency: float = 0.0
    answer_delay: float = 0.0
    http_5xx_rate: float = 0.0
    http_5xx_status: int = 503
    timeout_rate: float = 0.0
    hang_seconds: float = 60.0
    drop_rate: float = 0.0
    error_code_rate: float = 0.0
    error_code: str = "retry_later"  # item 7: any documented code
    retry_after: str | None = None
    export_never_completes: bool = False
    export_truncate: bool = False
    export_cut_rows: int | None = None
    # Error answers quote the request they refuse, body (and so the API key) included, as
    # some servers do: what a client logs of a provider's message must be scrubbed.
    echo_request: bool = False
    row_reject_rate: float = 0.0
    row_reject_code: str = "retry_later"
    refuse_rate: float = 0.0
    methods: set[str] = field(default_factory=set)
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False, compare=False)
    injected: Counter[str] = field(init=False, default_factory=Counter, compare=False)

    def __post_init__(self) -> None:
        self.methods = set(self.methods)
        self.rng = random.Random(self.seed)

    def hits(self, method: str) -> bool:
        return not self.methods or bool({method, method.removeprefix("async/")} & self.methods)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def count(self, kind: str) -> None:
        self.injected[kind] += 1

    def refuses(self, key: str) -> bool:
        """Whether ``refuse_rate`` picked this contact key (the same answer on every call)."""
        if self.refuse_rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.refuse_rate

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return data | {"methods": sorted(self.methods)}

    def draw(self, method: str, answer: FaultAnswer | None) -> Callable[[], httpx.Response | None]:
        """Roll this call's faults now (under the emulator's lock). The returned step, run outside
        it, sleeps, drops the connection or answers the injected failure; None: serve the call.
        ``answer`` words an injected error code as the provider does; None (a file download): no
        API error code, only HTTP-level faults."""
        hit = self.hits(method)
        drop = hit and self.roll(self.drop_rate)
        hang = hit and self.roll(self.timeout_rate)
        http5xx = hit and self.roll(self.http_5xx_rate)
        errored = hit and answer is not None and self.roll(self.error_code_rate)
        retry = {"Retry-After": self.retry_after} if self.retry_after else None
        if drop:
            self.count("dropped_connection")
        else:  # a hang then answers, so what follows it is served too
            for kind, rolled in (
                ("read_timeout", hang),
                (f"http_{self.http_5xx_status}", http5xx),
                (self.error_code, errored and not http5xx),
            ):
                if rolled:
                    self.count(kind + (" +Retry-After" if retry and kind != "read_timeout" else ""))

        def inject() -> httpx.Response | None:
            if hit and self.latency > 0:
                time.sleep(self.latency)
            if drop:
                raise DropConnection()
            if hang:
                time.sleep(self.hang_seconds)
            if http5xx:
                status = self.http_5xx_status
                return httpx.Response(status, text=f"<html><h1>{status}</h1></html>", headers=retry)
            if errored and answer is not None:
                return answer(self.error_code, retry)
            return None

        return inject
