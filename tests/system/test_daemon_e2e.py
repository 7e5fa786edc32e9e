"""`syncd run` as a real process against `syncd emulate`: inbox, convergence, signals, restart."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import daemon_config, emulator_fixture, free_port, people_csv, run_syncd, wait_for

KEY = "daemon-e2e-key-5b2c"
pytestmark = pytest.mark.slow


emulator = emulator_fixture("unisender", KEY)


class DaemonWorld:
    def __init__(self, tmp: Path, emulator: str) -> None:
        self.tmp, self.emulator = tmp, emulator
        self.inbox, self.outbox = tmp / "inbox", tmp / "outbox"
        self.http_port = free_port()
        self.config = tmp / "syncd.toml"
        listen = f"127.0.0.1:{self.http_port}"
        daemon = {"stop_timeout": 10}
        text = daemon_config(tmp, emulator, listen, "DAEMON_TEST_KEY", daemon, schedule="2s")
        self.config.write_text(text, encoding="utf-8")
        self.env = {**os.environ, "DAEMON_TEST_KEY": KEY}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"

    def start(self, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "--config", str(self.config)],
            env={**self.env, **env},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.get("/healthz").status_code == 200, what="/healthz")

    def stop(self) -> tuple[int, float]:
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        return code, time.monotonic() - started

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.http_port}{path}", timeout=5)

    def drop(self, name: str, text: str) -> None:
        """Written beside, then renamed in: the way a careful writer delivers a file."""
        tmp = self.inbox / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.rename(self.inbox / name)

    def remote(self) -> dict[str, dict[str, Any]]:
        state = httpx.get(f"{self.emulator}/_emulator/state", params={"list_id": 1}).json()
        return {c["email"]: c for c in state["contacts"]}

    def local(self) -> dict[str, dict[str, Any]]:
        out = run_syncd("export", "--config", str(self.config), cwd=self.tmp, env=self.env).stdout
        return {r["email"]: r for r in map(json.loads, out.splitlines())}


def people(start: int, n: int) -> str:
    return people_csv(range(start, start + n), prefix="u", city="Minsk")


def test_daemon_converges_stops_cleanly_and_picks_up_files_on_restart(tmp_path, emulator):
    w = DaemonWorld(tmp_path, emulator)
    w.inbox.mkdir()
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    seen: list[bytes] = []
    reading = threading.Event()

    def read_notifications() -> None:  # as systemd does: the queue must never fill up
        while not reading.is_set():
            try:
                seen.append(notify.recv(4096))
            except TimeoutError:
                continue

    reader = threading.Thread(target=read_notifications, daemon=True)
    reader.start()
    w.start(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="400000")

    w.drop("first.csv", people(0, 30))
    w.drop("broken.csv", 'email,name\n"unterminated,quote\n')
    # a slow writer: the file appears, grows in pieces, and is taken only once closed
    with (w.inbox / "slow.csv").open("w", encoding="utf-8") as f:
        f.write(people(30, 15)[:60])
        f.flush()
        time.sleep(0.6)
        f.write(people(30, 15)[60:])
    wait_for(lambda: len(w.remote()) == 45, what="45 contacts at the provider")
    broken_report = w.inbox / "failed" / "broken.csv.report.json"
    wait_for(broken_report.exists, what="broken.csv's report in failed/")
    report = json.loads(broken_report.read_text())
    assert "error" in report

    # a change at the provider flows back without a restart, and reaches the outbox
    httpx.post(
        f"{emulator}/_emulator/contact",
        json={"action": "unsubscribe", "email": "u3@example.com", "list_id": 1},
    )
    # an unsubscribe from the list: that list's consent, the contact's own status unchanged
    wait_for(
        lambda: w.local()["u3@example.com"]["unsubscribed_lists"] == ["newsletter"], what="pull"
    )
    events = [
        json.loads(line)
        for f in sorted(w.outbox.glob("*.ndjson"))
        for line in f.read_text().splitlines()
    ]
    assert any(e["key"] == "u3@example.com" and e["kind"] == "list_unsubscribe" for e in events)

    metrics = w.get("/metrics").text
    assert 'syncd_cycles_total{outcome="converged",target="newsletter"}' in metrics
    assert 'syncd_inbox_files_total{outcome="failed"} 1.0' in metrics
    assert w.get("/readyz").status_code == 200

    code, took = w.stop()
    assert code == 0 and took < 10

    time.sleep(0.3)
    reading.set()
    reader.join()
    everything = b"\n".join(seen)
    for needle in (b"READY=1", b"WATCHDOG=1", b"STOPPING=1", b"STATUS="):
        assert needle in everything, everything

    # files dropped while the daemon is down are picked up at start
    w.drop("while-down.csv", people(100, 5))
    w.start()
    wait_for(lambda: "u104@example.com" in w.remote(), what="file dropped while down")
    assert w.stop()[0] == 0

    log_lines = w.log.read_text().splitlines()
    records = [json.loads(line) for line in log_lines if line.startswith("{")]
    assert records and len(records) == len([ln for ln in log_lines if ln.strip()])
    assert any(r.get("target") == "newsletter" and r.get("cycle") for r in records)
    assert KEY not in w.log.read_text()


def test_sigkill_during_ingestion_loses_nothing_and_applies_nothing_twice(tmp_path, emulator):
    w = DaemonWorld(tmp_path, emulator)
    w.inbox.mkdir()
    w.start()
    w.drop("big.csv", people_csv(range(20000), "K", prefix="k", city="Minsk"))
    time.sleep(0.4)  # in the middle of reading or applying it
    assert w.proc is not None
    w.proc.kill()
    w.proc.wait()
    w.start()
    big_report = w.inbox / "processed" / "big.csv.report.json"
    wait_for(big_report.exists, timeout=60, what="big.csv's report in processed/")
    local = w.local()
    assert len([e for e in local if e.startswith("k")]) == 20000
    report = json.loads(big_report.read_text())
    assert report["created"] in (0, 20000)  # 0 when the first run had committed it already
    assert not list(w.inbox.glob("*.csv"))
    assert w.stop()[0] == 0


def test_a_reloaded_ingest_setting_applies_to_the_next_inbox_file(tmp_path, emulator):
    w = DaemonWorld(tmp_path, emulator)
    w.inbox.mkdir()
    w.start()
    w.config.write_text(w.config.read_text() + "\n[ingest]\nreject_role_addresses = false\n")
    wait_for(lambda: "configuration reloaded" in w.log.read_text(), what="reload on change")
    (w.inbox / ".role.tmp").write_text('{"email": "info@example.com", "lists": ["news"]}\n')
    (w.inbox / ".role.tmp").rename(w.inbox / "role.ndjson")
    reports = [w.inbox / f / "role.ndjson.report.json" for f in ("processed", "failed")]
    wait_for(lambda: any(r.exists() for r in reports), what="the file's report")
    assert reports[0].exists(), reports[1].read_text()  # by default a role address is refused
    assert json.loads(reports[0].read_text())["rejected"] == []
    assert w.stop()[0] == 0


def test_config_reload_on_change_and_sighup_keeps_running_on_invalid(tmp_path, emulator):
    w = DaemonWorld(tmp_path, emulator)
    w.inbox.mkdir()
    w.start()
    good = w.config.read_text()
    w.config.write_text(good + "\n[[target]]\nname = 'broken'\nprovider = 'nope'\n")
    wait_for(lambda: "configuration not reloaded" in w.log.read_text(), what="refused reload")
    assert w.get("/healthz").status_code == 200  # the old configuration keeps running

    w.config.write_text(good.replace('schedule = "2s"', 'schedule = "3s"'))
    wait_for(lambda: "configuration reloaded" in w.log.read_text(), what="reload on change")
    before = w.log.read_text().count("configuration reloaded")
    w.config.write_text(good)  # a change, then SIGHUP as well: both end in a reload
    assert w.proc is not None
    w.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: w.log.read_text().count("configuration reloaded") > before, what="reload on SIGHUP"
    )
    assert w.stop()[0] == 0


def test_a_fifo_in_the_inbox_neither_wedges_ingestion_nor_the_stop(tmp_path, emulator):
    w = DaemonWorld(tmp_path, emulator)
    w.inbox.mkdir()
    w.start()
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    fifo.rename(w.inbox / "pipe.csv")
    try:
        w.drop("good.csv", people(0, 3))
        wait_for(
            (w.inbox / "processed" / "good.csv.report.json").exists,
            what="the good file after the FIFO applied",
        )
        wait_for((w.inbox / "failed" / "pipe.csv.report.json").exists, what="the FIFO's report")
        report = json.loads((w.inbox / "failed" / "pipe.csv.report.json").read_text())
        assert "FIFO" in report["error"]
        assert {f"u{i}@example.com" for i in range(3)} <= set(w.local())
        code, took = w.stop()
        assert code == 0 and took < 10  # the config's stop_timeout
    finally:
        for place in (w.inbox / "pipe.csv", w.inbox / "failed" / "pipe.csv"):
            with contextlib.suppress(OSError):  # a reader stuck on it gets its end of file
                os.close(os.open(place, os.O_WRONLY | os.O_NONBLOCK))
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
