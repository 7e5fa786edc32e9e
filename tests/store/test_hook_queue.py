"""The hook tables (``syncd.store.hooks``) on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from syncd.store import hooks, open_engine


def test_a_target_keeps_one_token_until_it_is_forgotten(store_url: str) -> None:
    db = open_engine(store_url)
    try:
        first = hooks.token_for(db, "news")
        assert len(first) >= 40 and hooks.token_for(db, "news") == first
        assert hooks.token_for(db, "other") != first
        hooks.forget_token(db, "news")
        assert hooks.known_token(db, "news") is None
        assert hooks.token_for(db, "news") != first
    finally:
        db.dispose()


def test_a_key_queued_twice_is_one_row_and_a_claim_takes_it_out(store_url: str) -> None:
    db = open_engine(store_url)
    try:
        assert hooks.enqueue(db, "news", ["a@x.io", "b@x.io", "a@x.io"], hooks.REREAD) == 2
        assert hooks.enqueue(db, "news", ["a@x.io"], hooks.REREAD) == 0
        assert hooks.enqueue(db, "news", ["a@x.io"], hooks.OPT_OUT) == 1
        assert hooks.waiting(db) == {"news": 3}
        assert hooks.take(db, "news", limit=2) == [("a@x.io", "reread"), ("b@x.io", "reread")]
        # claimed: the same key arriving now is queued again, to be read after this read
        assert hooks.enqueue(db, "news", ["a@x.io"], hooks.REREAD) == 1
        assert hooks.take(db, "news") == [("a@x.io", "opt_out"), ("a@x.io", "reread")]
        assert hooks.waiting(db) == {}
        with pytest.raises(ValueError, match="unknown hook work"):
            hooks.enqueue(db, "news", ["a@x.io"], "apply")
    finally:
        db.dispose()


def test_hook_work_under_the_lease_is_not_taken_for_a_cycle_start(store_url: str) -> None:
    from syncd.store.lease import Leases

    db = open_engine(store_url)
    try:
        worker, other = Leases(db, "worker", 30.0), Leases(db, "other", 30.0)
        with worker.hold("news", cycle=False) as lease:
            assert lease is not None
            assert not other.acquire("news")  # held: a cycle waits for it
        # given back: a tick that skips targets synced in the last 100 s still runs
        assert other.acquire("news", fresh_for=100.0)
        other.release("news")
        assert not worker.acquire("news", fresh_for=100.0)  # that one was a cycle's start
    finally:
        db.dispose()
