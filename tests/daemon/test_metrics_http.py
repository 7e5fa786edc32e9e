"""The status listener over real loopback: /metrics moves with cycles and calls, probes answer."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import World
from prometheus_client.parser import text_string_to_metric_families

import syncd
from syncd.commands import listener
from syncd.commands.listener import MAX_BODY, MAX_WORKERS
from syncd.config import HttpConfig
from syncd.daemon import observe
from syncd.daemon.http import StatusServer
from syncd.engine.result import CycleResult
from syncd.errors import ListenError
from syncd.metrics import CYCLE_OUTCOMES, Metrics, call_observer, set_call_observer

LOOPBACK = HttpConfig(listen="127.0.0.1:0")


class Probe:
    """A health or readiness answer the test can flip."""

    def __init__(self) -> None:
        self.answer = (True, "ok")

    def __call__(self) -> tuple[bool, str]:
        return self.answer


@pytest.fixture
def probes() -> tuple[Probe, Probe]:
    return Probe(), Probe()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(metrics: Metrics, probes: tuple[Probe, Probe]) -> Iterator[StatusServer]:
    health, ready = probes
    with StatusServer(LOOPBACK, health=health, ready=ready, metrics=metrics) as s:
        yield s


def get(server: StatusServer, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in an exposition, or None if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def cycle(outcome: str, **counts: int) -> CycleResult:
    return CycleResult("news", "c1", outcome=outcome, counts=Counter(counts))


def test_metrics_scrape_moves_with_cycles_and_calls(server: StatusServer, metrics: Metrics) -> None:
    status, ctype, before = get(server, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert sample(before, "syncd_up") == 1.0
    assert sample(before, "syncd_inbox_files_total", outcome="failed") == 0.0
    assert sample(before, "syncd_cycles_total", target="news", outcome="converged") is None

    metrics.observe_cycle(cycle("converged", create=3, update=2, delete=1, exclude=1, pulled=4))
    metrics.observe_cycle(cycle("rejected", rejected=2), rejected_codes={"invalid_email": 2})
    metrics.observe_cycle(cycle("unreachable"), now=0.0)
    set_call_observer(metrics.observe_call)
    try:
        call_observer()("unisender", "importContacts", "ok", 0.2)
        call_observer()("unisender", "importContacts", "retry", 3.0)
    finally:
        set_call_observer(None)
    call_observer()("unisender", "importContacts", "ok", 0.2)  # no observer: not counted
    metrics.observe_inbox("processed")
    metrics.set_pending("news", 7)

    _, _, text = get(server, "/metrics")
    assert sample(text, "syncd_cycles_total", target="news", outcome="converged") == 1
    assert sample(text, "syncd_cycles_total", target="news", outcome="unreachable") == 1
    rows = {
        op: sample(text, "syncd_rows_total", target="news", operation=op)
        for op in ("created", "updated", "deleted", "pulled", "rejected")
    }
    assert rows == {"created": 3, "updated": 2, "deleted": 2, "pulled": 4, "rejected": 2}
    assert sample(text, "syncd_rejected_rows_total", target="news", code="invalid_email") == 2
    calls = {"provider": "unisender", "method": "importContacts"}
    assert sample(text, "syncd_api_calls_total", outcome="ok", **calls) == 1
    assert sample(text, "syncd_api_calls_total", outcome="retry", **calls) == 1
    assert sample(text, "syncd_api_call_seconds_count", **calls) == 2
    assert sample(text, "syncd_api_call_seconds_bucket", le="0.25", **calls) == 1
    last = sample(text, "syncd_last_success_timestamp_seconds", target="news")
    assert last is not None and last > 1e9  # the failed cycle did not move it back to 0
    assert sample(text, "syncd_inbox_files_total", outcome="processed") == 1
    assert sample(text, "syncd_pending_local_changes", target="news") == 7
    assert "_created" not in text  # no start-time twin per counter


def test_rejections_without_codes_and_dry_runs() -> None:
    metrics = Metrics()
    metrics.observe_cycle(cycle("rejected", rejected=1, held_rejected=5))
    metrics.observe_cycle(cycle("planned", create=9))
    text = metrics.render()[0].decode()
    assert sample(text, "syncd_rejected_rows_total", target="news", code="unspecified") == 1
    assert sample(text, "syncd_rows_total", target="news", operation="created") is None
    assert sample(text, "syncd_cycles_total", target="news", outcome="planned") == 1
    with pytest.raises(ValueError):
        metrics.observe_inbox("lost")


def test_healthz_and_readyz(server: StatusServer, probes: tuple[Probe, Probe]) -> None:
    health, ready = probes
    assert get(server, "/healthz") == (200, "application/json", '{"status": "ok"}\n')
    assert get(server, "/readyz")[0] == 200

    health.answer = (False, "scheduler not running")
    status, _, body = get(server, "/healthz")
    assert status == 503
    assert json.loads(body) == {"status": "failing", "reason": "scheduler not running"}

    ready.answer = (False, "store unreachable")
    status, _, body = get(server, "/readyz")
    assert (status, json.loads(body)["reason"]) == (503, "store unreachable")

    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    with StatusServer(LOOPBACK, health=broken, ready=broken, metrics=Metrics()) as other:
        status, _, body = get(other, "/readyz")
    assert status == 503 and "RuntimeError" in body


def test_routes_and_unknown_paths(server: StatusServer) -> None:
    seen: list[httpx.Request] = []

    def callback(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, headers={"Content-Type": "text/plain"}, content=b"thanks")

    server.add_route("POST", "/hooks/unisender", callback)
    req = urllib.request.Request(server.url + "/hooks/unisender/42?x=1", data=b"payload")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert (r.status, r.read()) == (202, b"thanks")
    url, body = seen[0].url, seen[0].content
    assert (url.path, url.query, body) == ("/hooks/unisender/42", b"x=1", b"payload")
    assert get(server, "/hooks/unisender")[0] == 405  # mounted for POST only
    assert get(server, "/hooks/unisenderx")[0] == 404  # prefixes match whole segments
    assert get(server, "/nope")[0] == 404


def test_port_taken_names_the_address(metrics: Metrics) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = HttpConfig(listen=f"127.0.0.1:{port}")
        s = StatusServer(taken, health=Probe(), ready=Probe(), metrics=metrics)
        with pytest.raises(ListenError, match=f"127.0.0.1:{port}"):
            s.start()


def test_off_is_refused() -> None:
    with pytest.raises(ValueError, match="off"):
        StatusServer(HttpConfig(listen="off"), health=Probe(), ready=Probe(), metrics=Metrics())


def test_the_listener_refuses_a_body_over_its_limit(server: StatusServer) -> None:
    server.add_route("POST", "/hooks", lambda request: httpx.Response(200))
    url = server.url + "/hooks/x"
    assert httpx.post(url, content=b"a" * (MAX_BODY + 1), timeout=5).status_code == 413
    assert httpx.post(url, content=b"a" * MAX_BODY, timeout=5).status_code == 200


def test_slow_clients_take_at_most_the_worker_bound_and_are_cut_off_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, metrics: Metrics
) -> None:
    monkeypatch.setattr(listener, "REQUEST_TIMEOUT", 2.0)
    with StatusServer(LOOPBACK, health=Probe(), ready=Probe(), metrics=metrics) as server:
        slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_WORKERS)]
        try:
            for conn in slow:
                conn.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the headers' end
            time.sleep(0.3)
            busy = httpx.get(server.url + "/healthz", timeout=5)
            assert (busy.status_code, busy.json()["reason"]) == (503, "too many connections")
            time.sleep(1.9)  # the deadline frees the slots
            codes = []
            for _ in range(20):
                codes.append(httpx.get(server.url + "/healthz", timeout=5).status_code)
                if codes[-1] != 503:
                    break
                time.sleep(0.1)
            assert codes[-1] == 200
        finally:
            for conn in slow:
                conn.close()


def test_an_incomplete_export_shows_in_metrics_as_partial_not_success(
    server: StatusServer, metrics: Metrics, world: World
) -> None:
    """A cycle whose export was cut short is counted under its own outcome and does not move
    the last-success time, so an alert or a probe reading /metrics can tell."""
    world.add_local(3)
    metrics.observe_cycle(world.cycle(), now=1000.0)
    world.add_local(1, start=10)
    world.emu.faults.export_truncate = True
    metrics.observe_cycle(world.cycle(), now=2000.0)
    _, _, text = get(server, "/metrics")
    assert sample(text, "syncd_cycles_total", target="news", outcome="partial") == 1
    assert sample(text, "syncd_cycles_total", target="news", outcome="converged") == 1
    assert sample(text, "syncd_last_success_timestamp_seconds", target="news") == 1000.0


def test_openmetrics_is_served_when_asked_for(server: StatusServer) -> None:
    openmetrics = httpx.get(
        server.url + "/metrics",
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
        timeout=5,
    )
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert "# TYPE syncd_build info" in openmetrics.text
    for accept in ("text/plain;version=0.0.4", "*/*", None):
        headers = {"Accept": accept} if accept else {}
        classic = httpx.get(server.url + "/metrics", headers=headers, timeout=5)
        assert classic.headers["Content-Type"].startswith("text/plain"), accept
        assert "# EOF" not in classic.text


def test_configured_targets_have_series_from_the_start_and_lose_them_when_removed() -> None:
    metrics = Metrics()
    metrics.track_targets(
        {"news": 300.0, "crm": 60.0},
        last_success={"news": 1000.0},
        last_cycle={"news": 1500.0},
        now=2000.0,
    )
    text = metrics.render()[0].decode()
    assert sample(text, "syncd_build_info", version=syncd.__version__) == 1
    assert sample(text, "syncd_schedule_interval_seconds", target="news") == 300
    assert sample(text, "syncd_last_success_timestamp_seconds", target="news") == 1000
    assert sample(text, "syncd_last_success_timestamp_seconds", target="crm") == 0  # never yet
    assert sample(text, "syncd_last_cycle_timestamp_seconds", target="news") == 1500
    assert sample(text, "syncd_last_cycle_timestamp_seconds", target="crm") == 2000  # the start
    for outcome in CYCLE_OUTCOMES:
        assert sample(text, "syncd_cycles_total", target="crm", outcome=outcome) == 0
    assert sample(text, "syncd_rows_total", target="crm", operation="rejected") == 0
    assert sample(text, "syncd_cycle_duration_seconds_count", target="crm") == 0
    assert sample(text, "syncd_lease_held", target="crm") == 0

    metrics.observe_cycle(cycle("converged", create=1), seconds=2.0, now=2100.0)
    crm = CycleResult("crm", "c2", outcome="rejected", counts=Counter(rejected=1))
    metrics.observe_cycle(crm, rejected_codes={"invalid_phone": 1})
    metrics.track_targets({"news": 600.0}, now=2200.0)  # a reload: crm gone, news kept
    text = metrics.render()[0].decode()
    assert "crm" not in text
    assert sample(text, "syncd_schedule_interval_seconds", target="news") == 600
    assert sample(text, "syncd_last_success_timestamp_seconds", target="news") == 2100


def test_a_cycle_sets_its_duration_times_and_conflicts() -> None:
    metrics = Metrics()
    metrics.track_targets({"news": 60.0}, now=0.0)
    metrics.observe_cycle(cycle("conflicts", conflicts_open=4), seconds=42.0, now=100.0)
    metrics.observe_cycle(cycle("unreachable"), seconds=0.3, now=200.0)
    metrics.exported("news", now=90.0)
    metrics.set_lease_held("news", True)
    text = metrics.render()[0].decode()
    assert sample(text, "syncd_cycle_duration_seconds_count", target="news") == 2
    assert sample(text, "syncd_cycle_duration_seconds_bucket", target="news", le="0.5") == 1
    assert sample(text, "syncd_cycle_duration_seconds_bucket", target="news", le="60.0") == 2
    assert sample(text, "syncd_last_cycle_timestamp_seconds", target="news") == 200
    assert sample(text, "syncd_last_success_timestamp_seconds", target="news") == 100
    assert sample(text, "syncd_last_complete_export_timestamp_seconds", target="news") == 90
    # an unreachable provider says nothing about the conflicts: the count stays
    assert sample(text, "syncd_open_conflicts", target="news") == 4
    assert sample(text, "syncd_lease_held", target="news") == 1


def test_the_inbox_backlog_is_counted_at_each_scrape(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.count_inbox_with(lambda: observe.inbox_backlog(tmp_path / "inbox"))
    assert sample(metrics.render()[0].decode(), "syncd_inbox_waiting_files") == 0  # no folder
    inbox = tmp_path / "inbox"
    (inbox / "processed").mkdir(parents=True)
    for name in ("a.csv", "b.ndjson", "c.csv.part", ".hidden.csv", "a.csv.report.json"):
        (inbox / name).write_text("email\n")
    assert sample(metrics.render()[0].decode(), "syncd_inbox_waiting_files") == 2


def test_the_last_runs_are_remembered_from_the_store(world: World) -> None:
    """After a restart the last-success and last-cycle times are the store's, not 0."""
    world.add_local(2)
    before = time.time()
    assert world.cycle().outcome == "converged"
    world.emu.faults.export_truncate = True
    world.add_local(1, start=10)
    assert world.cycle().outcome == "partial"
    success, cycles = observe.remembered_runs(world.db)
    assert set(success) == set(cycles) == {"news"}
    assert before - 1 <= success["news"] <= cycles["news"] <= time.time() + 1
    assert success["news"] < cycles["news"]  # the partial one ended later and was no success


def test_interval_seconds_of_intervals_and_cron() -> None:
    assert observe.interval_seconds("5m") == 300
    assert observe.interval_seconds("1d") == 86400
    assert observe.interval_seconds("*/10 * * * *") == 600
    assert observe.interval_seconds("0 9 * * 1-5") == 3 * 86400  # the weekend
