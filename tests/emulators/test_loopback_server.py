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


def _trickle(port: int, seconds: float, every: float = 0.05) -> tuple[float, bytes]:
    """Send a request a byte at a time for up to ``seconds``; how long the server kept the
    connection open, and what it answered."""
    data = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"a" * 100000
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 5) as conn:
        try:
            for byte in data:
                if time.monotonic() - started > seconds:
                    break
                conn.sendall(bytes([byte]))
                time.sleep(every)
                conn.setblocking(False)
                try:
                    if conn.recv(65536) == b"":
                        return time.monotonic() - started, b""
                except BlockingIOError:
                    pass
                finally:
                    conn.setblocking(True)
        except OSError:  # reset or broken pipe: the server closed on us
            return time.monotonic() - started, b""
        return time.monotonic() - started, b"still open"


def test_a_client_trickling_its_request_is_cut_off_at_the_whole_request_deadline() -> None:
    # Each byte arrives well inside the timeout; only a deadline for the whole request ends it.
    with LoopbackServer(echo, timeout=0.5) as server:
        held, answer = _trickle(server.bound_port, seconds=4.0)
    assert answer == b"" and held < 2.5


def test_connections_over_the_worker_bound_are_answered_503_and_threads_stay_bounded() -> None:
    # The deadline is long enough for the checks below to run while the slow clients hold on.
    with LoopbackServer(echo, timeout=3.0, max_workers=4) as server:
        before = threading.active_count()
        slow = [socket.create_connection(("127.0.0.1", server.bound_port)) for _ in range(30)]
        try:
            for conn in slow:
                conn.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\n")  # and never the rest
            time.sleep(0.3)
            assert threading.active_count() - before <= 4
            busy = raw(server, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            assert busy.startswith(b"HTTP/1.1 503 ")
            assert b"Retry-After: 1\r\n" in busy and b"too many connections" in busy
            time.sleep(2.9)  # the deadline frees the slots the slow clients held
            answers = []
            for _ in range(20):
                answers.append(httpx.post(server.url + "/x", content=b"hi", timeout=5))
                if answers[-1].status_code != 503:
                    break
                time.sleep(0.1)
            assert answers[-1].content == b"hi"
        finally:
            for conn in slow:
                conn.close()


def test_a_request_whose_length_is_unclear_gets_400() -> None:
    heads = [
        b"Content-Length: +3",
        b"Content-Length: 1_0",
        b"Content-Length: \xd9\xa1",  # an Arabic-Indic one: int() would read it
        b"Content-Length:",
        b"Content-Length: 3\r\nContent-Length: 4",
        b"Content-Length: 3\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: gzip, chunked",
    ]
    with LoopbackServer(echo, timeout=5) as server:
        for head in heads:
            answer = raw(server, b"POST /x HTTP/1.1\r\nHost: a\r\n" + head + b"\r\n\r\nabcd")
            assert answer.startswith(b"HTTP/1.1 400 "), head
        for chunks in (
            b"+2\r\nab\r\n0\r\n\r\n",  # a sign before the size
            b"2\r\nabc\r\n0\r\n\r\n",  # more data than the size says
            b"1" * 10000 + b"\r\n",  # a size line without end
        ):
            chunked = b"Transfer-Encoding: chunked\r\n\r\n" + chunks
            answer = raw(server, b"POST /x HTTP/1.1\r\nHost: a\r\n" + chunked)
            assert answer.startswith(b"HTTP/1.1 400"), chunks[:10]
