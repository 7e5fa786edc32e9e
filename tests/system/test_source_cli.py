"""`[[source]]` through real processes: `syncd source pull` and `syncd status` on the command
line, and `syncd run` reading a source on its schedule into a target at `syncd emulate`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import (
    config_toml,
    daemon_tables,
    emulator_fixture,
    free_port,
    run_syncd,
    unisender_target,
    wait_for,
)

KEY = "source-cli-key-41c7"
PASSWORD = "app-Reader-pa55-9d1e"
pytestmark = pytest.mark.slow

emulator = emulator_fixture("unisender", KEY)


def app_database(path: Path, *emails: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS users (email TEXT, first_name TEXT, city TEXT, "
            "gone INTEGER NOT NULL DEFAULT 0)"
        )
        conn.executemany(
            "INSERT INTO users (email, first_name, city) VALUES (?, ?, 'Minsk')",
            [(e, e.split("@")[0].title()) for e in emails],
        )


def source_table(url: str, **settings: str) -> str:
    lines = [
        "[[source]]",
        'name = "app"',
        f'url = "{url}"',
        'query = "SELECT email, first_name AS name, city FROM users WHERE gone = 0"',
        'list = "newsletter"',
        *(f"{k} = {json.dumps(v)}" for k, v in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def test_source_pull_dry_run_then_pull_then_status(tmp_path: Path) -> None:
    app_database(tmp_path / "app.db", "ann@example.com", "bob@example.com", "not-an-address")
    config = tmp_path / "syncd.toml"
    # a relative SQLite path is the configuration's folder's, wherever syncd is started
    config.write_text(config_toml(tmp_path) + source_table("sqlite:///app.db"), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def syncd(*args: str) -> subprocess.CompletedProcess[str]:
        return run_syncd(*args, "--config", str(config), cwd=elsewhere)

    dry = syncd("source", "pull", "--dry-run")
    assert dry.returncode == 1, dry.stderr  # a row was rejected
    assert "app (snapshot read, 3 rows): would apply created 2" in dry.stdout
    assert "row 3 (not-an-address): invalid email" in dry.stderr
    exported = syncd("export")
    assert exported.returncode == 0 and exported.stdout == ""

    applied = syncd("source", "pull", "--source", "app", "--json")
    assert applied.returncode == 1, applied.stderr
    report = json.loads(applied.stdout)
    assert (report["outcome"], report["created"], report["lists"]) == ("applied", 2, ["newsletter"])
    people = [json.loads(line) for line in syncd("export").stdout.splitlines()]
    assert {p["email"]: p["lists"] for p in people} == {
        "ann@example.com": ["newsletter"],
        "bob@example.com": ["newsletter"],
    }

    with sqlite3.connect(tmp_path / "app.db") as conn:
        conn.execute("UPDATE users SET gone = 1 WHERE email = 'bob@example.com'")
        conn.execute("DELETE FROM users WHERE email = 'not-an-address'")
    again = syncd("source", "pull")
    assert again.returncode == 0, again.stderr
    assert "removed from list 1, unchanged 1, rejected 0" in again.stdout

    status = syncd("status")
    assert status.returncode == 0, status.stderr
    assert "source app (snapshot, list newsletter): last read" in status.stdout
    assert "1 row, created 0, updated 0, removed 1, rejected 0" in status.stdout

    unknown = syncd("source", "pull", "--source", "nope")
    assert unknown.returncode == 2 and "no such source (known: app)" in unknown.stderr


def test_a_failed_read_exits_3_and_never_shows_the_url_or_its_password(tmp_path: Path) -> None:
    config = tmp_path / "syncd.toml"
    url = "${APP_DATABASE_URL}"
    config.write_text(config_toml(tmp_path) + source_table(url, timeout=5), encoding="utf-8")
    env = {
        **os.environ,
        "APP_DATABASE_URL": f"postgresql+psycopg://reader:{PASSWORD}@127.0.0.1:1/app",
    }
    env.pop("SYNCD_CONFIG", None)
    failed = run_syncd("-v", "source", "pull", "--config", str(config), cwd=tmp_path, env=env)
    assert failed.returncode == 3
    assert "source app: the read failed" in failed.stderr
    status = run_syncd("status", "--config", str(config), cwd=tmp_path, env=env)
    assert "error: source app: the read failed" in status.stdout
    as_json = run_syncd("status", "--json", "--config", str(config), cwd=tmp_path, env=env)
    for seen in (failed.stdout, failed.stderr, status.stdout, status.stderr, as_json.stdout):
        assert PASSWORD not in seen and "reader" not in seen


@pytest.mark.parametrize(
    ("source_every", "target_schedule"),
    [("1s", "1h"), ("1h", "3s")],
    ids=["the source's schedule wakes the target", "a target's cycle reads the source first"],
)
def test_the_daemon_reads_a_source_on_its_schedule_into_a_target_at_the_emulator(
    tmp_path: Path, emulator: str, source_every: str, target_schedule: str
) -> None:
    app_database(tmp_path / "app.db", "ann@example.com")
    port = free_port()
    tables = daemon_tables(tmp_path, f"127.0.0.1:{port}", debounce=0.2, stop_timeout=10)
    # One of the two schedules is an hour, so only the other one can bring the new row over:
    # the source's read waking the target, or the target's cycle reading the source first.
    target = unisender_target(
        emulator,
        "newsletter",
        api_key="${TEST_UNISENDER_KEY}",
        schedule=target_schedule,
        jitter=0,
        export_poll_interval=0.05,
        export_rate_limit_per_minute=100000,
    )
    config = tmp_path / "syncd.toml"
    text = config_toml(tmp_path, target, **tables)
    config.write_text(text + source_table("sqlite:///app.db", every=source_every), encoding="utf-8")
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run", "--config", str(config)],
        env={**os.environ, "TEST_UNISENDER_KEY": KEY},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def remote() -> set[str]:
            state = httpx.get(f"{emulator}/_emulator/state", params={"list_id": 1}).json()
            return {c["email"] for c in state["contacts"]}

        # read before the first cycle, which pushes it
        wait_for(lambda: "ann@example.com" in remote(), what="ann at the emulator")
        app_database(tmp_path / "app.db", "cleo@example.com")
        wait_for(lambda: "cleo@example.com" in remote(), what="cleo at the emulator", timeout=30)

        metrics = httpx.get(f"{url}/metrics").text
        assert 'syncd_source_reads_total{outcome="applied",source="app"}' in metrics
        assert 'syncd_source_changes_total{operation="created",source="app"} 2.0' in metrics
        success = next(
            line
            for line in metrics.splitlines()
            if line.startswith('syncd_source_last_success_timestamp_seconds{source="app"}')
        )
        assert float(success.split()[-1]) > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text(errors="replace")
