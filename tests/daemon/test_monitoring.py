"""What ships for operators matches a real `syncd run`: every metric the Grafana dashboard and the
alert rules read is one the daemon serves after a real cycle against `syncd emulate`, /metrics
speaks OpenMetrics when asked, and systemd's STATUS= follows the cycle over a real
NOTIFY_SOCKET."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from conftest import daemon_config, emulator_process, free_port, people_csv, wait_for
from monitoring_files import alert_expressions, dashboard_expressions, metric_names
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import syncd

KEY = "monitoring-test-key-71d3"
IDLE = re.compile(r"idle; last cycle converged \d\d:\d\d:\d\d UTC \(newsletter\); 1 target\(s\)")

pytestmark = pytest.mark.slow


# -- one real daemon for the module -----------------------------------------------------------


@dataclass
class Running:
    url: str
    emulator: str
    statuses: list[str] = field(default_factory=list)

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=headers, timeout=5)

    def scrape(self) -> str:
        return self.get("/metrics").text


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """`syncd run` against `syncd emulate unisender`, after a cycle that pushed 30 contacts
    dropped in its inbox, with every STATUS= it sent to a NOTIFY_SOCKET read as systemd does."""
    tmp = tmp_path_factory.mktemp("monitoring")
    (tmp / "inbox").mkdir()
    (tmp / "inbox" / "people.csv").write_text(
        people_csv(range(30), prefix="m", city="Minsk"), encoding="utf-8"
    )
    port = free_port()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    notify.settimeout(0.2)
    datagrams: list[str] = []
    done = threading.Event()

    def read() -> None:  # as systemd does: the queue never fills up
        while not done.is_set():
            try:
                datagrams.append(notify.recv(4096).decode())
            except TimeoutError:
                continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with emulator_process("unisender", KEY) as emulator:
        config = tmp / "syncd.toml"
        listen = f"127.0.0.1:{port}"
        config.write_text(
            daemon_config(tmp, emulator, listen, "MONITORING_KEY", schedule="1m"), encoding="utf-8"
        )
        env = {**os.environ, "MONITORING_KEY": KEY, "NOTIFY_SOCKET": str(tmp / "notify.sock")}
        env.pop("SYNCD_CONFIG", None)
        log = (tmp / "daemon.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "--config", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        run = Running(f"http://{listen}", emulator)
        try:
            created = {"target": "newsletter", "operation": "created"}
            wait_for(
                lambda: sample(run.scrape(), "syncd_rows_total", **created) == 30,
                what="30 contacts created at the provider",
            )

            def idle_after_the_push() -> bool:
                _, pushed, after = " ".join(datagrams).rpartition("pushing 30 differing keys")
                return bool(pushed and IDLE.search(after))

            wait_for(idle_after_the_push, what="STATUS=idle after the cycle that pushed")
            run.statuses = [d.removeprefix("STATUS=") for d in datagrams if "STATUS=" in d]
            yield run
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            log.close()
            done.set()
            reader.join()
            notify.close()


def exported_names(exposition: str) -> set[str]:
    """Every name a query may use: the samples served, and for a family with no sample yet (a
    counter whose labels have not been seen, e.g. a provider's error code) its sample names."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    for family in text_string_to_metric_families(exposition):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_the_dashboard_and_the_alerts_read_is_served(
    running: Running, source: str
) -> None:
    expressions = dashboard_expressions() if source == "dashboard" else alert_expressions()
    assert len(expressions) >= 7
    served = exported_names(running.scrape())
    used = set().union(*(metric_names(e) for e in expressions))
    assert used, expressions
    assert not used - served, f"{source} reads metrics syncd does not export: {used - served}"


def test_the_series_after_a_real_cycle(running: Running) -> None:
    text = running.scrape()
    target = {"target": "newsletter"}
    assert sample(text, "syncd_build_info", version=syncd.__version__) == 1
    converged = sample(text, "syncd_cycles_total", outcome="converged", **target)
    assert converged and converged >= 1  # the inbox file's and perhaps the first tick's
    assert sample(text, "syncd_cycles_total", outcome="refused", **target) == 0  # from the start
    assert sample(text, "syncd_cycle_duration_seconds_count", **target) == converged
    assert sample(text, "syncd_schedule_interval_seconds", **target) == 60
    # 1 only while a cycle runs (another may have started since): the values are unit-tested
    assert sample(text, "syncd_lease_held", **target) in (0, 1)
    assert sample(text, "syncd_open_conflicts", **target) == 0
    assert sample(text, "syncd_inbox_waiting_files") == 0
    ended = sample(text, "syncd_last_cycle_timestamp_seconds", **target)
    success = sample(text, "syncd_last_success_timestamp_seconds", **target)
    exported = sample(text, "syncd_last_complete_export_timestamp_seconds", **target)
    assert ended and success and exported
    assert exported <= success <= ended


def test_openmetrics_when_the_scraper_asks_for_it(running: Running) -> None:
    prometheus_accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    answer = running.get("/metrics", Accept=prometheus_accept)
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(answer.text)}
    assert families["syncd_build"].type == "info"
    assert families["syncd_cycles"].type == "counter"
    classic = running.get("/metrics")
    assert classic.headers["Content-Type"].startswith("text/plain")
    assert "# EOF" not in classic.text


def test_status_follows_the_cycle(running: Running) -> None:
    """STATUS= says what the cycle is doing, then that it is idle and how the last one ended."""
    statuses = running.statuses

    def first(pattern: str) -> int:
        for i, text in enumerate(statuses):
            if re.search(pattern, text):
                return i
        raise AssertionError(f"no STATUS= matching {pattern!r} in {statuses}")

    # the cycle that pushed the inbox file's contacts; another may have run before it
    pushing = first(r"^newsletter: pushing 30/30; 1 target\(s\)$")
    before, after = statuses[:pushing], statuses[pushing + 1 :]
    assert "newsletter: exporting; 1 target(s)" in before
    assert any(IDLE.fullmatch(s) for s in after), after
    assert all("\n" not in s for s in statuses)
