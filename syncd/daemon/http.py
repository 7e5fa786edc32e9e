"""The daemon's small HTTP listener: /healthz, /readyz, /metrics, and routes mounted later.

The standard library's ``ThreadingHTTPServer`` is enough here: a handful of requests a minute
from a probe and a scraper. It runs in a daemon thread, so a stuck client never holds up exit,
and each request gets its own thread, so a slow /readyz check never delays a /metrics scrape.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from syncd.config import HttpConfig
from syncd.errors import ListenError
from syncd.metrics import Metrics

log = logging.getLogger("syncd.http")

#: A liveness or readiness check: (ok, a one-line reason shown when not ok).
Check = Callable[[], tuple[bool, str]]
#: What a route answers: status, headers, body.
Response = tuple[int, dict[str, str], bytes]

MAX_BODY = 1 << 20  # mounted routes take small callbacks; anything bigger is a mistake or abuse
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request


@dataclass(frozen=True, slots=True)
class Request:
    """What a mounted route sees of a request."""

    method: str
    path: str  # without the query string
    query: str
    headers: Message
    body: bytes
    client: str


Handler = Callable[[Request], Response]


class StatusServer:
    """Serves health, readiness and metrics on ``[http] listen`` until stopped."""

    def __init__(
        self, config: HttpConfig, *, health: Check, ready: Check, metrics: Metrics
    ) -> None:
        if not config.enabled:
            raise ValueError("the HTTP listener is off ([http] listen)")
        self.host, self._wanted_port = config.address()
        self._routes: list[tuple[str, str, Handler]] = []
        self._routes_lock = threading.Lock()
        self._builtin: dict[str, Handler] = {
            "/healthz": lambda _r: _check_response(health),
            "/readyz": lambda _r: _check_response(ready),
            "/metrics": lambda _r: _metrics_response(metrics),
        }
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            return
        shown = _show(self.host, self._wanted_port)
        try:
            server = _Server((self.host, self._wanted_port), _RequestHandler, self._dispatch)
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {shown} ([http] listen): {exc.strerror or exc}; "
                'free the port, choose another, or set listen = "off"'
            ) from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="syncd-http"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("listening on %s", self.url)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

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
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return "http://" + _show(self.host, self.port)

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

    def _dispatch(self, request: Request) -> Response:
        builtin = self._builtin.get(request.path)
        if builtin is not None:
            if request.method not in ("GET", "HEAD"):
                return _json(405, {"status": "error", "reason": "method not allowed"})
            return builtin(request)
        with self._routes_lock:
            matching = [r for r in self._routes if _under(request.path, r[1])]
        for method, _prefix, handler in matching:
            if method == request.method:
                return handler(request)
        if matching:
            return _json(405, {"status": "error", "reason": "method not allowed"})
        return _json(404, {"status": "error", "reason": "not found"})


# --------------------------------------------------------------------------- internals


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        dispatch: Callable[[Request], Response],
    ) -> None:
        # HTTPServer binds IPv4 only; "[::1]:9187" needs an IPv6 socket.
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.dispatch = dispatch
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer is routine; the default prints a traceback to stderr.
        log.debug("HTTP connection from %s failed", client_address, exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "syncd"
    sys_version = ""

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle(send_body=False)

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self, send_body: bool = True) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(_json(413, {"status": "error", "reason": "body too large"}), send_body)
            return
        body = self.rfile.read(length) if length > 0 else b""
        method = "GET" if self.command == "HEAD" else self.command
        request = Request(method, path, query, self.headers, body, self.client_address[0])
        try:
            response = self.server.dispatch(request)
        except Exception:
            log.exception("HTTP %s %s failed", self.command, path)
            response = _json(500, {"status": "error", "reason": "internal error"})
        self._send(response, send_body)

    def _send(self, response: Response, send_body: bool) -> None:
        status, headers, body = response
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes and scrapes arrive every few seconds: one stderr line each would bury the logs.
        log.debug("HTTP " + format, *args)


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _json(status: int, payload: dict[str, str]) -> Response:
    body = json.dumps(payload).encode() + b"\n"
    return status, {"Content-Type": "application/json", "Cache-Control": "no-store"}, body


def _check_response(check: Check) -> Response:
    try:
        ok, reason = check()
    except Exception as exc:  # a check that cannot even answer is a failing check
        log.warning("health check raised", exc_info=True)
        ok, reason = False, f"check raised {type(exc).__name__}"
    if ok:
        return _json(200, {"status": "ok"})
    return _json(503, {"status": "failing", "reason": reason})


def _metrics_response(metrics: Metrics) -> Response:
    body, content_type = metrics.render()
    return 200, {"Content-Type": content_type}, body
