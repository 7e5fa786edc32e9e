"""`syncd run` as a real process: the ingest API in, signed webhooks out, against `syncd emulate`.

The webhook endpoint is a real loopback server in the test, answering as each test scripts it;
every delivery's signature is checked with the ``standardwebhooks`` package, not syncd's code.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    config_toml,
    daemon_tables,
    emulator_fixture,
    free_port,
    postgresql_schema,
    run_syncd,
    unisender_target,
    wait_for,
)
from standardwebhooks.webhooks import Webhook

from syncd.emulators.kit.server import LoopbackServer

KEY = "api-hooks-key-77d1"
TOKEN = "ingest-token-0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
pytestmark = pytest.mark.slow

emulator = emulator_fixture("unisender", KEY)


class Endpoint:
    """The company's webhook endpoint: answers ``status`` (changeable), verifies every request."""

    def __init__(self) -> None:
        self.status = 200
        self.lock = threading.Lock()
        self.attempts: list[dict[str, Any]] = []  # every request, verified
        self.delivered: list[dict[str, Any]] = []  # the events answered 2xx
        self.bad: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        try:
            event = Webhook(SECRET).verify(body, dict(request.headers))
        except Exception as exc:  # a bad signature must fail the test, not the server
            self.bad.append(repr(exc))
            return httpx.Response(400)
        with self.lock:
            self.attempts.append(event)
            status = self.status
            if 200 <= status < 300:
                self.delivered.append(event)
        return httpx.Response(status)

    def got(self, kind: str, key: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.delivered if e["kind"] == kind and e["key"] == key]

    def tries(self, kind: str, key: str) -> int:
        with self.lock:
            return sum(1 for e in self.attempts if e["kind"] == kind and e["key"] == key)


@pytest.fixture
def endpoint() -> Iterator[tuple[Endpoint, str]]:
    e = Endpoint()
    with LoopbackServer(e, "127.0.0.1", 0) as server:
        yield e, server.url + "/hooks/syncd"


class Daemon:
    def __init__(
        self,
        tmp: Path,
        emulator: str,
        hook_url: str,
        store: str | None = None,
        # the emulator allows 20 exports a minute per account, as Unisender does
        schedule: str = "4s",
    ) -> None:
        self.tmp, self.emulator = tmp, emulator
        self.port = free_port()
        tables = daemon_tables(tmp, f"127.0.0.1:{self.port}", debounce=0.2, stop_timeout=10)
        tables["http"] |= {"ingest_token": "${SYNCD_INGEST_TOKEN}", "max_body": 4096}
        if store is not None:
            tables = {"store": {"url": store}, **tables}
        target = unisender_target(
            emulator,
            "newsletter",
            api_key="${TEST_UNISENDER_KEY}",
            schedule=schedule,
            jitter=0,
            export_poll_interval=0.05,
            export_rate_limit_per_minute=100000,
        )
        text = config_toml(tmp, target, **tables)
        text += (
            '[[webhook]]\nname = "app"\n'
            f'url = "{hook_url}"\nsecret = "${{SYNCD_WEBHOOK_SECRET}}"\n'
            "timeout = 1\nbackoff_first = 0.4\nbackoff_max = 1\n"
        )
        self.config = tmp / "syncd.toml"
        self.config.write_text(text, encoding="utf-8")
        self.env = {
            **os.environ,
            "TEST_UNISENDER_KEY": KEY,
            "SYNCD_INGEST_TOKEN": TOKEN,
            "SYNCD_WEBHOOK_SECRET": SECRET,
        }
        self.env.pop("SYNCD_CONFIG", None)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "--config", str(self.config)],
            env=self.env,
            stdout=(self.tmp / f"daemon-{self.port}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, what="/healthz")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)

    def post(self, body: bytes, token: str = TOKEN, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/contacts",
            content=body,
            headers={"Authorization": f"Bearer {token}", **headers},
            timeout=10,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_syncd(*args, "--config", str(self.config), cwd=self.tmp, env=self.env)

    def log(self) -> str:
        return (self.tmp / f"daemon-{self.port}.log").read_text(encoding="utf-8", errors="replace")


def remote(emulator: str) -> dict[str, dict[str, Any]]:
    state = httpx.get(f"{emulator}/_emulator/state", params={"list_id": 1}).json()
    return {c["email"]: c for c in state["contacts"]}


def imports(emulator: str) -> int:
    calls = httpx.get(f"{emulator}/_emulator/calls").json()["calls"]
    return int(calls.get("importContacts", 0))


def at_provider(emulator: str, action: str, email: str, **more: Any) -> None:
    body = {"action": action, "email": email, "list_id": 1, **more}
    httpx.post(f"{emulator}/_emulator/contact", json=body, timeout=5).raise_for_status()


def ndjson(*records: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def test_the_api_applies_good_lines_names_bad_ones_and_the_target_syncs_at_once(
    tmp_path: Path, emulator: str, endpoint: tuple[Endpoint, str]
) -> None:
    # only the API can start a cycle: the schedule is an hour away
    d = Daemon(tmp_path, emulator, endpoint[1], schedule="1h")
    d.start()
    try:
        wait_for(lambda: "syncd_cycles_total{" in httpx.get(f"{d.url}/metrics").text)
        body = ndjson(
            {"email": "Ann@Example.com", "name": "Ann", "lists": ["newsletter"]},
            {"email": "not-an-address", "lists": ["newsletter"]},
            {"email": "bob@example.com", "name": "Bob", "lists": ["newsletter"]},
        )
        assert d.post(body, token="x" * 30).status_code == 401
        assert httpx.post(f"{d.url}/v1/contacts", content=body).status_code == 401
        before = imports(emulator)
        started = time.monotonic()
        answer = d.post(body, **{"Idempotency-Key": "batch-1"})
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert got["applied"] == 2 and got["created"] == 2
        assert [(r["line"], r["key"]) for r in got["rejected"]] == [(2, "not-an-address")]
        wait_for(lambda: imports(emulator) > before, what="a write call", timeout=10)
        latency = time.monotonic() - started
        # within the inbox's latency (the benchmark holds it to 1 s on an idle machine)
        assert latency < 5, latency
        wait_for(lambda: {"ann@example.com", "bob@example.com"} <= set(remote(emulator)))

        again = d.post(body, **{"Idempotency-Key": "batch-1"})
        assert again.json() == got and again.headers["idempotent-replayed"] == "true"
        other = d.post(ndjson({"email": "cy@example.com"}), **{"Idempotency-Key": "batch-1"})
        assert other.status_code == 422
        assert d.post(b"x" * 5000).status_code == 413
        assert d.post(b"[{]").status_code == 400
        contact = httpx.get(
            f"{d.url}/v1/contacts/ANN@example.com", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert contact.status_code == 200
        assert contact.json()["fields"] == {"name": "Ann"}
        assert contact.json()["lists"] == ["newsletter"]
        assert httpx.get(f"{d.url}/v1/contacts/ann@example.com").status_code == 401

        # consent never comes back through the API: an unsubscribe at the provider stays, and
        # the edit's sync brings it to the company as a signed webhook
        at_provider(emulator, "unsubscribe", "ann@example.com")
        edit = d.post(ndjson({"email": "ann@example.com", "name": "Ann B", "status": "active"}))
        assert edit.json()["applied"] == 1
        wait_for(lambda: endpoint[0].got("list_unsubscribe", "ann@example.com"), what="the webhook")
        wait_for(
            lambda: remote(emulator)["ann@example.com"]["fields"].get("Name") == "Ann B",
            what="the edit at the provider",
        )
        ann = remote(emulator)["ann@example.com"]
        assert ann["email_status"] != "active" or 1 in ann["unsubscribed"]
    finally:
        assert d.stop() == 0
    assert TOKEN not in d.log() and SECRET not in d.log()
    assert not endpoint[0].bad


def test_webhooks_are_signed_retried_dead_lettered_replayed_and_survive_sigkill(
    tmp_path: Path, emulator: str, endpoint: tuple[Endpoint, str]
) -> None:
    e, url = endpoint
    d = Daemon(tmp_path, emulator, url)
    for i in range(4):
        at_provider(emulator, "sign_up", f"p{i}@example.com")
    d.start()
    try:
        for i in range(4):  # remote sign-ups come back as contact.created events
            wait_for(lambda i=i: e.got("signup", f"p{i}@example.com"), what=f"p{i} signup")

        e.status = 503  # the endpoint fails: retried with backoff, then delivered
        at_provider(emulator, "unsubscribe", "p0@example.com")
        wait_for(lambda: e.tries("list_unsubscribe", "p0@example.com") >= 3, what="three attempts")
        e.status = 200
        wait_for(lambda: e.got("list_unsubscribe", "p0@example.com"), what="the retried event")
        ids = {
            x["id"] for x in e.attempts if x["key"] == "p0@example.com" and x["kind"] != "signup"
        }
        assert len(ids) == 1  # the same event (webhook-id) each time

        e.status = 410  # gone: the endpoint is turned off, the event dead-lettered
        at_provider(emulator, "unsubscribe", "p1@example.com")
        wait_for(lambda: "turned off" in d.cli("status").stdout, what="status shows it off")
        status = d.cli("status").stdout
        assert "dead: app" in status and "p1@example.com" in status
        tries = e.tries("list_unsubscribe", "p1@example.com")
        e.status = 200
        time.sleep(1.5)
        assert e.tries("list_unsubscribe", "p1@example.com") == tries  # not called while off
        replay = d.cli("webhooks", "replay", "--since", "1h")
        assert replay.returncode == 0 and replay.stdout.startswith("1 "), replay.stdout
        wait_for(lambda: e.got("list_unsubscribe", "p1@example.com"), what="the replayed event")

        metrics = httpx.get(f"{d.url}/metrics").text
        assert 'syncd_webhook_deliveries_total{outcome="delivered",webhook="app"}' in metrics
        assert 'syncd_webhook_deliveries_total{outcome="gone",webhook="app"}' in metrics
        assert "syncd_webhook_oldest_undelivered_seconds" in metrics

        e.status = 503  # then the daemon is killed with the event undelivered
        at_provider(emulator, "unsubscribe", "p2@example.com")
        wait_for(lambda: e.tries("list_unsubscribe", "p2@example.com") >= 1, what="an attempt")
    finally:
        d.stop(signal.SIGKILL)
    e.status = 200
    d.start()
    try:
        wait_for(lambda: e.got("list_unsubscribe", "p2@example.com"), what="delivery after SIGKILL")
    finally:
        assert d.stop() == 0
    assert not e.bad


def test_two_replicas_on_one_postgresql_store_never_deliver_an_event_twice(
    tmp_path: Path, emulator: str, endpoint: tuple[Endpoint, str]
) -> None:
    e, url = endpoint
    with postgresql_schema() as store:
        replicas = []
        for i in range(2):
            folder = tmp_path / f"r{i}"
            folder.mkdir()
            replicas.append(Daemon(folder, emulator, url, store=store, schedule="6s"))
        for r in replicas:
            r.start()
        try:
            n = 40
            for i in range(n):
                at_provider(emulator, "sign_up", f"s{i}@example.com")
            wait_for(
                lambda: len({x["key"] for x in e.delivered}) >= n, what="every event", timeout=60
            )
            for i in range(0, n, 2):
                at_provider(emulator, "unsubscribe", f"s{i}@example.com")
            wait_for(lambda: len(e.delivered) >= n + n // 2, what="every event", timeout=60)
            time.sleep(3)  # room for a duplicate to show up
        finally:
            for r in replicas:
                assert r.stop() == 0
    ids = [x["id"] for x in e.delivered]
    assert len(ids) == len(set(ids)) == n + n // 2
    # per contact, in the order recorded: the sign-up before the unsubscribe
    for i in range(0, n, 2):
        kinds = [x["kind"] for x in e.delivered if x["key"] == f"s{i}@example.com"]
        assert kinds == ["signup", "list_unsubscribe"]  # the list left at the provider
    assert not e.bad


def test_run_once_delivers_what_is_due_and_status_json_shows_the_queue(
    tmp_path: Path, emulator: str, endpoint: tuple[Endpoint, str]
) -> None:
    e, url = endpoint
    d = Daemon(tmp_path, emulator, url)
    at_provider(emulator, "sign_up", "solo@example.com")
    e.status = 500
    at_provider(emulator, "sign_up", "second@example.com")
    first = d.cli("run-once")
    assert first.returncode == 0, first.stderr
    assert {x["key"] for x in e.attempts} == {"solo@example.com", "second@example.com"}
    assert e.delivered == []  # both failed once: they wait for their retry
    lines = [json.loads(line) for line in d.cli("status", "--json").stdout.splitlines()]
    (queue,) = [line for line in lines if "webhooks" in line]
    assert queue["webhooks"][0] | {"disabled": None} == {
        "name": "app",
        "configured": True,
        "pending": 2,
        "dead": 0,
        "disabled": None,
    }
    assert queue["oldest_undelivered_seconds"] >= 0
    e.status = 200
    time.sleep(1.1)  # backoff_max: both are due again
    assert d.cli("run-once").returncode == 0
    assert {x["key"] for x in e.delivered} == {"solo@example.com", "second@example.com"}
    assert not e.bad
