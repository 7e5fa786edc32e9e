"""One local list synced to all five providers at once, through the CLI, against five emulators.

Each provider runs as its own `syncd emulate` process on loopback; syncd runs as `syncd run-once`
processes. One run converges every target (Netcore's included: its callback arrives while
run-once waits), the next run writes nothing anywhere, and a round of local edits, a deletion and
an opt-out converges in one more run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import config_toml, emulator_process, free_port

KEY = "five-providers-key-3a7e"
LOGIN = "ops@example.com"
N = 40
pytestmark = pytest.mark.slow


def phone(i: int) -> str:
    return f"+37529{2000000 + i}"


def email(i: int) -> str:
    return f"member{i}@example.com"


@pytest.fixture
def emulators() -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(emulator_process(name, KEY))
            for name in ("unisender", "selzy", "smsby", "octopush", "netcore")
        }


def config_text(tmp: Path, urls: dict[str, str], listen_port: int) -> str:
    listen = f"127.0.0.1:{listen_port}"

    def target(provider: str, path: str, fields: dict[str, str], **settings: Any) -> dict[str, Any]:
        return {
            "name": provider,
            "provider": provider,
            "base_url": f"{urls[provider]}{path}",
            "fields": fields,
            **settings,
            "local_list": "audience",
            "api_key": "${FIVE_KEY}",
            "rate_limit_per_minute": 100000,
        }

    email_fields = {"Name": "name", "City": "city"}
    return config_toml(
        tmp,
        target("unisender", "/en/api", email_fields, list_id="1", export_poll_interval=0.05),
        target("selzy", "/en/api", email_fields, list_id="1", export_poll_interval=0.05),
        target("smsby", "/api/v2", {"name": "name", "city": "city"}, key="phone", list_id="1"),
        target(
            "octopush",
            "/v1/public",
            {"first_name": "name", "param1": "city"},
            key="phone",
            api_login=LOGIN,
            list_id="Newsletter",
        ),
        target(
            "netcore",
            "/apiv2",
            {"FIRST_NAME": "name", "CITY": "city"},
            list_id="1",
            public_url=f"http://{listen}",
            callback_timeout=60,
        ),
        http={"listen": listen},
    )


def run_once(cwd: Path, exit_code: int = 0) -> list[dict[str, Any]]:
    env = {**os.environ, "FIVE_KEY": KEY}
    env.pop("SYNCD_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "syncd", "run-once", "--json", "--callback-wait", "30"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == exit_code, done.stdout + done.stderr
    return lines


def remote_state(urls: dict[str, str]) -> dict[str, dict[str, tuple[str, str]]]:
    """Per provider: key -> (name, city), read from each emulator's own state."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for brand in ("unisender", "selzy"):
        state = httpx.get(f"{urls[brand]}/_emulator/state", params={"list_id": 1}).json()
        out[brand] = {
            c["email"]: (c["fields"].get("Name", ""), c["fields"].get("City", ""))
            for c in state["contacts"]
            if c["email_status"] not in ("unsubscribed", "blocked") and 1 not in c["unsubscribed"]
        }
    (sms_list,) = httpx.get(f"{urls['smsby']}/_emulator/state").json()["lists"]
    out["smsby"] = {
        "+" + c["phone"]: (c["fields"]["name"], c["fields"]["city"]) for c in sms_list["contacts"]
    }
    octo = httpx.get(f"{urls['octopush']}/_emulator/state", params={"list_name": "Newsletter"})
    out["octopush"] = {
        c["phone_number"]: (c["first_name"], c["param1"]) for c in octo.json()["contacts"]
    }
    (net_list,) = httpx.get(f"{urls['netcore']}/_emulator/state").json()["lists"]
    out["netcore"] = {c["EMAIL"]: (c["FIRST_NAME"], c["CITY"]) for c in net_list["contacts"]}
    return out


def expected(people: dict[int, tuple[str, str]], by: str) -> dict[str, tuple[str, str]]:
    return {(email(i) if by == "email" else phone(i)): v for i, v in people.items()}


KEYS = {"unisender": "email", "selzy": "email", "smsby": "phone", "octopush": "phone"}


def test_one_local_list_converges_at_all_five_providers_in_one_run(
    tmp_path: Path, emulators: dict[str, str]
) -> None:
    listen = free_port()
    (tmp_path / "syncd.toml").write_text(config_text(tmp_path, emulators, listen), "utf-8")
    people = {i: (f"Member {i}", "Minsk") for i in range(N)}
    rows = [
        {"email": email(i), "phone": phone(i), "name": n, "city": c, "lists": ["audience"]}
        for i, (n, c) in people.items()
    ]
    ingest(tmp_path, rows)

    first = run_once(tmp_path)
    assert {s["target"]: s["outcome"] for s in first} == dict.fromkeys(
        ("unisender", "selzy", "smsby", "octopush", "netcore"), "converged"
    )
    assert all(s["created"] == N or s["confirmed_later"] == N for s in first), first
    state = remote_state(emulators)
    for provider, remote in state.items():
        assert remote == expected(people, KEYS.get(provider, "email")), provider

    quiet = run_once(tmp_path)
    assert [(s["target"], s["outcome"], s["write_calls"]) for s in quiet] == [
        (name, "converged", 0) for name in ("unisender", "selzy", "smsby", "octopush", "netcore")
    ]

    # local edits, an opt-out and a deletion: one run, then silence again
    people[3] = ("Member 3", "Brest")
    ingest(tmp_path, [{"email": email(3), "city": "Brest"}])
    ingest(tmp_path, [{"email": email(5), "status": "unsubscribed"}])
    ingest(tmp_path, [{"email": email(7), "delete": 1}])
    del people[5], people[7]
    edits = run_once(tmp_path, exit_code=1)  # 1: sms.by could not do two of the changes
    outcomes = {s["target"]: s["outcome"] for s in edits}
    # sms.by can neither delete nor record an opt-out: it reports both contacts by name
    assert outcomes == {
        "unisender": "converged",
        "selzy": "converged",
        "smsby": "rejected",
        "octopush": "converged",
        "netcore": "converged",
    }
    state = remote_state(emulators)
    for provider in ("unisender", "selzy", "octopush", "netcore"):
        assert state[provider] == expected(people, KEYS.get(provider, "email")), provider
    smsby_expected = expected(people, "phone") | {
        phone(5): ("Member 5", "Minsk"),
        phone(7): ("Member 7", "Minsk"),
    }
    assert state["smsby"] == smsby_expected
    # nothing more to write; sms.by keeps naming the opted-out contact someone must remove by hand
    last = run_once(tmp_path, exit_code=1)
    assert [s["write_calls"] for s in last] == [0, 0, 0, 0, 0]
    assert [s["target"] for s in last if s["outcome"] != "converged"] == ["smsby"]
    assert phone(5) in last[2]["message"] and phone(7) not in last[2]["message"]


def ingest(cwd: Path, rows: list[dict[str, Any]]) -> None:
    path = cwd / f"batch-{len(list(cwd.glob('batch-*')))}.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    env = {k: v for k, v in os.environ.items() if k != "SYNCD_CONFIG"} | {"FIVE_KEY": KEY}
    done = subprocess.run(
        [sys.executable, "-m", "syncd", "ingest", str(path)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
