"""The daemon's HTTP routes: /healthz, /readyz, /metrics, and routes mounted beside them.

Every route is an ``httpx.Request -> httpx.Response`` handler and ``StatusServer.handle`` is the
one router composing them, so tests call it through ``httpx.MockTransport`` without a socket.
``StatusServer`` serves that router on ``[http] listen`` through ``syncd.commands.listener``: a
thread per connection up to the listener's bound, so a slow /readyz check never delays a
/metrics scrape, and daemon threads, so a stuck client never holds up exit. The job routes Netcore
calls (``syncd.commands.job_routes``) are mounted here by the daemon.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

import httpx

from syncd.commands.listener import json_answer, listen
from syncd.config import HttpConfig
from syncd.emulators.kit.server import Handler, LoopbackServer, show_address
from syncd.metrics import Metrics

log = logging.getLogger("syncd.http")

#: A liveness or readiness check: (ok, a one-line reason shown when not ok).
Check = Callable[[], tuple[bool, str]]


class StatusServer:
    """Serves health, readiness, metrics and mounted routes on ``[http] listen`` until stopped."""

    def __init__(
        self, config: HttpConfig, *, health: Check, ready: Check, metrics: Metrics
    ) -> None:
        if not config.enabled:
            raise ValueError("the HTTP listener is off ([http] listen)")
        self._config = config
        self.host, self._wanted_port = config.address()
        self._routes: list[tuple[str, str, Handler]] = []
        self._routes_lock = threading.Lock()
        self._fixed: dict[str, Handler] = {
            "/healthz": check_route(health),
            "/readyz": check_route(ready),
            "/metrics": metrics_route(metrics),
        }
        self._server: LoopbackServer | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve; an address that cannot be bound raises ``ListenError``."""
        if self._server is None:
            self._server = listen(self._config, self.handle)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> StatusServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one when the config asked for port 0)."""
        if self._server is None:
            return self._wanted_port
        return self._server.bound_port

    @property
    def url(self) -> str:
        return "http://" + show_address(self.host, self.port)

    # -- routes ---------------------------------------------------------------------------

    def add_route(self, method: str, path_prefix: str, handler: Handler) -> None:
        """Answer ``method`` requests under ``path_prefix`` (whole path segments) with ``handler``.

        The longest matching prefix wins; routes may be added while the server runs.
        """
        if not path_prefix.startswith("/"):
            raise ValueError(f"path_prefix must start with '/', not {path_prefix!r}")
        with self._routes_lock:
            self._routes.append((method.upper(), path_prefix.rstrip("/") or "/", handler))
            self._routes.sort(key=lambda r: len(r[1]), reverse=True)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """The router: the fixed paths answer GET (and HEAD), mounted routes their own method."""
        path = request.url.path
        method = "GET" if request.method == "HEAD" else request.method
        fixed = self._fixed.get(path)
        if fixed is not None:
            if method != "GET":
                return json_answer(405, {"status": "error", "reason": "method not allowed"})
            return fixed(request)
        with self._routes_lock:
            matching = [r for r in self._routes if _under(path, r[1])]
        for route_method, _prefix, handler in matching:
            if route_method == method:
                return handler(request)
        if matching:
            return json_answer(405, {"status": "error", "reason": "method not allowed"})
        return json_answer(404, {"status": "error", "reason": "not found"})


def check_route(check: Check) -> Handler:
    """200 ``{"status": "ok"}`` while ``check`` passes, else 503 with its reason."""

    def answer(_request: httpx.Request) -> httpx.Response:
        try:
            ok, reason = check()
        except Exception as exc:  # a check that cannot even answer is a failing check
            log.warning("health check raised", exc_info=True)
            ok, reason = False, f"check raised {type(exc).__name__}"
        if ok:
            return json_answer(200, {"status": "ok"})
        return json_answer(503, {"status": "failing", "reason": reason})

    return answer


def metrics_route(metrics: Metrics) -> Handler:
    """The Prometheus exposition of ``metrics``, in OpenMetrics when the scraper's Accept header
    asks for it (Prometheus does by default), in the classic text format otherwise."""

    def answer(request: httpx.Request) -> httpx.Response:
        body, content_type = metrics.render(request.headers.get("Accept"))
        return httpx.Response(200, headers={"Content-Type": content_type}, content=body)

    return answer


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")
