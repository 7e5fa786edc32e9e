"""Through the CLI: an unsubscribe from one list changes that list only, both ways.

Real processes: `syncd emulate unisender` with three lists, three targets (one per list, each
fed by its own local list), `syncd ingest`, `syncd run-once` and `syncd export` against it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import config_toml, emulator_fixture, run_syncd, unisender_target

KEY = "list-consent-key-7d1b"
EMAIL = "ann@example.com"
LISTS = ("news", "offers", "events")
pytestmark = pytest.mark.slow

emulator = emulator_fixture("unisender", KEY)


def syncd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_syncd(*args, cwd=cwd, key=("TEST_UNISENDER_KEY", KEY))


def run_once(cwd: Path) -> list[dict[str, Any]]:
    done = syncd(cwd, "run-once", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def contact(emulator: str) -> dict[str, Any]:
    state = httpx.get(f"{emulator}/_emulator/state").json()
    (found,) = [c for c in state["contacts"] if c["email"] == EMAIL]
    return found


@pytest.fixture
def three_lists(tmp_path: Path, emulator: str) -> dict[str, int]:
    ids = {"news": 1}
    for name in LISTS[1:]:
        made = httpx.post(f"{emulator}/_emulator/list", json={"title": name.title()}).json()
        ids[name] = int(made["id"])
    targets = [
        unisender_target(
            emulator, name, list_id=str(ids[name]), local_list=name, api_key="${TEST_UNISENDER_KEY}"
        )
        for name in LISTS
    ]
    outbox = {"path": str(tmp_path / "outbox")}
    (tmp_path / "syncd.toml").write_text(
        config_toml(tmp_path, *targets, outbox=outbox), encoding="utf-8"
    )
    (tmp_path / "ann.csv").write_text(
        f'email,name,lists\n{EMAIL},Ann,"{",".join(LISTS)}"\n', encoding="utf-8"
    )
    assert syncd(tmp_path, "ingest", "ann.csv").returncode == 0
    assert [s["created"] for s in run_once(tmp_path)] == [1, 1, 1]
    return ids


def test_an_unsubscribe_from_one_list_at_the_provider_stays_on_that_list(
    tmp_path: Path, emulator: str, three_lists: dict[str, int]
) -> None:
    status = contact(emulator)["email_status"]
    httpx.post(
        f"{emulator}/_emulator/contact",
        json={"action": "unsubscribe", "email": EMAIL, "list_id": three_lists["offers"]},
    ).raise_for_status()

    summaries = run_once(tmp_path)

    assert [s["write_calls"] for s in summaries] == [0, 0, 0]  # 0 imports
    after = contact(emulator)
    assert after["email_status"] == status
    assert after["unsubscribed"] == [three_lists["offers"]]
    assert sorted(after["lists"]) == sorted([three_lists["news"], three_lists["events"]])
    exported = syncd(tmp_path, "export", "--format", "ndjson")
    assert exported.returncode == 0, exported.stderr
    (row,) = [json.loads(line) for line in exported.stdout.splitlines()]
    assert row["status"] == "active"
    assert row["unsubscribed_lists"] == ["offers"]
    events = [
        json.loads(line)
        for path in sorted((tmp_path / "outbox").glob("*.ndjson"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    (event,) = [e for e in events if e["key"] == EMAIL and e["kind"] != "signup"]
    assert (event["kind"], event["target"], event["list"]) == (
        "list_unsubscribe",
        "offers",
        "offers",
    )
    assert event["changes"]["list_status"] == {"before": "active", "after": "unsubscribed"}
    assert [s["write_calls"] for s in run_once(tmp_path)] == [0, 0, 0]


def test_a_local_unsubscribe_from_one_list_is_pushed_to_that_list_only(
    tmp_path: Path, emulator: str, three_lists: dict[str, int]
) -> None:
    status = contact(emulator)["email_status"]
    (tmp_path / "leave.csv").write_text(
        f"email,unsubscribed_lists\n{EMAIL},events\n", encoding="utf-8"
    )
    assert syncd(tmp_path, "ingest", "leave.csv").returncode == 0

    summaries = {s["target"]: s for s in run_once(tmp_path)}

    assert summaries["events"]["write_calls"] == 1
    assert summaries["news"]["write_calls"] == summaries["offers"]["write_calls"] == 0
    after = contact(emulator)
    assert after["unsubscribed"] == [three_lists["events"]]
    assert after["email_status"] == status  # never an account-level opt-out
    assert [s["write_calls"] for s in run_once(tmp_path)] == [0, 0, 0]
