"""Through the CLI: a local delete hidden by a silently short export is carried out later.

Real processes: `syncd emulate unisender` with its ``export_cut_rows`` switch (the export file
ends at a line break, no error) and `syncd ingest` / `syncd run-once` against it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import emulator_fixture, newsletter_config, people_csv, run_syncd

KEY = "short-export-key-5c2e"
pytestmark = pytest.mark.slow


emulator = emulator_fixture("unisender", KEY)


def syncd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_syncd(*args, cwd=cwd, key=("TEST_UNISENDER_KEY", KEY))


def run_once(cwd: Path) -> dict[str, Any]:
    done = syncd(cwd, "run-once", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def remote(emulator: str) -> list[str]:
    """The list's addresses in the order the provider exports them."""
    state = httpx.get(f"{emulator}/_emulator/state", params={"list_id": "1"}).json()
    return [c["email"] for c in state["contacts"]]


def test_run_once_deletes_a_contact_a_short_export_hid_and_never_pulls_it_back(
    tmp_path: Path, emulator: str
) -> None:
    outbox = {"outbox": {"path": str(tmp_path / "outbox")}}
    text = newsletter_config(tmp_path, emulator, tables=outbox)
    (tmp_path / "syncd.toml").write_text(text, encoding="utf-8")
    (tmp_path / "people.csv").write_text(people_csv(range(20), city="Minsk"), encoding="utf-8")
    assert syncd(tmp_path, "ingest", "people.csv").returncode == 0
    assert run_once(tmp_path)["created"] == 20
    gone = remote(emulator)[-1]  # the last row of the export file
    (tmp_path / "gone.csv").write_text(f"email,delete\n{gone},1\n", encoding="utf-8")
    assert syncd(tmp_path, "ingest", "gone.csv").returncode == 0

    httpx.post(f"{emulator}/_emulator/faults", json={"export_cut_rows": 19})
    short = run_once(tmp_path)
    faults = httpx.get(f"{emulator}/_emulator/faults").json()
    assert faults["injected"] == {"export_cut_short": 1}
    assert short["export_complete"] and short["outcome"] == "converged"
    assert short["write_calls"] == 0 and gone in remote(emulator)

    httpx.post(f"{emulator}/_emulator/faults", json={})
    assert run_once(tmp_path)["deleted"] == 1 and gone not in remote(emulator)
    quiet = run_once(tmp_path)
    assert quiet["write_calls"] == 0 and quiet["pulled"] == 0

    exported = syncd(tmp_path, "export", "--list", "newsletter")
    assert exported.returncode == 0, exported.stderr
    local = [json.loads(line)["email"] for line in exported.stdout.splitlines()]
    assert gone not in local and len(local) == 19
    events = [
        json.loads(line)
        for path in sorted((tmp_path / "outbox").glob("*"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert not [e for e in events if e["kind"] == "signup"]
