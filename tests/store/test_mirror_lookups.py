"""The mirror's per-key look-ups (``syncd.store.mirror``) on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from syncd.store import history, mirror, open_engine, seen
from syncd.store.models import Contact


def test_own_contacts_reads_live_contacts_and_tombstones_past_one_page(store_url: str) -> None:
    db = open_engine(store_url)
    try:
        # more keys than one IN list holds (500), so that the second page is read too
        emails = [f"user{i:04}@example.com" for i in range(1203)]
        with Session(db) as session:
            session.add_all(
                Contact(
                    email=email,
                    phone=f"+4470000{i:05}",
                    status=("active", "unsubscribed", "blocked")[i % 3],
                    deleted=i % 7 == 0,  # a delete's tombstone keeps its status
                )
                for i, email in enumerate(emails)
            )
            session.commit()
            by_email = mirror.LocalView("email", "news", {})
            asked = [*emails, "nobody@example.com", emails[0]]  # unknown and repeated keys
            found = mirror.own_contacts(session, by_email, asked)
            assert {e: m.status for e, m in found.items()} == {
                e: ("active", "unsubscribed", "blocked")[i % 3] for i, e in enumerate(emails)
            }
            # off the list, the contact has no consent of the list's: it reads as active there
            assert {m.state for m in found.values()} == {"active"}
            by_phone = mirror.LocalView("phone", "news", {})
            (member,) = mirror.own_contacts(session, by_phone, ["+447000000004", "+1555"]).values()
            assert (member.email, member.phone, member.status) == (
                "user0004@example.com",
                "+447000000004",
                "unsubscribed",
            )
            assert mirror.own_contacts(session, by_email, []) == {}
    finally:
        db.dispose()


def test_many_writes_every_row_in_order_across_statements(store_url: str) -> None:
    db = open_engine(store_url)
    try:
        with Session(db) as session:
            # more rows than one statement of SQLite's holds (500), the last one part-filled;
            # history's ids say the order the rows went in
            steps = [
                ("t", None, "news", f"k{i:04}", "create_remote", None, "{}") for i in range(1203)
            ]
            history.add_tuples(session, steps)
            # an upsert meeting its own key again later in the rows: the later row wins, as
            # one statement a row would leave it
            mirror.set_base_texts(
                session, "news", [("a", '["a"]'), ("b", '["b"]'), ("a", '["a2"]')]
            )
            mirror.many(session, "INSERT INTO dirty (target, key) VALUES (?, ?)", [("news", "z")])
            session.commit()
            read = session.connection().execute
            keys = [k for (k,) in read(text("SELECT key FROM history ORDER BY id"))]
            assert keys == [f"k{i:04}" for i in range(1203)]
            assert {k: v for k, v in read(text("SELECT key, data FROM base"))} == {
                "a": '["a2"]',
                "b": '["b"]',
            }
            assert read(text("SELECT count(*) FROM dirty WHERE key = 'z'")).scalar() == 1
    finally:
        db.dispose()


@pytest.fixture
def session(store_url: str) -> Iterator[Session]:
    """A session on a store opened for the test (SQLite, and PostgreSQL where there is one)."""
    db = open_engine(store_url)
    try:
        with Session(db) as session:
            yield session
    finally:
        db.dispose()


def test_driver_rows_reads_the_transaction_under_way_and_its_errors_are_sqlalchemy_s(
    session: Session,
) -> None:
    rows_in = [("news", "b"), ("news", "a")]
    mirror.many(session, "INSERT INTO dirty (target, key) VALUES (?, ?)", rows_in)
    # not committed: the rows are this transaction's, read through the same connection
    rows = mirror.driver_rows(
        session, "SELECT key, target FROM dirty WHERE target = ? ORDER BY key", ["news"]
    )
    assert rows == [("a", "news"), ("b", "news")]
    assert all(type(row) is tuple for row in rows)
    session.rollback()
    assert mirror.driver_rows(session, "SELECT key FROM dirty", []) == []
    with pytest.raises(DBAPIError, match="no_such_table"):
        mirror.driver_rows(session, "SELECT key FROM no_such_table", [])


def test_drop_diff_rows_takes_out_exactly_the_rows_given_with_or_without_gaps(
    session: Session,
) -> None:
    rows = [("news", f"k{i:04}", "[]") for i in range(1200)]
    mirror.many(session, "INSERT INTO stage_diff (target, key, local) VALUES (?, ?, ?)", rows)
    session.commit()
    seqs = mirror.driver_rows(session, "SELECT seq FROM stage_diff ORDER BY seq", [])
    numbers = [seq for (seq,) in seqs]
    run = numbers[10:700]  # no gap: one range
    gapped = numbers[800:1100:2]  # every other one: lists of numbers
    mirror.drop_diff_rows(session, run)
    mirror.drop_diff_rows(session, gapped)
    mirror.drop_diff_rows(session, [])
    session.commit()
    left = [seq for (seq,) in mirror.driver_rows(session, "SELECT seq FROM stage_diff", [])]
    assert sorted(left) == sorted(set(numbers) - set(run) - set(gapped))


def test_a_targets_members_are_counted_with_its_key_and_without(session: Session) -> None:
    rows = [(i, "sms", None if i % 3 else f"+37529{i:07}", None, None) for i in range(30)]
    rows += [(i, "news", None, None, None) for i in range(5)]  # another target's
    mirror.many(
        session,
        "INSERT INTO local_seen (contact_id, target, key, digest, data) VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    assert seen.keyed_count(session, "sms") == 10
    assert seen.keyless_count(session, "sms") == 20
    assert seen.keyless_count(session, "nothing") == 0
    session.rollback()


def test_a_key_another_list_of_the_account_holds_is_no_pure_create(session: Session) -> None:
    """On a peer's list (its base, its last export) or taken off it, the account holds the
    contact: its create on this list starts from that state, in the general path."""
    keys = ["plain@x.io", "peer-base@x.io", "peer-export@x.io", "peer-off@x.io"]
    local = '["k",[],[],"active"]'
    mirror.many(
        session,
        "INSERT INTO stage_diff (target, key, local) VALUES (?, ?, ?)",
        [("offers", key, local) for key in keys],
    )
    mirror.many(
        session,
        "INSERT INTO base (target, key, digest, data, unseen) VALUES (?, ?, ?, ?, 0)",
        [("news", "peer-base@x.io", "d", local)],
    )
    mirror.many(
        session,
        "INSERT INTO remote_seen (target, key, fp, digest, data, raw_status, "
        "opted_out_elsewhere) VALUES (?, ?, 1, ?, ?, ?, ?)",
        [("news", "peer-export@x.io", "d", local, "unsubscribed", False)],
    )
    mirror.many(
        session,
        "INSERT INTO off_list (target, key, data) VALUES (?, ?, ?)",
        [("news", "peer-off@x.io", local)],
    )

    def chosen(peers: list[str]) -> list[str]:
        return [key for _seq, key, _data in mirror.pure_creates(session, "offers", peers, 0, 10)]

    assert chosen(["news"]) == ["plain@x.io"]
    assert chosen(["events"]) == keys  # another account's lists are no peers
    assert chosen([]) == keys
    session.rollback()
