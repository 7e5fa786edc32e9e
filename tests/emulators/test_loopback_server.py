"""The loopback server over a real socket: the limits every listener keeps, whoever runs it."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from syncd.emulators.kit.server import BindError, DropConnection, LoopbackServer


def echo(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=request.content, headers={"X-Path": request.url.path})


def raw(server: LoopbackServer, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data`` as is and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.bound_port), timeout=wait) as conn:
        conn.sendall(data)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    with (
        LoopbackServer(echo, max_body=1000) as server,
        httpx.Client(base_url=server.url) as c,
    ):
        assert c.post("/x", content=b"a" * 1000).content == b"a" * 1000
        too_big = c.post("/x", content=b"a" * 1001)
        assert too_big.status_code == 413
        assert too_big.json() == {"status": "error", "reason": "body too large"}
        huge = c.post("/x", content=b"a" * (4 << 20))  # more than the socket buffers hold
        assert huge.status_code == 413
        chunked = c.post("/x", content=iter([b"a" * 600, b"a" * 600]))  # no Content-Length
        assert chunked.status_code == 413
        assert c.post("/x", content=iter([b"ab", b"cd"])).content == b"abcd"


def test_a_malformed_request_gets_400_not_a_hung_connection() -> None:
    with LoopbackServer(echo) as server:
        answer = raw(server, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: lots\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        for host in (b"a b", b"a/jobs", b"a?b", b"u@a"):  # none may move the path
            answer = raw(server, b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 "), host


def test_a_client_slower_than_the_timeout_is_disconnected() -> None:
    with LoopbackServer(echo, timeout=0.3) as server:
        started = time.monotonic()
        answer = raw(server, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        assert answer == b"" and time.monotonic() - started < 3


def test_each_request_has_its_own_thread() -> None:
    release = threading.Event()

    def slow_or_fast(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/slow":
            release.wait(5)
        return httpx.Response(200, text=request.url.path)

    with LoopbackServer(slow_or_fast) as server:
        slow = threading.Thread(target=httpx.get, args=(server.url + "/slow",))
        slow.start()
        try:
            assert httpx.get(server.url + "/fast", timeout=2).text == "/fast"
        finally:
            release.set()
            slow.join()
        worker_threads = [t for t in threading.enumerate() if t.name.startswith("Thread-")]
        assert all(t.daemon for t in worker_threads)


def test_a_raising_handler_answers_500_and_a_dropping_one_closes_the_socket() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/drop":
            raise DropConnection()
        raise RuntimeError("boom")

    with LoopbackServer(handler) as server, httpx.Client(base_url=server.url) as c:
        assert c.get("/bug").status_code == 500
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/drop")


def test_a_taken_port_is_a_bind_error_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = LoopbackServer(echo, port=port, request_log=tmp_path / "requests.log")
        with pytest.raises(BindError, match=f"cannot listen on 127.0.0.1:{port}: ") as caught:
            server.start()
    assert isinstance(caught.value, OSError) and caught.value.address == f"127.0.0.1:{port}"
    with pytest.raises(RuntimeError, match="not started"):
        server.url  # noqa: B018


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_literal_host_is_served_and_shown_in_brackets() -> None:
    with LoopbackServer(echo, host="::1") as server:
        assert server.url.startswith("http://[::1]:")
        answer = httpx.post(server.url + "/v6", content=b"hi", timeout=5)
    assert (answer.content, answer.headers["X-Path"]) == (b"hi", "/v6")


def test_the_request_log_keeps_every_request_line(tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    with LoopbackServer(echo, request_log=log) as server, httpx.Client(base_url=server.url) as c:
        c.get("/a?b=1")
        c.post("/c", content=b"x")
    assert log.read_text().splitlines() == ["GET /a?b=1 HTTP/1.1", "POST /c HTTP/1.1"]
