"""Consent per list on the local side: ``unsubscribed_lists`` in contact files and snapshots.

Each test runs on SQLite and on PostgreSQL (``store_url``); the states are read back from the
``membership`` table itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from syncd.config import Config, IngestConfig, parse_config
from syncd.local.inbox import Inbox
from syncd.local.ingest import ingest_file
from syncd.local.ingest.write import IngestReport
from syncd.providers import PROVIDERS
from syncd.store import open_engine

CONFIG = IngestConfig()
A = "ann@example.com"


@pytest.fixture
def db(store_url: str) -> Iterator[Engine]:
    engine = open_engine(store_url)
    yield engine
    engine.dispose()


def ingest(db: Engine, folder: Path, name: str, content: str) -> IngestReport:
    path = folder / name
    path.write_text(content, encoding="utf-8")
    return ingest_file(db, path, CONFIG)


def ndjson(*records: dict[str, Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def states(db: Engine, email: str = A) -> dict[str, str]:
    """The contact's memberships: list -> state."""
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT m.list_name, m.state FROM membership m JOIN contact c "
                "ON c.id = m.contact_id WHERE c.email = :email"
            ),
            {"email": email},
        ).all()
    return {name: state for name, state in rows}


def outcome(report: IngestReport) -> tuple[int, int, int, int, int]:
    return (
        report.created,
        report.updated,
        report.deleted,
        report.unchanged,
        len(report.rejected),
    )


# -- ingest ------------------------------------------------------------------------------------


def test_csv_unsubscribed_lists_are_memberships_left(db: Engine, tmp_path: Path) -> None:
    report = ingest(
        db,
        tmp_path,
        "in.csv",
        'email,lists,unsubscribed_lists\nann@example.com,"news,promo",promo\n'
        'bob@example.com,news,"promo, sms"\n',
    )
    assert outcome(report) == (2, 0, 0, 0, 0)
    assert states(db) == {"news": "active", "promo": "unsubscribed"}
    # a list left but not in `lists` is still recorded, unsubscribed
    assert states(db, "bob@example.com") == {
        "news": "active",
        "promo": "unsubscribed",
        "sms": "unsubscribed",
    }


def test_ndjson_takes_an_array_or_a_comma_string(db: Engine, tmp_path: Path) -> None:
    report = ingest(
        db,
        tmp_path,
        "in.ndjson",
        ndjson(
            {"email": A, "lists": ["news"], "unsubscribed_lists": ["promo"]},
            {"email": "bob@example.com", "unsubscribed_lists": "promo,sms"},
        ),
    )
    assert outcome(report) == (2, 0, 0, 0, 0)
    assert states(db) == {"news": "active", "promo": "unsubscribed"}
    assert states(db, "bob@example.com") == {"promo": "unsubscribed", "sms": "unsubscribed"}


def test_unsubscribed_lists_alone_replaces_the_lists_left(db: Engine, tmp_path: Path) -> None:
    ingest(db, tmp_path, "1.ndjson", ndjson({"email": A, "lists": ["news", "promo", "sms"]}))
    report = ingest(db, tmp_path, "2.ndjson", ndjson({"email": A, "unsubscribed_lists": "promo"}))
    assert outcome(report) == (0, 1, 0, 0, 0)
    assert states(db) == {"news": "active", "promo": "unsubscribed", "sms": "active"}

    # the set is replaced: promo comes back, sms is left
    ingest(db, tmp_path, "3.ndjson", ndjson({"email": A, "unsubscribed_lists": ["sms"]}))
    assert states(db) == {"news": "active", "promo": "active", "sms": "unsubscribed"}

    # empty: every membership active again, none dropped
    report = ingest(db, tmp_path, "4.csv", "email,unsubscribed_lists\nann@example.com,\n")
    assert outcome(report) == (0, 1, 0, 0, 0)
    assert states(db) == {"news": "active", "promo": "active", "sms": "active"}


def test_lists_alone_keeps_the_state_of_a_list_kept(db: Engine, tmp_path: Path) -> None:
    ingest(
        db,
        tmp_path,
        "1.ndjson",
        ndjson({"email": A, "lists": ["news", "promo"], "unsubscribed_lists": ["promo"]}),
    )
    report = ingest(db, tmp_path, "2.ndjson", ndjson({"email": A, "lists": ["promo", "sms"]}))
    assert outcome(report) == (0, 1, 0, 0, 0)
    assert states(db) == {"promo": "unsubscribed", "sms": "active"}
    # the same lists again: nothing changes, the state included
    report = ingest(db, tmp_path, "3.csv", 'email,lists\nann@example.com,"sms,promo"\n')
    assert outcome(report) == (0, 0, 0, 1, 0)
    assert states(db) == {"promo": "unsubscribed", "sms": "active"}


def test_neither_column_leaves_memberships_and_states(db: Engine, tmp_path: Path) -> None:
    ingest(
        db,
        tmp_path,
        "1.ndjson",
        ndjson({"email": A, "lists": ["news"], "unsubscribed_lists": ["promo"]}),
    )
    report = ingest(db, tmp_path, "2.csv", "email,city\nann@example.com,Minsk\n")
    assert outcome(report) == (0, 1, 0, 0, 0)
    assert states(db) == {"news": "active", "promo": "unsubscribed"}


def test_only_a_state_change_counts_as_an_update(db: Engine, tmp_path: Path) -> None:
    ingest(db, tmp_path, "1.ndjson", ndjson({"email": A, "lists": ["news", "promo"]}))
    same = ndjson({"email": A, "lists": ["news", "promo"], "unsubscribed_lists": []})
    assert outcome(ingest(db, tmp_path, "2.ndjson", same)) == (0, 0, 0, 1, 0)
    left = ndjson({"email": A, "lists": ["news", "promo"], "unsubscribed_lists": ["promo"]})
    assert outcome(ingest(db, tmp_path, "3.ndjson", left)) == (0, 1, 0, 0, 0)
    assert outcome(ingest(db, tmp_path, "4.ndjson", left)) == (0, 0, 0, 1, 0)


def test_a_name_in_both_columns_is_on_the_list_unsubscribed(db: Engine, tmp_path: Path) -> None:
    report = ingest(
        db,
        tmp_path,
        "in.csv",
        'email,lists,unsubscribed_lists\nann@example.com,"news,promo",promo\n',
    )
    assert report.rejected == []
    assert states(db) == {"news": "active", "promo": "unsubscribed"}


def test_delete_drops_every_membership_and_revival_starts_with_none(
    db: Engine, tmp_path: Path
) -> None:
    ingest(
        db,
        tmp_path,
        "1.ndjson",
        ndjson({"email": A, "lists": ["news"], "unsubscribed_lists": ["promo"]}),
    )
    assert outcome(ingest(db, tmp_path, "2.csv", "email,delete\nann@example.com,1\n")) == (
        0,
        0,
        1,
        0,
        0,
    )
    assert states(db) == {}
    # re-created: no memberships from before, only what the new row says
    report = ingest(db, tmp_path, "3.csv", "email,city\nann@example.com,Minsk\n")
    assert outcome(report) == (1, 0, 0, 0, 0)
    assert states(db) == {}
    ingest(db, tmp_path, "4.ndjson", ndjson({"email": A, "unsubscribed_lists": ["news"]}))
    assert states(db) == {"news": "unsubscribed"}


def test_bad_names_are_rejected_with_their_line(db: Engine, tmp_path: Path) -> None:
    ingest(db, tmp_path, "1.ndjson", ndjson({"email": A, "lists": ["news"]}))
    report = ingest(
        db,
        tmp_path,
        "2.ndjson",
        ndjson(
            {"email": A, "unsubscribed_lists": ["news", 3]},
            {"email": "bob@example.com", "unsubscribed_lists": ["a,b"]},
            {"email": "cid@example.com", "unsubscribed_lists": {"news": True}},
            {"email": "dan@example.com", "unsubscribed_lists": ["news", " "]},
        ),
    )
    assert [(r.line, r.reason) for r in report.rejected] == [
        (1, "unsubscribed_lists must be a list of names, found 3"),
        (2, "unsubscribed_list 'a,b' contains a comma"),
        (3, "unsubscribed_lists must be a list of names"),
    ]
    assert outcome(report)[:4] == (1, 0, 0, 0)  # dan@: a blank name is skipped, as in lists
    assert states(db) == {"news": "active"}  # the rejected row changed nothing
    assert states(db, "dan@example.com") == {"news": "unsubscribed"}


def test_a_chunked_file_applies_states_in_order(
    db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncd.local.ingest import write

    monkeypatch.setattr(write, "CHUNK_SIZE", 2)
    rows = [{"email": f"u{i}@example.com", "lists": ["news", "promo"]} for i in range(5)]
    ingest(db, tmp_path, "1.ndjson", ndjson(*rows))
    left = [{"email": f"u{i}@example.com", "unsubscribed_lists": ["promo"]} for i in range(5)]
    report = ingest(db, tmp_path, "2.ndjson", ndjson(*left))
    assert outcome(report) == (0, 5, 0, 0, 0)
    for i in range(5):
        assert states(db, f"u{i}@example.com") == {"news": "active", "promo": "unsubscribed"}


# -- the inbox: changed lists and snapshots ----------------------------------------------------


def inbox_config(tmp_path: Path, store_url: str) -> Config:
    return parse_config(
        {
            "store": {"url": store_url},
            "inbox": {"path": str(tmp_path / "inbox")},
            "target": [
                {
                    "name": "news",
                    "provider": "unisender",
                    "list_id": "1",
                    "local_list": "news",
                    "api_key": "k",
                }
            ],
        },
        "test",
        env={},
        providers=PROVIDERS,
    )


@pytest.fixture
def inbox(tmp_path: Path, store_url: str, db: Engine) -> Iterator[Inbox]:
    box = Inbox(db, inbox_config(tmp_path, store_url), lambda _: None, lambda _: None, settle=0)
    yield box
    box.stop()


def drop(tmp_path: Path, name: str, content: str) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(content, encoding="utf-8")


def test_a_state_change_alone_reports_its_list_changed(
    db: Engine, inbox: Inbox, tmp_path: Path
) -> None:
    ingest(db, tmp_path, "seed.ndjson", ndjson({"email": A, "lists": ["news", "promo"]}))
    drop(tmp_path, "left.csv", "email,unsubscribed_lists\nann@example.com,promo\n")
    (done,) = inbox.scan()
    assert done.status == "processed"
    assert "promo" in done.lists
    assert states(db) == {"news": "active", "promo": "unsubscribed"}


def test_a_snapshot_keeps_the_state_of_a_member_that_stays(
    db: Engine, inbox: Inbox, tmp_path: Path
) -> None:
    ingest(
        db,
        tmp_path,
        "seed.ndjson",
        ndjson(
            {"email": A, "lists": ["news", "vip"], "unsubscribed_lists": ["news"]},
            {"email": "bob@example.com", "lists": ["news"], "unsubscribed_lists": ["news"]},
            {"email": "cid@example.com", "lists": ["news"]},
            {"email": "dan@example.com", "lists": ["news"], "unsubscribed_lists": ["news"]},
            {"email": "eve@example.com", "lists": ["news"]},
        ),
    )
    drop(
        tmp_path,
        "news.snapshot.ndjson",
        ndjson(
            {"email": A, "city": "Minsk"},  # stays: keeps its state
            {"email": "bob@example.com", "lists": ["vip"]},  # a lists column without news
            {"email": "cid@example.com", "unsubscribed_lists": ["news"]},  # leaves news now
            {"email": "dan@example.com", "unsubscribed_lists": []},  # comes back to news
            {"email": "new@example.com", "city": "Brest"},  # joins, active
            {"email": "old@example.com", "unsubscribed_lists": ["news"]},  # joins, left
        ),
    )
    (done,) = inbox.scan()
    assert done.status == "processed", done.report
    assert done.report["snapshot"] == {"list": "news", "removed": 1}  # eve@
    assert states(db) == {"news": "unsubscribed", "vip": "active"}
    assert states(db, "bob@example.com") == {"news": "unsubscribed", "vip": "active"}
    assert states(db, "cid@example.com") == {"news": "unsubscribed"}
    assert states(db, "dan@example.com") == {"news": "active"}
    assert states(db, "new@example.com") == {"news": "active"}
    assert states(db, "old@example.com") == {"news": "unsubscribed"}
    assert states(db, "eve@example.com") == {}
    assert {"news", "vip"} <= done.lists
