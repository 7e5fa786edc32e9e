"""`syncd explain KEY` and `syncd runs` through the CLI: real processes against `syncd emulate`.

A contact is created, edited locally and pushed, then unsubscribed at the provider and pulled
back: explain shows each step with its case, what was sent and the answer. A refused row shows
the provider's refusal; a cycle with nothing to do writes no history; old history is pruned;
the JSON answers follow their schemas. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from conftest import (
    config_toml,
    daemon_tables,
    emulator_fixture,
    newsletter_config,
    people_csv,
    postgresql_schema,
    run_syncd,
    syncd_env,
    unisender_target,
    wait_for,
)
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

KEY = "explain-key-5be2"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

emulator = emulator_fixture("unisender", KEY)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'syncd.db'}"
        return
    with postgresql_schema() as url:
        yield url


@pytest.fixture
def workdir(tmp_path: Path, emulator: str, store: str) -> Path:
    tables = {"store": {"url": store}, "outbox": {"path": str(tmp_path / "outbox")}}
    config = newsletter_config(tmp_path, emulator, tables)
    (tmp_path / "syncd.toml").write_text(config, encoding="utf-8")
    (tmp_path / "people.csv").write_text(people_csv(range(3)), encoding="utf-8")
    return tmp_path


def syncd(*args: str, cwd: Path) -> Any:
    return run_syncd(*args, cwd=cwd, env=syncd_env(("TEST_UNISENDER_KEY", KEY)))


def schema(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8"))


def history_rows(store: str) -> int:
    engine = create_engine(store, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM history")).scalar_one())
    finally:
        engine.dispose()


def explain(cwd: Path, key: str, *args: str) -> dict[str, Any]:
    r = syncd("explain", key, "--json", *args, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    found = json.loads(r.stdout)
    jsonschema.validate(found, schema("explain"))
    return found


def test_explain_shows_a_push_and_a_pull_back_step_by_step(workdir: Path, emulator: str, store):
    assert syncd("ingest", "people.csv", cwd=workdir).returncode == 0
    assert syncd("run-once", cwd=workdir).returncode == 0  # three creates
    (workdir / "edit.csv").write_text("email,name\nuser1@example.com,Ann Edited\n")
    assert syncd("ingest", "edit.csv", cwd=workdir).returncode == 0
    assert syncd("run-once", cwd=workdir).returncode == 0  # the edit goes out
    httpx.post(
        f"{emulator}/_emulator/contact",
        json={"action": "unsubscribe", "email": "user1@example.com", "list_id": 1},
    ).raise_for_status()
    assert syncd("run-once", cwd=workdir).returncode == 0  # the unsubscribe comes back

    found = explain(workdir, "User1@Example.com")
    assert found["key"] == "user1@example.com"
    steps = [(s["case"], s["outcome"]["result"]) for s in found["history"]]
    assert steps == [
        ("local_created", "applied"),
        ("create_remote", "confirmed"),
        ("local_updated", "applied"),
        ("push", "confirmed"),
        ("pull", "applied"),
    ]
    created, create, edited, push, pull = found["history"]
    # the local writes name their source, the line and the columns the row carried
    assert created["target"] is None and created["cycle"] is None
    assert created["outcome"]["source"] == "syncd ingest people.csv"
    assert created["outcome"]["line"] == 3  # user1 is the second row after the header
    assert edited["outcome"]["source"] == "syncd ingest edit.csv"
    assert edited["outcome"]["carried"] == ["name"]
    assert create["sent"]["op"] == "create" and create["sent"]["call"] == "importContacts"
    assert push["sent"]["fields"]["Name"] == "Ann Edited"
    assert push["sent"]["flags"] == {"overwrite_tags": False, "overwrite_lists": False}
    assert pull["sent"] is None and pull["outcome"]["local"] == "upsert"
    assert pull["outcome"]["event"]["kind"] == "list_unsubscribe"
    assert pull["outcome"]["changed"] == {"list_status": ["active", "unsubscribed"]}
    cycles = [s["cycle"] for s in found["history"] if s["target"] is not None]
    assert cycles == sorted(cycles) and len(set(cycles)) == 3
    news = found["targets"]["newsletter"]
    assert news["local"]["fields"]["Name"] == "Ann Edited"
    assert news["local"]["list_status"] == "unsubscribed" == news["base"]["list_status"]
    assert news["rejection"] is None and news["conflict"] is None

    # the outbox event named in the history is the one written to the outbox
    events = [
        json.loads(line)
        for path in (workdir / "outbox").glob("changes-*.ndjson")
        for line in path.read_text().splitlines()
    ]
    assert pull["outcome"]["event"]["id"] in {e["id"] for e in events}

    text_out = syncd("explain", "user1@example.com", cwd=workdir)
    assert text_out.returncode == 0, text_out.stderr
    lines = text_out.stdout.splitlines()
    assert lines[0] == "user1@example.com"
    assert any("push -> confirmed" in line for line in lines)
    assert any("sent importContacts update: Name='Ann Edited'" in line for line in lines)
    assert any("pull -> applied" in line for line in lines)
    assert any("outbox event list_unsubscribe" in line for line in lines)
    assert any("list_status: 'active' -> 'unsubscribed'" in line for line in lines)
    assert any("local  local_updated -> applied (syncd ingest edit.csv" in line for line in lines)

    # the runs the history points to, newest first
    runs = syncd("runs", "--json", cwd=workdir)
    assert runs.returncode == 0, runs.stderr
    records = json.loads(runs.stdout)
    jsonschema.validate(records, schema("runs"))
    assert [r["id"] for r in records] == sorted(cycles, reverse=True)
    assert [r["outcome"] for r in records] == ["converged"] * 3
    assert [r["counts"]["pulled"] for r in records] == [1, 0, 0]
    assert [r["counts"]["created"] for r in records] == [0, 0, 3]
    assert len(json.loads(syncd("runs", "--json", "--limit", "1", cwd=workdir).stdout)) == 1
    one = explain(workdir, "user1@example.com", "--target", "newsletter")
    assert one["history"] == found["history"]  # the only target, and the local writes
    listed = syncd("runs", cwd=workdir).stdout.splitlines()
    assert listed[0].startswith(f"#{cycles[-1]} newsletter ") and "pulled 1" in listed[0]


def test_a_cycle_with_nothing_to_do_writes_no_history(workdir: Path, store: str):
    assert syncd("ingest", "people.csv", cwd=workdir).returncode == 0
    assert syncd("run-once", cwd=workdir).returncode == 0
    written = history_rows(store)
    assert written == 6  # per contact: its local creation, and its create at the provider
    quiet = syncd("run-once", "--json", cwd=workdir)
    assert json.loads(quiet.stdout)["outcome"] == "converged"
    assert history_rows(store) == written
    assert len(json.loads(syncd("runs", "--json", cwd=workdir).stdout)) == 2  # it did run


def test_a_refused_row_shows_its_refusal(workdir: Path, emulator: str):
    httpx.post(
        f"{emulator}/_emulator/refuse-import",
        json={"key": "user2@example.com", "message": "Invalid value of field email: user2"},
    ).raise_for_status()
    assert syncd("ingest", "people.csv", cwd=workdir).returncode == 0
    assert syncd("run-once", cwd=workdir).returncode == 1  # one row refused

    found = explain(workdir, "user2@example.com")
    local, step = found["history"]
    assert local["case"] == "local_created"
    assert (step["case"], step["outcome"]["result"]) == ("create_remote", "rejected")
    assert "user2" in step["outcome"]["message"] and step["outcome"]["code"]
    assert step["sent"]["op"] == "create"
    refusal = found["targets"]["newsletter"]["rejection"]
    assert refusal is not None and refusal["code"] == step["outcome"]["code"]

    # held until the local record changes: the next cycle adds no second row for it
    assert syncd("run-once", cwd=workdir).returncode == 1
    again = explain(workdir, "user2@example.com")["history"]
    assert [(s["case"], s["outcome"]["result"]) for s in again] == [
        ("local_created", "applied"),
        ("create_remote", "rejected"),
        ("create_remote", "held"),
    ]
    assert syncd("run-once", cwd=workdir).returncode == 1
    assert len(explain(workdir, "user2@example.com")["history"]) == 3

    shown = syncd("explain", "user2@example.com", cwd=workdir).stdout
    assert "refused: " in shown and "-> rejected" in shown


def add_old_rows(store: str) -> None:
    engine = create_engine(store, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for at in ("2020-01-01T00:00:00.000Z", "2020-01-02T00:00:00.000Z"):
                conn.execute(
                    text(
                        'INSERT INTO history (at, run_id, target, key, "case", outcome) '
                        "VALUES (:at, NULL, 'newsletter', 'user0@example.com', 'push', '{}')"
                    ),
                    {"at": at},
                )
    finally:
        engine.dispose()


def test_history_older_than_keep_is_pruned(workdir: Path, store: str):
    config = workdir / "syncd.toml"
    config.write_text(config.read_text() + '\n[history]\nkeep = "2d"\n', encoding="utf-8")
    assert syncd("ingest", "people.csv", cwd=workdir).returncode == 0
    assert syncd("run-once", cwd=workdir).returncode == 0
    add_old_rows(store)
    assert history_rows(store) == 8
    assert syncd("run-once", cwd=workdir).returncode == 0  # nothing to do; prunes
    assert history_rows(store) == 6
    kept = explain(workdir, "user0@example.com")["history"]
    assert [s["case"] for s in kept] == ["local_created", "create_remote"]  # not the old ones


def test_an_unknown_key_is_named_and_exits_1(workdir: Path):
    assert syncd("ingest", "people.csv", cwd=workdir).returncode == 0
    r = syncd("explain", "nobody@example.com", cwd=workdir)
    assert r.returncode == 1 and r.stdout == ""
    assert "no contact 'nobody@example.com' in the store" in r.stderr
    bad = syncd("explain", "not a key", cwd=workdir)
    assert bad.returncode == 1 and "'not a key'" in bad.stderr and "Traceback" not in bad.stderr
    nosuch = syncd("explain", "user0@example.com", "--target", "nosuch", cwd=workdir)
    assert nosuch.returncode == 2 and "nosuch" in nosuch.stderr


def test_the_daemon_prunes_history_older_than_keep(tmp_path: Path, emulator: str, store: str):
    target = unisender_target(
        emulator, "newsletter", api_key="${TEST_UNISENDER_KEY}", schedule="1h", jitter=0
    )
    tables = daemon_tables(tmp_path, "off")
    config = config_toml(tmp_path, target, store={"url": store}, history={"keep": "1d"}, **tables)
    (tmp_path / "syncd.toml").write_text(config, encoding="utf-8")
    (tmp_path / "people.csv").write_text(people_csv(range(2)), encoding="utf-8")
    assert syncd("ingest", "people.csv", cwd=tmp_path).returncode == 0  # the store, 2 rows
    add_old_rows(store)
    assert history_rows(store) == 4
    env = syncd_env(("TEST_UNISENDER_KEY", KEY))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE
    )
    try:
        # its first cycle creates the two contacts (2 rows), then the old two go
        wait_for(lambda: history_rows(store) == 4 and _no_old_rows(store), "pruning", 60)
    finally:
        daemon.send_signal(signal.SIGTERM)
        logged, _ = daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    assert "history: 2 rows older than 1d pruned" in logged.decode()  # its log, on stdout


def _no_old_rows(store: str) -> bool:
    engine = create_engine(store, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            old = conn.execute(text("SELECT count(*) FROM history WHERE at < '2021'"))
            return old.scalar_one() == 0
    finally:
        engine.dispose()
