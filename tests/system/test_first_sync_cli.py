"""Through the CLI: a first sync against a filled list is planned, held and settled in bulk.

Real `syncd` processes against `syncd emulate unisender` on loopback.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import emulator_fixture, newsletter_config, people_csv, run_syncd, syncd_env

KEY = "first-sync-key-5c2e"
N = 4  # contacts on both sides whose Name differs
syncd = run_syncd
pytestmark = pytest.mark.slow


emulator = emulator_fixture("unisender", KEY)


def _names(emulator: str) -> dict[str, str]:
    state = httpx.get(f"{emulator}/_emulator/state", params={"list_id": 1}).json()
    return {c["email"]: c["fields"].get("Name") for c in state["contacts"]}


def test_plan_counts_held_first_meetings_and_resolve_all_settles_them(
    tmp_path: Path, emulator: str
):
    text = newsletter_config(tmp_path, emulator, fields={"Name": "name"})
    (tmp_path / "syncd.toml").write_text(text, encoding="utf-8")
    (tmp_path / "people.csv").write_text(people_csv(range(N + 1), "Local"), encoding="utf-8")
    for i in range(N + 1):
        name = f"Remote {i}" if i < N else f"Local {i}"  # the last one agrees
        body = {"action": "sign_up", "email": f"user{i}@example.com", "list_id": 1}
        signed = httpx.post(
            f"{emulator}/_emulator/contact", json={**body, "fields": {"Name": name}}
        )
        signed.raise_for_status()  # the seeded account has list 1 and the field Name
    env = syncd_env(("TEST_UNISENDER_KEY", KEY))
    assert syncd("ingest", "people.csv", env=env, cwd=tmp_path).returncode == 0

    plan = syncd("plan", env=env, cwd=tmp_path)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"first sync: {N} contacts on both sides with different values are held" in plan.stdout
    assert "0 write call(s) planned" in plan.stdout
    planned = json.loads(syncd("plan", "--json", env=env, cwd=tmp_path).stdout)
    assert planned[0]["summary"]["first_meetings_held"] == N

    held = syncd("run-once", env=env, cwd=tmp_path)
    assert held.returncode == 1 and f"{N} first meetings held" in held.stdout
    assert _names(emulator)["user0@example.com"] == "Remote 0"  # untouched
    listed = json.loads(syncd("conflicts", "--json", env=env, cwd=tmp_path).stdout)
    assert len(listed) == N

    both = syncd("resolve", "user0@example.com", "--all", "--take", "local", env=env, cwd=tmp_path)
    assert both.returncode == 2  # a KEY or --all, not both
    settle = syncd("resolve", "--all", "--take", "remote", "--field", "Name", env=env, cwd=tmp_path)
    assert settle.returncode == 0 and f"{N} held conflict(s)" in settle.stdout

    done = syncd("run-once", "--json", env=env, cwd=tmp_path)
    summary = json.loads(done.stdout)
    assert done.returncode == 0 and summary["outcome"] == "converged", done.stdout
    assert summary["write_calls"] == 0
    rows = [json.loads(line) for line in syncd("export", env=env, cwd=tmp_path).stdout.splitlines()]
    assert {r["email"]: r["name"] for r in rows} == {
        **{f"user{i}@example.com": f"Remote {i}" for i in range(N)},
        f"user{N}@example.com": f"Local {N}",
    }
    assert syncd("conflicts", env=env, cwd=tmp_path).stdout.strip() == "no conflicts"
