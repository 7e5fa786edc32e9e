"""Through the CLI: an import the provider refuses with HTTP 400 for one row is a rejected row.

`syncd emulate unisender` is told (``/_emulator/refuse-import``) to answer HTTP 400 with §1.2's
error envelope for any import holding one contact; `syncd run-once` then applies the other 499,
names the refused contact and exits 1 ("rejected"), not 3, on this cycle and the next.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import emulator_fixture, newsletter_config, people_csv, run_syncd, syncd_env

KEY = "cli-refused-key-31c9"
BAD = "user321@example.com"
syncd = run_syncd
pytestmark = pytest.mark.slow


emulator = emulator_fixture("unisender", KEY)


def test_run_once_rejects_the_row_a_http_400_names_and_applies_the_rest(
    tmp_path: Path, emulator: str
) -> None:
    (tmp_path / "syncd.toml").write_text(newsletter_config(tmp_path, emulator), encoding="utf-8")
    (tmp_path / "people.csv").write_text(people_csv(range(500), city="Minsk"), encoding="utf-8")
    env = syncd_env(("TEST_UNISENDER_KEY", KEY))
    assert syncd("ingest", "people.csv", env=env, cwd=tmp_path).returncode == 0
    message = f'Invalid value of field "email": "{BAD}"'
    refuse = {"key": BAD, "status": 400, "code": "invalid_arg", "message": message}
    assert httpx.post(f"{emulator}/_emulator/refuse-import", json=refuse).status_code == 200

    first = syncd("run-once", env=env, cwd=tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "newsletter: rejected" in first.stdout and "created 499" in first.stdout
    assert "rejected 1" in first.stdout and "invalid_arg 1" in first.stdout, first.stdout
    state = httpx.get(f"{emulator}/_emulator/state", params={"list_id": 1}).json()
    emails = {c["email"] for c in state["contacts"]}
    assert len(emails) == 499 and BAD not in emails

    second = syncd("run-once", "--json", env=env, cwd=tmp_path)
    assert second.returncode == 1, second.stdout + second.stderr
    summary = json.loads(second.stdout)
    assert summary["outcome"] == "rejected" and summary["write_calls"] == 0

    status = syncd("status", env=env, cwd=tmp_path)
    assert "rejected; 1 rejected row," in status.stdout, status.stdout
    assert "1 rows held" in status.stdout, status.stdout
