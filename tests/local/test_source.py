"""``[[source]]``: the company's database read into a local list, for real on SQLite and
PostgreSQL (the application's table and the mirror both on the database under test).

Each test drives the application's table with SQL, reads it with ``pull`` and checks the mirror's
own tables: what a read creates, edits and takes off the list, what the guard refuses, and that
a read that fails or runs out of time changes nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import postgresql_schema
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from syncd.commands.sources import source_status
from syncd.config import Config, parse_config
from syncd.errors import ConfigError, MassDeleteRefused, SourceBusy, SourceReadFailed
from syncd.local.source import pull
from syncd.providers import PROVIDERS
from syncd.store import open_engine

QUERY = "SELECT email, first_name AS name, city, plan AS tags, unsubscribed FROM users"
TABLE = (
    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, first_name TEXT, city TEXT, "
    "plan TEXT, unsubscribed BOOLEAN NOT NULL DEFAULT FALSE, updated_at TIMESTAMP)"
)


@dataclass
class World:
    kind: str  # sqlite | postgresql
    app: Engine  # the company's database
    app_url: str
    db: Engine  # the mirror
    store_url: str

    def sql(self, statement: str, **params: Any) -> None:
        with self.app.begin() as conn:
            conn.execute(text(statement), params)

    def add(self, *ids: int, unsubscribed: bool = False, at: str = "2026-01-01 10:00:00") -> None:
        for i in ids:
            self.sql(
                "INSERT INTO users (id, email, first_name, city, plan, unsubscribed, updated_at) "
                "VALUES (:i, :email, :name, 'Minsk', 'free', :u, :at)",
                i=i,
                email=f"User{i}@Example.com",
                name=f"User {i}",
                u=unsubscribed,
                at=at,
            )

    def config(self, *targets: dict[str, Any], **source: Any) -> Config:
        settings = {"name": "app", "url": self.app_url, "query": QUERY, "list": "newsletter"}
        return parse_config(
            {
                "store": {"url": self.store_url},
                "source": [{**settings, **source}],
                "target": list(targets),
            },
            "test",
            providers=PROVIDERS,
        )

    def members(self, list_name: str = "newsletter") -> set[str]:
        with self.db.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.email FROM contact c JOIN membership m ON m.contact_id = c.id "
                    "WHERE m.list_name = :l"
                ),
                {"l": list_name},
            )
            return {email for (email,) in rows}

    def contact(self, email: str) -> dict[str, Any]:
        with self.db.connect() as conn:
            row = conn.execute(
                text("SELECT email, status, fields, tags, deleted FROM contact WHERE email = :e"),
                {"e": email},
            ).one()
        return dict(row._mapping)

    def snapshot(self) -> list[tuple[Any, ...]]:
        """Every contact and membership of the mirror, to compare before and after."""
        with self.db.connect() as conn:
            contacts = conn.execute(
                text("SELECT email, phone, status, fields, tags, deleted FROM contact ORDER BY id")
            ).all()
            members = conn.execute(
                text("SELECT contact_id, list_name, state FROM membership ORDER BY 1, 2")
            ).all()
        return [tuple(r) for r in contacts] + [tuple(r) for r in members]


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "sqlite":
        app_url = f"sqlite:///{tmp_path / 'app.db'}"
        store_url = f"sqlite:///{tmp_path / 'syncd.db'}"
        yield from _world("sqlite", app_url, store_url)
        return
    with postgresql_schema() as app_url, postgresql_schema() as store_url:
        yield from _world("postgresql", app_url, store_url)


def _world(kind: str, app_url: str, store_url: str) -> Iterator[World]:
    app = create_engine(app_url, poolclass=NullPool)
    with app.begin() as conn:
        conn.execute(text(TABLE))
    db = open_engine(store_url)
    try:
        yield World(kind, app, app_url, db, store_url)
    finally:
        db.dispose()
        app.dispose()


def emails(*ids: int) -> set[str]:
    return {f"user{i}@example.com" for i in ids}


# -- snapshot -------------------------------------------------------------------------------


def test_a_snapshot_read_creates_edits_and_takes_vanished_rows_off_the_list(world: World) -> None:
    world.add(1, 2, 3)
    config = world.config()
    first = pull(world.db, config, config.source[0])
    assert (first.rows, first.created, first.updated, first.removed) == (3, 3, 0, 0)
    assert world.members() == emails(1, 2, 3)
    ann = world.contact("user1@example.com")
    assert ann["status"] == "active" and '"city":"Minsk"' in ann["fields"]

    again = pull(world.db, config, config.source[0])
    assert (again.unchanged, again.changed, again.lists) == (3, 0, frozenset())

    world.sql("UPDATE users SET city = 'Brest', plan = 'pro,beta' WHERE id = 1")
    world.sql("DELETE FROM users WHERE id = 2")
    world.add(4)
    third = pull(world.db, config, config.source[0])
    assert (third.created, third.updated, third.unchanged, third.removed) == (1, 1, 1, 1)
    assert third.lists == {"newsletter"}
    assert world.members() == emails(1, 3, 4)
    ann = world.contact("user1@example.com")
    assert '"city":"Brest"' in ann["fields"] and ann["tags"] == '["beta","pro"]'
    # a vanished row takes its contact off the list; the contact itself stays
    assert world.contact("user2@example.com")["deleted"] in (False, 0)


def test_a_bad_row_is_rejected_by_row_and_a_duplicate_key_names_the_first_row(
    world: World,
) -> None:
    world.add(1, 2)
    world.sql("INSERT INTO users (id, email, first_name) VALUES (3, 'not-an-email', 'X')")
    world.sql("INSERT INTO users (id, email, first_name) VALUES (4, ' USER1@example.com', 'Y')")
    config = world.config(query=QUERY + " ORDER BY id")
    report = pull(world.db, config, config.source[0])
    assert report.created == 2
    reasons = {r.line: r.reason for r in report.rejected}
    assert "invalid email" in reasons[3]
    assert reasons[4] == "duplicate email user1@example.com: already on row 1"


def test_a_dry_run_reads_and_counts_but_applies_nothing(world: World) -> None:
    world.add(1, 2)
    config = world.config()
    before = world.snapshot()
    report = pull(world.db, config, config.source[0], dry_run=True)
    assert (report.created, report.dry_run) == (2, True)
    assert world.snapshot() == before
    assert pull(world.db, config, config.source[0]).created == 2  # nothing was remembered


# -- the guard ------------------------------------------------------------------------------


def test_a_query_that_suddenly_returns_nothing_never_empties_the_list(world: World) -> None:
    world.add(1, 2, 3)
    config = world.config()
    pull(world.db, config, config.source[0])
    world.sql("DELETE FROM users")
    before = world.snapshot()
    with pytest.raises(MassDeleteRefused, match="returned no rows where the last read had 3"):
        pull(world.db, config, config.source[0])
    assert world.snapshot() == before and world.members() == emails(1, 2, 3)
    status = source_status(config, world.db)[0]
    assert "no rows" in status["error"] and status["rows"] == 3


def test_the_mass_delete_guard_refuses_a_read_that_removes_too_many(world: World) -> None:
    world.add(*range(1, 41))
    target = {
        "name": "news",
        "provider": "unisender",
        "list_id": "1",
        "local_list": "newsletter",
        "api_key": "k" * 20,
        "max_delete_fraction": 0.25,
    }
    config = world.config(target)
    pull(world.db, config, config.source[0])
    world.sql("DELETE FROM users WHERE id > 28")  # 12 of 40 leave: 30 % > 25 %
    world.sql("UPDATE users SET city = 'Grodno' WHERE id = 1")
    before = world.snapshot()
    with pytest.raises(MassDeleteRefused, match=r"remove 12 of the 40 members.*targets news"):
        pull(world.db, config, config.source[0])
    assert world.snapshot() == before  # the edit of row 1 waits with the removals

    allowed = pull(world.db, config, config.source[0], allow_mass_delete=True)
    assert (allowed.removed, allowed.updated) == (12, 1)
    assert world.members() == emails(*range(1, 29))


# -- failed reads ---------------------------------------------------------------------------


def test_a_query_that_fails_mid_stream_changes_nothing(world: World) -> None:
    world.add(*range(1, 1501))
    config = world.config()
    pull(world.db, config, config.source[0])
    world.sql("UPDATE users SET city = 'Gomel' WHERE id < 100")
    # Row 1400 fails only when the database reaches it: the rows before it are already read
    # (PostgreSQL sends them in batches through the server-side cursor).
    failing = {
        "sqlite": "CASE WHEN id = 1400 THEN abs(-9223372036854775807 - 1) ELSE 1 END",
        "postgresql": "1 / (id - 1400)",
    }[world.kind]
    query = f"SELECT email, city, {failing} AS n FROM users ORDER BY id"
    broken = world.config(query=query)
    before = world.snapshot()
    with pytest.raises(SourceReadFailed, match="source app: the read failed"):
        pull(world.db, broken, broken.source[0])
    assert world.snapshot() == before
    assert "read failed" in source_status(broken, world.db)[0]["error"]


def test_a_read_past_its_timeout_changes_nothing(world: World) -> None:
    world.add(1, 2)
    slow = {
        "sqlite": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
        "WHERE x < 1000000000) SELECT u.email, (SELECT max(x) FROM n) AS m FROM users u",
        "postgresql": "SELECT u.email, s.slept FROM users u, "
        "(SELECT pg_sleep(20)::text AS slept) s",
    }[world.kind]
    config = world.config(query=slow, timeout=0.5)
    before = world.snapshot()
    with pytest.raises(SourceReadFailed, match=r"longer than its timeout \(0.5 s\)"):
        pull(world.db, config, config.source[0])
    assert world.snapshot() == before


def test_a_query_that_writes_is_refused_by_the_database(world: World) -> None:
    world.add(1)
    config = world.config(query="DELETE FROM users RETURNING email")
    with pytest.raises(SourceReadFailed):
        pull(world.db, config, config.source[0])
    with world.app.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 1


# -- cursor mode ----------------------------------------------------------------------------


def test_cursor_mode_reads_past_the_cursor_with_an_overlap_and_finds_deletes_at_full_every(
    world: World,
) -> None:
    world.add(1, 2, 3, at="2026-01-01 10:00:00")
    config = world.config(
        query=QUERY.replace(" FROM", ", updated_at FROM"),
        mode="cursor",
        cursor_column="updated_at",
        overlap="10m",
        full_every="1h",
    )
    source = config.source[0]
    t0 = 1_800_000_000.0
    first = pull(world.db, config, source, now=t0)
    assert (first.mode, first.created) == ("snapshot", 3)  # no cursor yet: a full read

    # Row 1 changed and its transaction committed late: its timestamp is 5 minutes before the
    # newest one seen, inside the overlap. Row 2 changed without touching updated_at, far
    # behind the cursor: a cursor read cannot see it. Row 3 is deleted.
    world.sql("UPDATE users SET city = 'Brest', updated_at = '2026-01-01 09:55:00' WHERE id = 1")
    world.sql("UPDATE users SET city = 'Vitebsk', updated_at = '2025-06-01 00:00:00' WHERE id = 2")
    world.sql("DELETE FROM users WHERE id = 3")
    world.add(4, at="2026-01-01 10:30:00")
    second = pull(world.db, config, source, now=t0 + 600)
    assert second.mode == "cursor"
    assert (second.rows, second.created, second.updated, second.removed) == (2, 1, 1, 0)
    assert '"city":"Brest"' in world.contact("user1@example.com")["fields"]
    assert '"city":"Minsk"' in world.contact("user2@example.com")["fields"]
    assert world.members() == emails(1, 2, 3, 4)  # a cursor read infers no delete

    third = pull(world.db, config, source, now=t0 + 3600)
    assert third.mode == "snapshot"  # full_every has passed
    assert (third.updated, third.removed) == (1, 1)
    assert '"city":"Vitebsk"' in world.contact("user2@example.com")["fields"]
    assert world.members() == emails(1, 2, 4)


# -- consent --------------------------------------------------------------------------------


def test_a_source_opts_contacts_out_and_never_resubscribes_one(world: World) -> None:
    world.add(1, 2)
    world.add(3, unsubscribed=True)
    config = world.config()
    pull(world.db, config, config.source[0])
    assert world.contact("user3@example.com")["status"] == "unsubscribed"

    world.sql("UPDATE users SET unsubscribed = TRUE WHERE id = 1")
    pull(world.db, config, config.source[0])
    assert world.contact("user1@example.com")["status"] == "unsubscribed"

    # Contact 2 opts out at the provider (a cycle pulls it into the mirror); the source still
    # says subscribed, then edits the row: the opt-out holds.
    with world.db.begin() as conn:
        conn.execute(
            text("UPDATE contact SET status = 'unsubscribed' WHERE email = :e"),
            {"e": "user2@example.com"},
        )
    world.sql("UPDATE users SET city = 'Pinsk', unsubscribed = FALSE WHERE id IN (1, 2, 3)")
    pull(world.db, config, config.source[0])
    for i in (1, 2, 3):
        assert world.contact(f"user{i}@example.com")["status"] == "unsubscribed"

    # A status column saying active is no re-subscription either.
    with_status = world.config(query="SELECT email, 'active' AS status, city FROM users")
    pull(world.db, with_status, with_status.source[0])
    assert world.contact("user2@example.com")["status"] == "unsubscribed"


# -- credentials ----------------------------------------------------------------------------


def test_the_source_url_and_its_password_never_reach_errors_status_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    password = "s3cret-Pa55word-for-the-app"
    url = f"postgresql+psycopg://app_reader:{password}@127.0.0.1:1/app?connect_timeout=2"
    config = parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'syncd.db'}"},
            "source": [{"name": "app", "url": url, "query": QUERY, "list": "newsletter"}],
        },
        "test",
        providers=PROVIDERS,
    )
    assert password not in repr(config) and password not in str(config.source[0])
    db = open_engine(config.store.url)
    from syncd.commands.sources import pull_one

    with caplog.at_level(logging.DEBUG):
        outcome = pull_one(db, config, config.source[0])
    assert outcome.outcome == "failed" and "the read failed" in outcome.reason
    status = source_status(config, db)[0]
    assert status["database"] == "postgresql+psycopg://127.0.0.1:1/app"
    for text_seen in (outcome.reason, str(status), caplog.text):
        assert password not in text_seen and "app_reader" not in str(status)


# -- configuration --------------------------------------------------------------------------


def _parse(**source: Any) -> Config:
    settings = {"name": "app", "url": "sqlite:///app.db", "query": QUERY, "list": "newsletter"}
    return parse_config({"source": [{**settings, **source}]}, "syncd.toml", providers=PROVIDERS)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"quary": "x"}, "source[0].quary: unknown key; did you mean 'query'?"),
        ({"mode": "cursor"}, "mode = 'cursor' needs cursor_column"),
        ({"every": "5m", "cron": "0 * * * *"}, "give every or cron, not both"),
        ({"every": "often"}, "every 'often' must be a duration"),
        ({"url": "nosuchdb://u:pw-9f8e7d6c@h/x"}, "unknown database 'nosuchdb'"),
        ({"key": "id"}, "source[0].key: must be 'email' or 'phone'"),
    ],
)
def test_a_source_table_is_checked_like_the_rest_of_the_configuration(
    settings: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(**settings)
    assert problem in str(caught.value)
    assert "pw-9f8e7d6c" not in str(caught.value)


def test_a_source_url_takes_the_environment_and_a_relative_sqlite_path_the_configs_folder(
    tmp_path: Path,
) -> None:
    config = parse_config(
        {"source": [{"name": "app", "url": "${APP_DB}", "query": QUERY, "list": "n"}]},
        "syncd.toml",
        {"APP_DB": "sqlite:///app.db"},
        providers=PROVIDERS,
        base=tmp_path,
    )
    assert config.source[0].url.get_secret_value() == f"sqlite:///{tmp_path / 'app.db'}"
    assert config.source[0].schedule == "5m"


def test_a_source_keyed_by_phone_reads_phones_in_international_form(world: World) -> None:
    world.sql("INSERT INTO users (id, email, first_name) VALUES (1, NULL, 'Ann'), (2, NULL, 'Bob')")
    query = "SELECT CASE id WHEN 1 THEN '+375291234567' ELSE '375 29 7654321' END AS phone, "
    config = world.config(query=query + "first_name AS name FROM users", key="phone")
    report = pull(world.db, config, config.source[0])
    assert report.created == 1
    assert "international format" in report.rejected[0].reason  # no default_region set
    again = pull(world.db, config, config.source[0])
    assert (again.unchanged, again.changed) == (1, 0)


def test_a_read_another_process_applied_first_applies_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    pulling = sys.modules["syncd.local.source.pull"]  # the package's `pull` is the function
    world.add(1)
    config = world.config()
    source = config.source[0]
    diff = pulling._diff

    def raced(*args: Any) -> Any:
        found = diff(*args)  # this read's diff, made before the other process's commit
        monkeypatch.setattr(pulling, "_diff", diff)
        pull(world.db, config, source)  # another replica reads and applies meanwhile
        world.sql("UPDATE users SET city = 'Lida' WHERE id = 1")
        return found

    monkeypatch.setattr(pulling, "_diff", raced)
    with pytest.raises(SourceBusy, match="another process applied a read of it meanwhile"):
        pull(world.db, config, source)
    assert world.members() == emails(1)
    assert source_status(config, world.db)[0]["error"] == ""  # the other read's outcome stands
