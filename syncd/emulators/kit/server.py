"""The one loopback HTTP server: it runs a plain ``httpx`` request handler over a real socket.

A handler is one function ``handle(request: httpx.Request) -> httpx.Response``: every emulator and
the daemon's router are written that way. In-process tests plug a handler into
``httpx.MockTransport``; end-to-end tests, ``syncd emulate``, ``syncd run`` and ``syncd run-once``
serve the same function here, so timeouts and dropped connections are real.

The server keeps the promises a listener on an open port needs, whoever runs it: each connection
gets its own daemon thread (a slow handler delays no other request, a stuck client never holds up
exit), an optional ``timeout`` is a deadline for the whole request (request line, headers and body:
a client trickling a byte at a time is cut off at the deadline, not kept while it keeps sending),
an optional ``max_workers`` bounds the connections served at once (one more is answered 503 with
``Retry-After`` at once, so a crowd of slow clients costs a fixed number of threads), an optional
``max_body`` refuses bigger bodies with 413 before reading them, a request whose length cannot be
known for sure (a Content-Length that is not plain digits, two that differ, one beside a
Transfer-Encoding, a coding other than chunked, a chunk framed wrongly) is answered 400, a bind
failure is a ``BindError`` naming the address, and IPv6 literal hosts (``::1``) work like IPv4
ones. A handler that raises ``DropConnection`` closes the socket without answering; any other
exception becomes a 500 answer rather than a hung client.

With a ``request_log`` file, the server appends every request line it receives (``POST
/en/api/importContacts HTTP/1.1``), so a test can check what a client put in its URLs.

It imports nothing from syncd outside ``syncd.emulators.kit``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO

import httpx

log = logging.getLogger(__name__)

Handler = Callable[[httpx.Request], httpx.Response]

#: What a Host header may hold: a name or an IPv4 literal, or a bracketed IPv6 one, and a port.
_AUTHORITY = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
#: After refusing a request: how long and how much of the rest of it the server reads and drops.
_DISCARD_SECONDS = 1.0
_DISCARD_BYTES = 8 << 20
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_LINE_LIMIT = 8192
#: The answer to a connection over ``max_workers``, sent by the accepting thread without waiting.
_BUSY_BODY = json.dumps({"status": "error", "reason": "too many connections"}).encode() + b"\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Cache-Control: no-store\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n" % len(_BUSY_BODY)
) + _BUSY_BODY
_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class DropConnection(httpx.RemoteProtocolError):
    """Raised by a handler: close the socket without answering.

    It is an ``httpx.TransportError``, so an in-process client (``MockTransport``) sees the same
    class of failure as one talking to the real server.
    """

    def __init__(self, message: str = "connection dropped by emulator") -> None:
        super().__init__(message)


class BindError(OSError):
    """The server could not bind its address; ``address`` shows it, ``reason`` says why."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"cannot listen on {address}: {reason}")


class _BadRequest(Exception):
    """The request cannot be read: answer ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


def show_address(host: str, port: int) -> str:
    """``host:port`` as a URL writes it: ``[::1]:9187`` for an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _DeadlineReader(io.RawIOBase):
    """The socket's read side, with one deadline for everything read until ``clear``.

    A socket timeout alone restarts at every read, so a client sending a byte a second would keep
    its thread for as long as it likes; here each read waits at most for what is left.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._deadline: float | None = None

    def start(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def clear(self) -> None:
        self._deadline = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request deadline passed")
            self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


def _content_length(req: BaseHTTPRequestHandler) -> int:
    values = req.headers.get_all("Content-Length") or []
    # Plain ASCII digits only: int() would also take "+5", "1_0" or other scripts' digits, and a
    # length read differently from the client's leaves the connection waiting or out of step.
    lengths = {v.strip() for v in values}
    if len(lengths) > 1 or not all(_DIGITS.fullmatch(v) for v in lengths):
        raise _BadRequest(400, "bad Content-Length")
    return int(lengths.pop()) if lengths else 0


def _read_body(req: BaseHTTPRequestHandler, max_body: int | None) -> bytes:
    codings = req.headers.get_all("Transfer-Encoding") or []
    if codings:
        if [c.strip().lower() for c in codings] != ["chunked"] or "Content-Length" in req.headers:
            raise _BadRequest(400, "bad Transfer-Encoding")
        chunks = []
        received = 0
        while (size := _chunk_size(_line(req))) > 0:
            received += size
            if max_body is not None and received > max_body:
                raise _BadRequest(413, "body too large")
            chunks.append(req.rfile.read(size))
            if req.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BadRequest(400, "bad chunk")
        while _line(req) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)
    length = _content_length(req)
    if max_body is not None and length > max_body:
        raise _BadRequest(413, "body too large")
    return req.rfile.read(length) if length else b""


def _line(req: BaseHTTPRequestHandler) -> bytes:
    """One line of a chunked body (a chunk's size, a trailer), of bounded length."""
    line = req.rfile.readline(_LINE_LIMIT + 1)
    if len(line) > _LINE_LIMIT:
        raise _BadRequest(400, "chunk line too long")
    return line


def _chunk_size(line: bytes) -> int:
    size = line.split(b";")[0].strip()
    if not _HEX.fullmatch(size):
        raise _BadRequest(400, "bad chunk size")
    return int(size, 16)


def _make_request_handler(
    handler: Handler,
    request_log: TextIO | None = None,
    *,
    timeout: float | None = None,
    max_body: int | None = None,
) -> type[BaseHTTPRequestHandler]:
    log_lock = threading.Lock()

    class _RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "syncd"
        sys_version = ""
        # Headers and body leave in two writes; with Nagle's algorithm the body then waits for
        # the client's delayed ACK of the headers, about 40 ms on every keep-alive request.
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # the plain reader; it would keep the socket's file open
            self._reader = _DeadlineReader(self.connection)
            self.rfile = io.BufferedReader(self._reader)

        def handle_one_request(self) -> None:
            # The deadline runs from the wait for the request line to the end of the body; the
            # handler's own time and the answer are not the client's to spend.
            if timeout is not None:
                self._reader.start(timeout)
            super().handle_one_request()

        def _serve(self) -> None:
            if request_log is not None:
                with log_lock:
                    request_log.write(self.requestline + "\n")
                    request_log.flush()
            try:
                request = self._request()
                self._reader.clear()
                self.connection.settimeout(timeout)
            except _BadRequest as bad:
                self._reader.clear()
                self.connection.settimeout(timeout)
                self.close_connection = True  # the rest of the body is still in the socket
                payload = json.dumps({"status": "error", "reason": bad.reason}).encode() + b"\n"
                headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
                self._answer(httpx.Response(bad.status, headers=headers, content=payload))
                self._discard_rest()
                return
            try:
                response = handler(request)
                response.read()
            except DropConnection:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            except Exception as exc:  # a handler bug: answer 500 rather than hang the client
                log.debug("handler failed on %s", self.requestline, exc_info=True)
                response = httpx.Response(500, text=f"emulator error: {exc!r}")
            self._answer(response)

        def _request(self) -> httpx.Request:
            body = _read_body(self, max_body)
            addr = self.server.server_address
            default_host = (
                show_address(str(addr[0]), int(addr[1])) if isinstance(addr, tuple) else "localhost"
            )
            host = self.headers.get("Host") or default_host
            # The path comes from the request line alone: a Host header must not move it.
            if not self.path.startswith("/") or not _AUTHORITY.fullmatch(host):
                raise _BadRequest(400, "bad request target or Host header")
            try:
                return httpx.Request(
                    self.command,
                    f"http://{host}{self.path}",
                    headers=list(self.headers.items()),
                    content=body,
                    extensions={"client_addr": self.client_address},
                )
            except (httpx.InvalidURL, ValueError):
                raise _BadRequest(400, "bad request target or Host header") from None

        def _answer(self, response: httpx.Response) -> None:
            content = response.content
            try:
                self.send_response(response.status_code)
                for name, value in response.headers.multi_items():
                    if name.lower() not in _HOP_HEADERS:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)
            except OSError:
                self.close_connection = True  # the client gave up (e.g. its timeout fired)

        def _discard_rest(self) -> None:
            """Read what the client still sends, for a moment, so that closing the socket with
            unread bytes (a TCP reset) does not destroy the answer before the client reads it."""
            deadline = time.monotonic() + _DISCARD_SECONDS
            left = _DISCARD_BYTES
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)
                while left > 0 and (wait := deadline - time.monotonic()) > 0:
                    self.connection.settimeout(wait)
                    if not (chunk := self.connection.recv(min(left, 65536))):
                        break
                    left -= len(chunk)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    _RequestHandler.timeout = timeout
    return _RequestHandler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler hanging on purpose must not block stop()
    # Connections the system accepts before the server takes them: socketserver's 5 would leave a
    # burst of clients retrying their SYN a second later instead of being served or refused.
    request_queue_size = 128

    def __init__(
        self,
        host: str,
        port: int,
        handler: type[BaseHTTPRequestHandler],
        max_workers: int | None = None,
    ) -> None:
        # HTTPServer binds IPv4 only; "::1" needs an IPv6 socket.
        if ":" in host:
            self.address_family = socket.AF_INET6
        self._slots = None if max_workers is None else threading.BoundedSemaphore(max_workers)
        super().__init__((host, port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self._slots is not None and not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self._slots is not None:
                self._slots.release()

    def _refuse(self, sock: socket.socket) -> None:
        """Answer 503 without a thread and without waiting: the accepting thread must stay free.

        What the client already sent is read first, so that closing does not reset the
        connection under the answer.
        """
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(_BUSY)
            with contextlib.suppress(BlockingIOError):
                while sock.recv(65536):
                    pass
            sock.shutdown(socket.SHUT_WR)
        self.shutdown_request(sock)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client hanging up mid-request is routine; the default prints a traceback to stderr.
        log.debug("HTTP connection from %s failed", client_address, exc_info=True)


class LoopbackServer:
    """Serve ``handler`` on ``host:port`` (port 0: a free port) from a daemon thread.

    ``timeout``: seconds a client may take to send its whole request (None: no limit).
    ``max_workers``: connections served at once, one thread each; more are answered 503 (None:
    no limit). ``max_body``: the largest request body taken, in bytes (None: no limit). ``name``
    names the thread.
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        request_log: Path | None = None,
        *,
        timeout: float | None = None,
        max_body: int | None = None,
        max_workers: int | None = None,
        name: str = "emulator-server",
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.request_log = request_log
        self.timeout = timeout
        self.max_body = max_body
        self.max_workers = max_workers
        self.name = name
        self._log: TextIO | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def bound_port(self) -> int:
        """The port the server listens on (the one the system chose when asked for port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        return "http://" + show_address(str(self._server.server_address[0]), self.bound_port)

    def start(self) -> LoopbackServer:
        """Bind and serve; a port in use or an address not available raises ``BindError``."""
        if self._server is not None:
            return self
        if self.request_log is not None:
            self._log = self.request_log.open("a", encoding="utf-8")
        handler = _make_request_handler(
            self.handler, self._log, timeout=self.timeout, max_body=self.max_body
        )
        try:
            self._server = _Server(self.host, self.port, handler, self.max_workers)
        except OSError as exc:
            self.stop()  # closes the request log
            address = show_address(self.host, self.port)
            raise BindError(address, exc.strerror or str(exc)) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=self.name,
            daemon=True,
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

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self, exc: type[BaseException] | None, val: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


#: The name the emulators, their tests and the demo use for the same server.
EmulatorServer = LoopbackServer


def serve_forever(handler: Handler, host: str, port: int, request_log: Path | None = None) -> None:
    """Serve until SIGINT or SIGTERM; print ``emulator listening on URL`` first."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LoopbackServer(handler, host, port, request_log) as server:
            print(f"emulator listening on {server.url}", flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        sys.stdout.flush()
