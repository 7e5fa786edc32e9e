"""The store's schema comes from Alembic migrations, on SQLite and PostgreSQL alike.

A model changed without a migration fails here (autogenerate finds drift); a store made before
syncd had migrations is adopted with its data; replicas opening a new store at once all succeed.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, String, create_engine, inspect, text
from sqlalchemy.engine import Engine

from syncd.store import open_engine
from syncd.store.db import upgrade
from syncd.store.schema import HEAD, MIGRATIONS, metadata


def drift(engine: Engine, target: MetaData) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), target))


def head(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def test_the_migrations_create_exactly_the_models(store_url: str) -> None:
    engine = open_engine(store_url)
    try:
        assert drift(engine, metadata()) == []
        # the comparison does see a difference: a column the migrations never added
        changed = MetaData()
        for table in metadata().sorted_tables:
            table.to_metadata(changed)
        changed.tables["contact"].append_column(Column("nickname", String()))
        assert [d[0] for d in drift(engine, changed)] == ["add_column"]
        assert head(engine) == {"0012"}
    finally:
        engine.dispose()


def test_the_head_the_store_is_opened_at_is_the_newest_migration() -> None:
    # a migration added without moving HEAD would never run on an existing store
    assert ScriptDirectory(str(MIGRATIONS)).get_heads() == [HEAD]


def test_opening_an_up_to_date_store_changes_nothing(store_url: str) -> None:
    engine = open_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO lease VALUES ('a', 'h', 1, 1)"))
    engine.dispose()
    again = open_engine(store_url)
    with again.connect() as conn:
        assert conn.execute(text("SELECT holder FROM lease")).scalar_one() == "h"
    again.dispose()


def _store_before_migrations(path: Path) -> None:
    """What syncd made before it had migrations, and older still: no push_job tables yet."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    engine.dispose()
    with sqlite3.connect(path) as db:
        db.executescript(
            "DROP TABLE alembic_version; DROP TABLE push_job_row; DROP TABLE push_job_part;"
            "DROP TABLE push_job;"
            "INSERT INTO contact (id, email, fields, tags, status, deleted)"
            "  VALUES (1, 'ann@example.com', '{}', '[]', 'unsubscribed', 0);"
            "INSERT INTO membership VALUES (1, 'news');"
            "INSERT INTO run (target, started_at, outcome, summary, message)"
            "  VALUES ('news', '2026-01-01T00:00:00Z', 'converged', '{}', '');"
        )


def test_a_store_made_before_migrations_is_adopted_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _store_before_migrations(path)
    engine = open_engine(f"sqlite:///{path}")
    try:
        assert head(engine) == {"0012"}
        assert drift(engine, metadata()) == []  # the missing tables were added
        with engine.connect() as conn:
            assert conn.execute(text("SELECT status FROM contact")).all() == [("unsubscribed",)]
            assert conn.execute(text("SELECT target, holder FROM run")).all() == [("news", None)]
    finally:
        engine.dispose()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_replicas_opening_a_new_store_at_once_take_turns(store_url: str) -> None:
    engines = [create_engine(store_url) for _ in range(4)]
    start = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def open_it(engine: Engine) -> None:
        start.wait()
        try:
            upgrade(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert "lease" in inspect(engines[0]).get_table_names()
    finally:
        for e in engines:
            e.dispose()


def test_bases_of_an_older_store_count_no_export_yet(store_url: str) -> None:
    """0005 adds ``base.unseen``: every base already there starts at 0 (nothing counted)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(store_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
        conn.execute(text("INSERT INTO base VALUES ('news', 'ann@example.com', 'd', '{}')"))
    engine.dispose()
    engine = open_engine(store_url)
    try:
        assert head(engine) == {"0012"}
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT key, unseen FROM base")).all()
        assert rows == [("ann@example.com", 0)]
    finally:
        engine.dispose()


def test_memberships_of_an_older_store_start_active(store_url: str) -> None:
    """0006 adds consent per list: every membership already there is active on its list, and
    the contact keeps its own status (an opt-out recorded before stays the contact's)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(store_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0005")
        conn.execute(
            text(
                "INSERT INTO contact (id, email, fields, tags, status, deleted, ref) VALUES "
                "(1, 'ann@example.com', '{}', '[]', 'unsubscribed', false, 'r1'), "
                "(2, 'bob@example.com', '{}', '[]', 'active', false, 'r2')"
            )
        )
        conn.execute(text("INSERT INTO membership VALUES (1, 'news'), (2, 'news'), (2, 'x')"))
    engine.dispose()
    engine = open_engine(store_url)
    try:
        assert head(engine) == {"0012"}
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.email, c.status, m.list_name, m.state FROM membership m "
                    "JOIN contact c ON c.id = m.contact_id ORDER BY 1, 3"
                )
            ).all()
        assert rows == [
            ("ann@example.com", "unsubscribed", "news", "active"),
            ("bob@example.com", "active", "news", "active"),
            ("bob@example.com", "active", "x", "active"),
        ]
    finally:
        engine.dispose()


def test_the_dirty_triggers_mark_the_same_keys_at_0011_and_at_0012(tmp_path: Path) -> None:
    """0012 moves SQLite's test of a key already dirty into the trigger's WHEN clause: an
    insert, an update that changes the key and one that does not, and a delete mark what
    0011's triggers marked, after the upgrade and after a downgrade back to 0011."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(f"sqlite:///{tmp_path / 'store.db'}")

    def marked(revision: str) -> list[tuple[str, str]]:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            move = command.downgrade if revision == "0011" else command.upgrade
            move(config, revision)
            conn.execute(text("DELETE FROM dirty"))
            conn.execute(text("DELETE FROM local_seen"))
            conn.execute(text("DELETE FROM base"))
            conn.execute(text("INSERT INTO dirty VALUES ('t', 'a')"))
            conn.execute(
                text("INSERT INTO base (target, key, digest, data) VALUES ('t', 'a', 'd', '1')")
            )
            conn.execute(
                text("INSERT INTO base (target, key, digest, data) VALUES ('t', 'b', 'd', '1')")
            )
            conn.execute(
                text(
                    "INSERT INTO local_seen VALUES "
                    "(1, 't', 'c', 'd', '1'), (2, 't', NULL, NULL, NULL)"
                )
            )
            conn.execute(text("UPDATE local_seen SET key = 'e' WHERE contact_id = 1"))
            conn.execute(text("UPDATE local_seen SET key = 'f' WHERE contact_id = 2"))
            conn.execute(text("UPDATE base SET data = '2' WHERE key = 'b'"))
            conn.execute(text("DELETE FROM base WHERE key = 'a'"))
            return conn.execute(text("SELECT target, key FROM dirty ORDER BY key")).all()

    try:
        expected = [("t", k) for k in ("a", "b", "c", "e", "f")]
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0011")
        assert marked("0012") == expected
        assert marked("0011") == expected
        assert marked("0012") == expected
    finally:
        engine.dispose()
