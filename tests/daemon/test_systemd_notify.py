"""sd_notify over a real AF_UNIX datagram socket, as systemd would receive it."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from syncd.daemon.observe import CycleWatch
from syncd.daemon.systemd import Notifier, StatusLine, WatchdogPinger, watchdog_interval
from syncd.engine.result import RATE_LIMIT_WAIT
from syncd.metrics import Metrics


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"  # pytest's tmp paths stay well under the 108-byte limit
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_lifecycle_messages(listener: socket.socket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready()
    assert receive(listener) == "READY=1"
    notifier.status("running;\nfailing: news")
    assert receive(listener) == "STATUS=running; failing: news"  # one line, always
    notifier.ready("up")
    assert receive(listener) == "READY=1\nSTATUS=up"
    notifier.stopping()
    assert receive(listener) == "STOPPING=1"


def test_watchdog_pinger_sends_at_half_the_interval(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    assert watchdog_interval() == pytest.approx(0.1)
    pinger = WatchdogPinger(Notifier(), alive=lambda: True)
    pinger.start()
    try:
        assert [receive(listener) for _ in range(3)] == ["WATCHDOG=1"] * 3
    finally:
        pinger.stop()
    assert not pinger.is_alive()


def test_no_pings_while_not_alive(listener: socket.socket) -> None:
    pinger = WatchdogPinger(Notifier(), alive=lambda: False, interval=0.02)
    pinger.start()
    listener.settimeout(0.15)
    with pytest.raises(TimeoutError):
        receive(listener)
    pinger.stop()


def test_watchdog_interval_reads_the_environment() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "nonsense"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.0
    assert watchdog_interval({**mine, "WATCHDOG_PID": "1"}) is None  # meant for another process


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"syncd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert Notifier().ready()
        assert receive(sock) == "READY=1"


def test_everything_is_a_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()
    pinger = WatchdogPinger(notifier, alive=lambda: True)
    pinger.start()
    assert not pinger.is_alive()  # no thread was started
    pinger.stop()


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.status("x") is False


def test_a_manager_that_stopped_reading_does_not_block_us(listener: socket.socket) -> None:
    notifier = Notifier()
    started = time.monotonic()
    while notifier.watchdog():  # nobody reads: the queue fills up
        assert time.monotonic() - started < 5
    # the send that found no room gave up after SEND_TIMEOUT instead of hanging
    assert time.monotonic() - started < 5


def test_the_status_line_names_each_running_cycle_then_the_last_outcome(
    listener: socket.socket,
) -> None:
    at = [0.0]
    line = StatusLine(Notifier(), targets=2, clock=lambda: at[0], min_gap=60)
    line.set_targets(2)
    assert receive(listener) == "STATUS=idle; no cycle yet; 2 target(s)"
    line.doing("news", "exporting")
    assert receive(listener) == "STATUS=news: exporting; 2 target(s)"
    line.doing("crm", "sending", "pushing 20 differing keys, 1 call sent")
    assert receive(listener) == (
        "STATUS=crm: pushing 20 differing keys, 1 call sent; news: exporting; 2 target(s)"
    )
    # another call of the same phase within min_gap is kept for the next line, not sent
    line.doing("crm", "sending", "pushing 20 differing keys, 2 calls sent")
    at[0] = 12 * 3600 + 3 * 60 + 1
    line.finished("crm", "unreachable", failing=["crm"])
    assert receive(listener) == "STATUS=news: exporting; failing: crm; 2 target(s)"
    line.finished("news", "converged", failing=["crm"])
    assert receive(listener) == (
        "STATUS=idle; last cycle converged 12:03:01 UTC (news); failing: crm; 2 target(s)"
    )
    line.set_targets(3, "reloaded")
    assert receive(listener) == (
        "STATUS=idle; last cycle converged 12:03:01 UTC (news); failing: crm; reloaded; 3 target(s)"
    )
    listener.settimeout(0.1)
    with pytest.raises(TimeoutError):
        receive(listener)  # nothing else was sent


def test_a_wait_for_the_rate_limit_shows_at_once_as_such(listener: socket.socket) -> None:
    line = StatusLine(Notifier(), targets=1, clock=lambda: 0.0, min_gap=60)
    watch = CycleWatch("news", line, Metrics(CollectorRegistry()), exports=True)
    receive(listener)
    watch("rows sent", 12_000, 40_000)
    assert receive(listener) == "STATUS=news: pushing 12,000/40,000; 1 target(s)"
    watch(RATE_LIMIT_WAIT, 3, None)  # within min_gap, yet another phase: sent
    assert receive(listener) == (
        "STATUS=news: pushing 12,000/40,000, waiting 3 s for the rate limit; 1 target(s)"
    )


def test_a_repeated_phase_is_sent_again_after_min_gap(listener: socket.socket) -> None:
    line = StatusLine(Notifier(), targets=1, min_gap=0.2)
    line.doing("news", "sending", "1 call sent")
    assert receive(listener) == "STATUS=news: 1 call sent; 1 target(s)"
    line.doing("news", "sending", "2 calls sent")  # too soon: held back
    time.sleep(0.25)
    line.doing("news", "sending", "3 calls sent")
    assert receive(listener) == "STATUS=news: 3 calls sent; 1 target(s)"


def test_a_cycle_that_raised_is_no_longer_shown_running(listener: socket.socket) -> None:
    line = StatusLine(Notifier(), targets=1)
    line.doing("news", "exporting")
    assert receive(listener) == "STATUS=news: exporting; 1 target(s)"
    line.drop("news")
    assert receive(listener) == "STATUS=idle; no cycle yet; 1 target(s)"
    line.drop("news")  # nothing running: nothing sent
    listener.settimeout(0.1)
    with pytest.raises(TimeoutError):
        receive(listener)
