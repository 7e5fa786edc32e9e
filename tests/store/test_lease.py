"""Leases on both databases: one holder at a time, lapsing when not renewed, renewed while held."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import World
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from syncd.commands import cycles
from syncd.store import open_engine
from syncd.store.lease import Leases, new_holder
from syncd.store.models import Run


@pytest.fixture
def db(store_url: str) -> Iterator[Engine]:
    engine = open_engine(store_url)
    yield engine
    engine.dispose()


def test_one_holder_at_a_time_and_free_again_once_released(db: Engine) -> None:
    a, b = Leases(db, "a", 30), Leases(db, "b", 30)
    assert a.acquire("news")
    assert not b.acquire("news") and not a.acquire("news")  # not even twice by the same one
    assert b.acquire("promo")  # other targets are independent
    assert a.holder_of("news") == "a"
    b.release("news")  # giving back a lease one does not hold changes nothing
    assert a.holder_of("news") == "a"
    a.release("news")
    assert b.acquire("news")


def test_a_scheduled_tick_just_after_another_replicas_cycle_does_nothing(db: Engine) -> None:
    a, b = Leases(db, "a", 30), Leases(db, "b", 30)
    assert a.acquire("news")
    a.release("news")
    assert not b.acquire("news", fresh_for=5)  # a's cycle began less than 5 s ago
    assert b.acquire("news", fresh_for=0)  # asked for (inbox changes): it runs at once
    b.release("news")
    time.sleep(0.3)
    assert a.acquire("news", fresh_for=0.2)


def test_a_lease_of_a_dead_process_of_this_machine_is_ended_at_once(db: Engine) -> None:
    """A daemon restarted after SIGKILL must not wait out lease_timeout behind itself."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = socket.gethostname()
    dead = Leases(db, f"{here}:{gone.pid}:0a1b2c", 300)
    alive = Leases(db, f"{here}:{os.getppid()}:0a1b2c", 300)  # a process that is running
    elsewhere = Leases(db, f"other-host:{gone.pid}:0a1b2c", 300)
    me = Leases(db, new_holder(), 300)
    for holder in (alive, elsewhere):
        assert holder.acquire("news")
        assert not me.acquire("news")  # still held: by a live process, or on another machine
        holder.release("news")
    assert dead.acquire("news")
    assert me.acquire("news")  # its holder is gone: no need to wait 300 s
    assert not dead.renew("news")


def test_a_lease_not_renewed_lapses_after_the_timeout(db: Engine) -> None:
    a, b = Leases(db, "a", 1.0), Leases(db, "b", 1.0)
    assert a.acquire("news")  # and then a dies: nobody renews
    started = time.monotonic()
    while not b.acquire("news"):
        assert time.monotonic() - started < 5, "the lease never lapsed"
        time.sleep(0.05)
    assert time.monotonic() - started >= 0.8  # and not before its time
    assert not a.renew("news")  # the old holder learns it has lost it


def test_a_held_lease_is_renewed_for_as_long_as_it_is_held(db: Engine) -> None:
    a, b = Leases(db, "a", 1.0), Leases(db, "b", 1.0)
    with a.hold("news") as lease:
        assert lease is not None
        deadline = time.monotonic() + 2.5  # more than twice the timeout
        while time.monotonic() < deadline:
            assert not b.acquire("news")
            time.sleep(0.1)
        assert not lease.lost.is_set()
        with b.hold("news") as other:
            assert other is None
    assert a.holder_of("news") is None  # given back at the end of the block


def test_a_renewal_waits_for_another_writer_instead_of_failing(db: Engine) -> None:
    """Another connection writing (a cycle's chunk, an inbox file) makes the renewal wait its
    turn, however short ``lease_timeout`` is, instead of failing "database is locked"."""
    leases = Leases(db, new_holder(), 3)
    assert leases.acquire("news")
    held, done = threading.Event(), threading.Event()

    def writer() -> None:
        with db.begin() as conn:
            conn.execute(text("UPDATE lease SET holder = holder WHERE 0 = 1"))  # takes the lock
            held.set()
            time.sleep(0.5)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(10)
        assert leases.renew("news")  # waited for the writer's commit (PostgreSQL: no wait)
    finally:
        thread.join()
    assert done.is_set()


def test_a_lease_taken_over_is_marked_lost(db: Engine) -> None:
    a = Leases(db, "a", 1.0)
    with a.hold("news") as lease:
        assert lease is not None
        with db.begin() as conn:  # as if it had lapsed and another replica had taken it
            conn.execute(text("UPDATE lease SET holder = 'b'"))
        assert lease.lost.wait(2.0)
    assert a.holder_of("news") == "b"  # not given back: it is not ours any more


def test_a_holder_asks_the_store_whether_its_lease_still_holds(db: Engine) -> None:
    """The renewal thread notices a lapse or a take-over only at its next renewal; the store
    answers at once, by its own clock."""
    a, b = Leases(db, "a", 30), Leases(db, "b", 0.3)
    with a.hold("news") as lease:
        assert lease is not None and lease.confirm()
        with db.begin() as conn:  # taken over: the renewal thread has not looked yet
            conn.execute(text("UPDATE lease SET holder = 'c'"))
        assert not lease.confirm() and lease.lost.is_set() and "taken over" in lease.why
    assert b.acquire("promo")  # and one that lapses unrenewed is no longer held
    assert b.holds("promo") and not a.holds("promo")
    time.sleep(0.5)
    assert not b.holds("promo")


def test_run_once_waits_for_the_target_and_records_its_holder(world: World) -> None:
    world.add_local(3)
    other = Leases(world.db, "another-replica", 30)
    assert other.acquire("news")
    threading.Timer(1.0, other.release, args=["news"]).start()
    started = time.monotonic()
    result = world.cycle()
    assert time.monotonic() - started >= 0.9  # it waited for the other holder
    assert result.outcome == "converged"
    with Session(world.db) as s:
        (run,) = s.exec(select(Run)).all()
    assert run.holder and run.holder != "another-replica"
    assert run.started_at.endswith("Z") and "." in run.started_at  # milliseconds
    assert other.holder_of("news") is None
    (status,) = cycles.status(world.config, db=world.db)
    assert status.last_run is not None and status.last_run["holder"] == run.holder
