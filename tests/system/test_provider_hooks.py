"""Provider webhooks in, end to end: `syncd run` and `syncd emulate` as real processes.

A change made at the emulator's admin routes makes the emulator POST its event to the daemon's
``/hooks/{target}/{token}``; the daemon re-reads the contact and reconciles it alone. The
targets' schedules are an hour, so only a webhook (or a cycle a test starts) can bring a change
in while the test runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import config_toml, daemon_tables, emulator_process, free_port, run_syncd, wait_for

KEY = "hooks-e2e-key-77d1"
LOGIN = "ops@example.com"
pytestmark = pytest.mark.slow


class World:
    """A daemon with one hooked target on an emulator, and the ways to look at both sides."""

    def __init__(self, tmp: Path, emulator: str, target: dict[str, Any]) -> None:
        self.tmp, self.emulator = tmp, emulator
        self.inbox, self.outbox = tmp / "inbox", tmp / "outbox"
        self.inbox.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tables = daemon_tables(tmp, f"127.0.0.1:{self.port}", debounce=0.1, hook_check_interval=1)
        tables["http"]["public_url"] = self.url
        self.config = tmp / "syncd.toml"
        self.config.write_text(config_toml(tmp, target, **tables), encoding="utf-8")
        self.env = {**os.environ, "HOOKS_TEST_KEY": KEY}
        self.env.pop("SYNCD_CONFIG", None)
        self.log = tmp / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "--config", str(self.config)],
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, what="/healthz")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def syncd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_syncd(*args, "--config", str(self.config), cwd=self.tmp, env=self.env)

    def drop(self, name: str, text: str) -> None:
        (self.inbox / f".{name}").write_text(text, encoding="utf-8")
        (self.inbox / f".{name}").rename(self.inbox / name)

    def local(self) -> dict[str, dict[str, Any]]:
        out = self.syncd("export").stdout
        return {r["email"] or r["phone"]: r for r in map(json.loads, out.splitlines())}

    def events(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for f in sorted(self.outbox.glob("*.ndjson"))
            for line in f.read_text().splitlines()
        ]

    def metric(self, name: str, **labels: str) -> float:
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(name)):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def admin(self, op: str, body: dict[str, Any]) -> Any:
        return httpx.post(f"{self.emulator}/_emulator/{op}", json=body).json()

    def hook_url(self) -> str:
        lines = self.syncd("hooks", "status", "--json").stdout.splitlines()
        return str(json.loads(lines[0])["url"])


def contacts_csv(n: int) -> str:
    rows = "".join(f"u{i}@example.com,User {i},newsletter\n" for i in range(n))
    return "email,name,lists\n" + rows


@pytest.fixture
def unisender(tmp_path: Path) -> Iterator[World]:
    with emulator_process("unisender", KEY) as emulator:
        target = {
            "name": "newsletter",
            "provider": "unisender",
            "list_id": "1",
            "base_url": f"{emulator}/en/api",
            "api_key": "${HOOKS_TEST_KEY}",
            "fields": {"Name": "name"},
            "schedule": "1h",
            "jitter": 0,
            "export_poll_interval": 0.05,
            "hooks": True,
        }
        world = World(tmp_path, emulator, target)
        world.start()
        world.drop("first.csv", contacts_csv(5))
        state = f"{emulator}/_emulator/state"
        wait_for(lambda: len(httpx.get(state, params={"list_id": 1}).json()["contacts"]) == 5
                 and world.metric("syncd_lease_held", target="newsletter") == 0,
                 what="the first cycle")  # fmt: skip
        installed = world.syncd("hooks", "install")
        assert installed.returncode == 0, installed.stderr
        assert installed.stdout.startswith(f"newsletter: active {world.url}/hooks/newsletter/")
        try:
            yield world
        finally:
            if world.proc is not None and world.proc.poll() is None:
                world.stop()


def unsubscribed(world: World, email: str) -> bool:
    return world.local()[email]["unsubscribed_lists"] == ["newsletter"]


def test_an_unsubscribe_at_the_provider_reaches_the_mirror_and_outbox_through_its_hook(
    unisender: World,
) -> None:
    w = unisender
    status = json.loads(w.syncd("hooks", "status", "--json").stdout)
    assert status["state"] == "active" and status["url"].startswith(f"{w.url}/hooks/newsletter/")
    cycles = w.metric("syncd_cycles_total", outcome="converged", target="newsletter")
    reads = w.metric("syncd_api_calls_total", provider="unisender", method="getContact",
                     outcome="ok")  # fmt: skip
    w.admin("contact", {"action": "unsubscribe", "email": "u1@example.com", "list_id": 1})
    wait_for(lambda: unsubscribed(w, "u1@example.com"), timeout=10, what="the hook's re-read")
    wait_for(lambda: any(e["key"] == "u1@example.com" and e["kind"] == "list_unsubscribe"
                         for e in w.events()), timeout=5, what="the outbox event")  # fmt: skip
    assert not unsubscribed(w, "u2@example.com")
    assert w.metric("syncd_hooks_received_total", outcome="queued", target="newsletter") == 1
    assert w.metric("syncd_api_calls_total", provider="unisender", method="getContact",
                    outcome="ok") == reads + 1  # fmt: skip
    # no full cycle ran: the hour's schedule has not come, and the change came anyway
    assert w.metric("syncd_cycles_total", outcome="converged", target="newsletter") == cycles

    removed = w.syncd("hooks", "remove", "--json")
    assert json.loads(removed.stdout)["state"] == "removed", removed.stderr
    assert httpx.post(f"{w.emulator}/en/api/listHooks", data={"api_key": KEY}).json() == {
        "result": []
    }
    assert httpx.post(status["url"], json={"auth": "x"}).status_code == 403  # retired
    assert w.syncd("hooks", "status").returncode == 1
    assert w.stop() == 0
    assert KEY not in w.log.read_text()


def signed(body: dict[str, Any], key: str) -> bytes:
    template = json.dumps({**body, "auth": key}, separators=(",", ":"))
    digest = hashlib.md5(template.encode(), usedforsecurity=False).hexdigest()
    return json.dumps({**body, "auth": digest}, separators=(",", ":")).encode()


def test_a_forged_or_misaddressed_hook_is_refused_and_queues_nothing(unisender: World) -> None:
    w = unisender
    url = w.hook_url()
    event = {
        "events_by_user": [
            {
                "user_id": 1,
                "events": [
                    {
                        "event_name": "unsubscribe",
                        "event_data": {"email": "u1@example.com", "list_id": 1},
                    }
                ],
            }
        ]
    }
    # the contact is really unsubscribed at the provider, so a re-read would pull it: a refused
    # hook must cause none
    w.admin("hooks", {"drop_rate": 1.0})
    w.admin("contact", {"action": "unsubscribe", "email": "u1@example.com", "list_id": 1})
    forged = httpx.post(url, content=signed(event, "not-the-key"))
    wrong_token = httpx.post(url[:-3] + "abc", content=signed(event, KEY))
    unknown = httpx.post(f"{w.url}/hooks/elsewhere/{url.rsplit('/', 1)[1]}", content=b"{}")
    assert (forged.status_code, wrong_token.status_code, unknown.status_code) == (403, 403, 403)
    time.sleep(1.0)  # what a re-read would take, many times over
    assert not unsubscribed(w, "u1@example.com")
    assert w.metric("syncd_hooks_received_total", outcome="forbidden", target="newsletter") == 2
    assert w.metric("syncd_api_calls_total", provider="unisender", method="getContact",
                    outcome="ok") == 0  # fmt: skip
    # the same body signed with the key is taken
    assert httpx.post(url, content=signed(event, KEY)).status_code == 200
    wait_for(lambda: unsubscribed(w, "u1@example.com"), timeout=10, what="the signed hook")


def test_a_duplicated_delivery_is_one_re_read(unisender: World) -> None:
    w = unisender
    w.admin("hooks", {"duplicate_rate": 1.0})
    w.admin("contact", {"action": "block", "email": "u2@example.com"})
    wait_for(lambda: w.local()["u2@example.com"]["status"] == "blocked", timeout=10,
             what="the blocked status")  # fmt: skip
    (delivery,) = w.admin("hooks", {})["deliveries"]
    assert delivery["outcome"] == "delivered"
    assert w.metric("syncd_hooks_received_total", outcome="duplicate", target="newsletter") == 1
    assert w.metric("syncd_api_calls_total", provider="unisender", method="getContact",
                    outcome="ok") == 1  # fmt: skip


def test_a_lost_hook_changes_nothing_and_the_next_cycle_still_converges(unisender: World) -> None:
    w = unisender
    w.admin("hooks", {"drop_rate": 1.0})
    w.admin("contact", {"action": "unsubscribe", "email": "u3@example.com", "list_id": 1})
    time.sleep(1.0)
    assert not unsubscribed(w, "u3@example.com")
    once = w.syncd("run-once")
    assert once.returncode == 0, once.stdout + once.stderr
    assert unsubscribed(w, "u3@example.com")


def test_a_hook_the_provider_stopped_is_installed_again_by_the_daemon(unisender: World) -> None:
    w = unisender
    w.admin("hooks", {"retry_interval": 0.05, "give_up_after": 0.3})
    assert w.stop() == 0  # deliveries now fail until the provider gives up
    w.admin("contact", {"action": "unsubscribe", "email": "u4@example.com", "list_id": 1})
    wait_for(lambda: "stopped" in w.syncd("hooks", "status").stdout, timeout=10,
             what="the hook stopped")  # fmt: skip
    assert w.syncd("hooks", "status").returncode == 1
    w.admin("contact", {"action": "unsubscribe", "email": "u0@example.com", "list_id": 1})
    w.start()
    wait_for(lambda: "active" in w.syncd("hooks", "status").stdout, timeout=10,
             what="the hook installed again")  # fmt: skip
    assert "installed again" in w.log.read_text()
    assert w.metric("syncd_hook_reinstalls_total", target="newsletter") == 1
    # what the provider kept back while the hook was stopped comes on re-activation
    wait_for(lambda: unsubscribed(w, "u0@example.com"), timeout=10, what="the kept-back event")


def test_an_octopush_stop_opts_the_number_out_in_the_mirror(tmp_path: Path) -> None:
    with emulator_process("octopush", KEY) as emulator:
        target = {
            "name": "sms",
            "provider": "octopush",
            "list_id": "Newsletter",
            "base_url": f"{emulator}/v1/public",
            "api_key": "${HOOKS_TEST_KEY}",
            "api_login": LOGIN,
            "key": "phone",
            "local_list": "newsletter",
            "fields": {"first_name": "name"},
            "schedule": "1h",
            "jitter": 0,
            "hooks": True,
        }
        w = World(tmp_path, emulator, target)
        w.start()
        try:
            rows = [{"phone": f"+3360000000{i}", "name": f"P{i}", "lists": ["newsletter"]}
                    for i in range(3)]  # fmt: skip
            w.drop("sms.ndjson", "".join(json.dumps(r) + "\n" for r in rows))
            state = f"{emulator}/_emulator/state"
            wait_for(lambda: len(httpx.get(state, params={"list_name": "Newsletter"})
                                 .json()["contacts"]) == 3, what="the numbers pushed")  # fmt: skip
            installed = w.syncd("hooks", "install", "--json")
            assert installed.returncode == 0, installed.stderr
            shown = json.loads(installed.stdout)
            assert shown["state"] == "manual" and shown["url"].startswith(f"{w.url}/hooks/sms/")
            w.admin("callbacks", {"url": shown["url"]})  # pasted into its interface
            w.admin("stop", {"number": "+33600000001"})
            wait_for(lambda: w.local()["+33600000001"]["status"] == "unsubscribed", timeout=10,
                     what="the STOP in the mirror")  # fmt: skip
            assert w.local()["+33600000002"]["status"] == "active"
            wait_for(lambda: any(e["key"] == "+33600000001" for e in w.events()), timeout=5,
                     what="the outbox event")  # fmt: skip
            # the path is the only proof: another token is refused
            stop = {"message_id": "x", "number": "+33600000002", "text": "STOP",
                    "stop_date": "2026-01-01 00:00:00"}  # fmt: skip
            assert httpx.post(shown["url"] + "x", json=stop).status_code == 403
            assert w.stop() == 0
        finally:
            if w.proc is not None and w.proc.poll() is None:
                w.stop()
