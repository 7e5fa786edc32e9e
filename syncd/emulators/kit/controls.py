"""What tests drive every emulator with: ``EmulatorControls``, the base class of each emulator.

It owns the parts no provider has: the lock around the account, the call counters, the
``Faults`` in force, and the ``/_emulator/`` routes (JSON in and out, no API key):

- ``GET  /_emulator/state``: the account (``state_json``; query parameters filter it)
- ``GET  /_emulator/calls``: API calls per method and the count of write calls
- ``GET  /_emulator/faults``: the ``Faults`` in force and ``injected``, the faults served so far
  by kind; ``POST /_emulator/faults``: replace them (body: their fields); ``reset-calls``
- ``POST /_emulator/<op>``: the emulator's own controls (``admin_post``)

Unknown names answer 404, bad bodies 400, a GET where a POST is due 405. Each emulator adds its
API (``api_response``), the wording of an injected error (``fault_answer``) and its own state and
controls; ``enter`` counts a call and serves its injected faults.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import httpx

from syncd.emulators.kit.faults import Faults


class EmulatorControls:
    """The base of every emulator: ``handle`` serves ``/_emulator/`` here and the rest through
    ``api_response``. Subclasses name their write calls in ``write_methods``."""

    write_methods: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.faults = Faults()
        self.calls: Counter[str] = Counter()
        self.write_calls = 0

    # ---- what each emulator provides

    def api_response(self, request: httpx.Request) -> httpx.Response:
        """The provider's API: every path outside ``/_emulator/``."""
        raise NotImplementedError

    def fault_answer(self, code: str, headers: dict[str, str] | None) -> httpx.Response:
        """The provider's own answer for an injected error ``code``."""
        raise NotImplementedError

    def state_json(self, query: httpx.QueryParams) -> dict[str, Any]:
        """What ``GET /_emulator/state`` answers (called under the lock)."""
        raise NotImplementedError

    def admin_post(self, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Answer one emulator-specific control; None: no such control."""
        return None

    # ---- shared

    def handle(self, request: httpx.Request) -> httpx.Response:
        """The whole emulator as one ``httpx.Request -> httpx.Response`` handler."""
        if request.url.path.startswith("/_emulator/"):
            return self.admin_response(request)
        return self.api_response(request)

    def enter(self, method: str) -> httpx.Response | None:
        """Count one API call and roll its faults; a response here is the call's answer."""
        with self._lock:
            self.calls[method] += 1
            if method in self.write_methods:
                self.write_calls += 1
            inject = self.faults.draw(method, self.fault_answer)
        return inject()  # sleeps or drops outside the lock

    def admin_response(self, request: httpx.Request) -> httpx.Response:
        """One ``/_emulator/`` request: ``state``, ``calls``, ``faults`` and ``reset-calls``
        here, anything else through ``admin_post``."""
        op = request.url.path.removeprefix("/_emulator/").strip("/")
        try:
            body: dict[str, Any] = json.loads(request.content or b"{}")
            if op == "state" and request.method == "GET":
                with self._lock:
                    return httpx.Response(200, json=self.state_json(request.url.params))
            if op == "faults" and request.method == "GET":
                with self._lock:
                    faults = self.faults
                    injected = {"injected": dict(sorted(faults.injected.items()))}
                    return httpx.Response(200, json=faults.to_json() | injected)
            if op == "calls" and request.method == "GET":
                with self._lock:
                    calls = {"calls": dict(self.calls), "write_calls": self.write_calls}
                return httpx.Response(200, json=calls)
            if request.method != "POST":
                return httpx.Response(405, json={"error": "method not allowed"})
            if op == "faults":
                body.pop("injected", None)  # what GET answers may be posted back as it is
                with self._lock:
                    self.faults = Faults(**body)
                    return httpx.Response(200, json=self.faults.to_json())
            if op == "reset-calls":
                with self._lock:
                    self.calls.clear()
                    self.write_calls = 0
                return httpx.Response(200, json={})
            with self._lock:
                answer = self.admin_post(op, body)
            if answer is not None:
                return httpx.Response(200, json=answer)
        except KeyError as exc:
            return httpx.Response(404, json={"error": f"not found: {exc}"})
        except (ValueError, TypeError) as exc:
            return httpx.Response(400, json={"error": str(exc)})
        return httpx.Response(404, json={"error": f"unknown admin endpoint {op!r}"})
