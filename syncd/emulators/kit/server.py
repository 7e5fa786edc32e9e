"""A real loopback HTTP server around a plain ``httpx`` request handler.

An emulator is one function ``handle(request: httpx.Request) -> httpx.Response``. In-process tests
plug it into ``httpx.MockTransport``; end-to-end tests and ``syncd emulate`` serve the same
function here, over a socket, so timeouts and dropped connections are real.

With a ``request_log`` file, the server appends every request line it receives (``POST
/en/api/importContacts HTTP/1.1``), so a test can check what a client put in its URLs.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import TextIO

import httpx

Handler = Callable[[httpx.Request], httpx.Response]

_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class DropConnection(httpx.RemoteProtocolError):
    """Raised by a handler: close the socket without answering.

    It is an ``httpx.TransportError``, so an in-process client (``MockTransport``) sees the same
    class of failure as one talking to the real server.
    """

    def __init__(self, message: str = "connection dropped by emulator") -> None:
        super().__init__(message)


def _read_body(req: BaseHTTPRequestHandler) -> bytes:
    if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while (size := int(req.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
            chunks.append(req.rfile.read(size))
            req.rfile.readline()
        while req.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)
    length = int(req.headers.get("Content-Length") or 0)
    return req.rfile.read(length) if length else b""


def _make_request_handler(
    handler: Handler, request_log: TextIO | None = None
) -> type[BaseHTTPRequestHandler]:
    log_lock = threading.Lock()

    class _RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in two writes; with Nagle's algorithm the body then waits for
        # the client's delayed ACK of the headers, about 40 ms on every keep-alive request.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            if request_log is not None:
                with log_lock:
                    request_log.write(self.requestline + "\n")
                    request_log.flush()
            body = _read_body(self)
            addr = self.server.server_address
            default_host = f"{addr[0]!s}:{addr[1]}" if isinstance(addr, tuple) else "localhost"
            host = self.headers.get("Host") or default_host
            request = httpx.Request(
                self.command,
                f"http://{host}{self.path}",
                headers=list(self.headers.items()),
                content=body,
                extensions={"client_addr": self.client_address},
            )
            try:
                response = handler(request)
                content = response.read()
            except DropConnection:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            except Exception as exc:  # a handler bug: answer 500 rather than hang the client
                response = httpx.Response(500, text=f"emulator error: {exc!r}")
                content = response.read()
            try:
                self.send_response(response.status_code)
                for name, value in response.headers.multi_items():
                    if name.lower() not in _HOP_HEADERS:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)
            except OSError:
                self.close_connection = True  # the client gave up (e.g. its timeout fired)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    return _RequestHandler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler hanging on purpose must not block stop()


class EmulatorServer:
    """Serve ``handler`` on ``host:port`` (port 0: a free port) from a daemon thread."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        request_log: Path | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.request_log = request_log
        self._log: TextIO | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> EmulatorServer:
        if self._server is None:
            if self.request_log is not None:
                self._log = self.request_log.open("a", encoding="utf-8")
            handler = _make_request_handler(self.handler, self._log)
            self._server = _Server((self.host, self.port), handler)
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="emulator-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc: type[BaseException] | None, val: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(handler: Handler, host: str, port: int, request_log: Path | None = None) -> None:
    """Serve until SIGINT or SIGTERM; print ``emulator listening on URL`` first."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmulatorServer(handler, host, port, request_log) as server:
            print(f"emulator listening on {server.url}", flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        sys.stdout.flush()
