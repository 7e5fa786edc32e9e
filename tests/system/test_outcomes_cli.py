"""Through the CLI: a cycle that did not do all its work never exits 0 or shows "converged".

Real `syncd` processes against `syncd emulate unisender` on loopback: an export cut short
(the emulator's ``export_truncate`` switch) makes `run-once` exit 1 with outcome ``partial``,
and `syncd status` (text and JSON) says why; a cycle whose lease another process took while it
exported reports ``stopped``, exit 1, even with nothing to push.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import emulator_process, newsletter_config, people_csv, run_syncd, syncd_env

KEY = "outcomes-cli-key-5c2e"
pytestmark = pytest.mark.slow


def syncd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_syncd(*args, cwd=cwd, key=("TEST_UNISENDER_KEY", KEY))


def write_config(cwd: Path, emulator: str) -> None:
    text = newsletter_config(cwd, emulator, fields={"Name": "name"})
    (cwd / "syncd.toml").write_text(text, encoding="utf-8")


def ingest(cwd: Path, first: int, n: int) -> None:
    path = cwd / f"people-{first}.csv"
    path.write_text(people_csv(range(first, first + n)), encoding="utf-8")
    assert syncd("ingest", path.name, cwd=cwd).returncode == 0


def test_an_incomplete_export_exits_1_as_partial_and_status_says_why(tmp_path: Path) -> None:
    with emulator_process("unisender", KEY) as emulator:
        write_config(tmp_path, emulator)
        ingest(tmp_path, 0, 5)
        assert syncd("run-once", cwd=tmp_path).returncode == 0
        ingest(tmp_path, 10, 2)
        httpx.post(f"{emulator}/_emulator/faults", json={"export_truncate": True})

        cut = syncd("run-once", "--json", cwd=tmp_path)
        summary = json.loads(cut.stdout)
        assert cut.returncode == 1, cut.stdout + cut.stderr
        assert summary["outcome"] == "partial" and summary["export_complete"] is False
        assert summary["deferred"] == 2 and "export incomplete" in summary["message"]

        status = syncd("status", "--json", cwd=tmp_path)
        last = json.loads(status.stdout)["last_run"]
        assert last["outcome"] == "partial" and "export incomplete" in last["message"]
        assert last["counts"]["deferred"] == 2
        text = syncd("status", cwd=tmp_path).stdout
        assert ": partial" in text and "export incomplete: 2 creates/deletes wait" in text

        httpx.post(f"{emulator}/_emulator/faults", json={"export_truncate": False})
        done = syncd("run-once", "--json", cwd=tmp_path)
        assert done.returncode == 0 and json.loads(done.stdout)["outcome"] == "converged"


def test_a_no_change_cycle_that_lost_its_lease_exits_1_as_stopped(tmp_path: Path) -> None:
    with emulator_process("unisender", KEY) as emulator:
        write_config(tmp_path, emulator)
        ingest(tmp_path, 0, 5)
        assert syncd("run-once", cwd=tmp_path).returncode == 0
        # the export's answer comes slowly; meanwhile another replica takes the lease over
        httpx.post(f"{emulator}/_emulator/faults", json={"latency": 0.5})
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run-once", "--json"],
            env=syncd_env(("TEST_UNISENDER_KEY", KEY)),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        store = sqlite3.connect(tmp_path / "syncd.db", timeout=30)
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "run-once never took its lease"
            held = store.execute(
                "SELECT holder FROM lease WHERE target = 'newsletter' "
                "AND expires_at > (julianday('now') - 2440587.5) * 86400.0"
            ).fetchone()
            if held is not None:
                break
            time.sleep(0.02)
        with store:
            store.execute("UPDATE lease SET holder = 'elsewhere:1:abcdef'")
        store.close()
        out, err = proc.communicate(timeout=120)
        summary = json.loads(out)
        assert proc.returncode == 1, out + err
        assert summary["outcome"] == "stopped" and summary["write_calls"] == 0
        assert "lease on newsletter was lost" in summary["message"]
        status = json.loads(syncd("status", "--json", cwd=tmp_path).stdout)
        assert status["last_run"]["outcome"] == "stopped"
        assert "taken over" in status["last_run"]["message"]
