"""End to end through the CLI: real `syncd` processes against `syncd emulate` on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import (
    emulator_fixture,
    emulator_process,
    free_port,
    newsletter_config,
    people_csv,
    run_syncd,
    syncd_env,
)

KEY = "cli-e2e-key-77d1"
syncd = run_syncd
pytestmark = pytest.mark.slow


emulator = emulator_fixture("unisender", KEY)


@pytest.fixture
def workdir(tmp_path: Path, emulator: str) -> tuple[Path, dict[str, str]]:
    (tmp_path / "syncd.toml").write_text(newsletter_config(tmp_path, emulator), encoding="utf-8")
    bad = "not-an-email,Bad,Minsk,,newsletter\n"
    people = people_csv(range(30), city="Minsk", tags="a") + bad
    (tmp_path / "people.csv").write_text(people, encoding="utf-8")
    return tmp_path, syncd_env(("TEST_UNISENDER_KEY", KEY))


def test_ingest_run_once_plan_status_export_round_trip(workdir, emulator):
    cwd, env = workdir
    ingest = syncd("ingest", "people.csv", env=env, cwd=cwd)
    assert ingest.returncode == 1  # one bad row, reported with its line
    assert "created 30" in ingest.stdout and "line 32" in ingest.stderr

    plan = syncd("plan", env=env, cwd=cwd)
    assert plan.returncode == 0 and "importContacts create: 30 rows" in plan.stdout
    assert httpx.get(f"{emulator}/_emulator/calls").json()["calls"].get("importContacts", 0) == 0

    first = syncd("run-once", env=env, cwd=cwd)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "newsletter: converged" in first.stdout and "created 30" in first.stdout

    # an unsubscribe at the provider flows back; a second cycle after it writes nothing
    httpx.post(
        f"{emulator}/_emulator/contact",
        json={"action": "unsubscribe", "email": "user3@example.com", "list_id": 1},
    )
    assert syncd("run-once", env=env, cwd=cwd).returncode == 0
    quiet = syncd("run-once", "--json", env=env, cwd=cwd)
    summary = json.loads(quiet.stdout)
    assert summary["write_calls"] == 0 and summary["outcome"] == "converged"

    status = syncd("status", env=env, cwd=cwd)
    assert "newsletter (unisender): last run" in status.stdout and "converged" in status.stdout

    export = syncd("export", "--format", "csv", env=env, cwd=cwd)
    assert export.returncode == 0
    (cwd / "again.csv").write_text(export.stdout, encoding="utf-8")
    rows = [json.loads(line) for line in syncd("export", env=env, cwd=cwd).stdout.splitlines()]
    user3 = {r["email"]: r for r in rows}["user3@example.com"]
    # unsubscribed from the list at the provider: that list's consent (consent per list)
    assert (user3["status"], user3["unsubscribed_lists"]) == ("active", ["newsletter"])
    again = syncd("ingest", "--json", "again.csv", env=env, cwd=cwd)
    assert json.loads(again.stdout)["unchanged"] == 30  # the round trip changes nothing


def test_config_errors_exit_2_naming_the_key(workdir):
    cwd, env = workdir
    env = {k: v for k, v in env.items() if k != "TEST_UNISENDER_KEY"}
    r = syncd("run-once", env=env, cwd=cwd)
    assert r.returncode == 2 and "TEST_UNISENDER_KEY" in r.stderr and "api_key" in r.stderr


def test_unreachable_provider_exits_3_without_showing_the_key(workdir):
    cwd, env = workdir
    dead = f"http://127.0.0.1:{free_port()}"
    (cwd / "dead.toml").write_text(newsletter_config(cwd, dead, retries=0))
    syncd("ingest", "people.csv", env=env, cwd=cwd)
    r = syncd("run-once", "--config", "dead.toml", env=env, cwd=cwd)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "unreachable" in r.stdout and KEY not in r.stdout + r.stderr


def test_demo_converges(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "syncd", "demo", "--contacts", "120", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "converged" in r.stdout and "0 of them writes" in r.stdout


def test_emulate_fault_switches_inject_faults():
    with emulator_process("selzy", "k", "--5xx-rate", "1") as url:
        r = httpx.post(f"{url}/en/api/getLists", data={"api_key": "k"})
        assert r.status_code == 503
        httpx.post(f"{url}/_emulator/faults", json={})  # switched off live
        r = httpx.post(f"{url}/en/api/getLists", data={"api_key": "k"})
        assert r.status_code == 200 and r.json()["result"][0]["title"] == "Newsletter"
