"""First meetings: a first sync against a filled list holds what differs until a person chooses.

A contact on both sides with no base has no ancestor: neither side's value is an edit, so the
``conflict`` policy does not apply and ``first_sync`` (default ``manual``) decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import World

from syncd.commands import cycles

N = 6  # contacts on both sides whose Name differs


def _filled(make_world: Callable[..., World], **target: Any) -> World:
    """A list at the provider already holding the local contacts: names differ, cities agree,
    one contact agrees on everything, one opted out at the provider."""
    world = make_world(**target)
    emails = world.add_local(N + 1)
    for i, email in enumerate(emails[:N]):
        world.emu.sign_up(email, world.list_id, fields={"Name": f"Remote {i}", "City": "Minsk"})
    world.emu.sign_up(emails[N], world.list_id, fields={"Name": f"Person {N}", "City": "Minsk"})
    world.emu.unsubscribe(emails[0], world.list_id)
    return world


def _names(rows: dict[str, dict[str, Any]], remote: bool) -> dict[str, str]:
    return {e: (r["fields"]["Name"] if remote else r["name"]) for e, r in rows.items()}


def test_a_first_sync_holds_what_differs_pushes_nothing_and_resolve_all_takes_remote(
    make_world: Callable[..., World],
):
    world = _filled(make_world)
    before_remote, before_local = world.remote(), world.local()
    calls = world.import_calls()

    held = world.cycle()
    assert held.outcome == "conflicts" and held.exit_code == 1
    assert held.summary()["conflicts"] == held.summary()["first_meetings_held"] == N
    assert world.import_calls() == calls and held.write_calls == 0  # nothing pushed for them
    assert _names(world.remote(), True) == _names(before_remote, True)
    assert _names(world.local(), False) == _names(before_local, False)
    listed = cycles.list_conflicts(world.config, db=world.db)
    assert len(listed) == N
    assert listed[1]["fields"] == [
        {"field": "Name", "local": "Person 1", "remote": "Remote 1", "base": None}
    ]
    assert world.cycle().summary()["first_meetings_held"] == N  # still held, still untouched

    assert cycles.resolve(world.config, None, "remote", db=world.db) == N
    done = world.cycle()
    assert done.outcome == "converged", done.message
    assert done.write_calls == 0  # the provider's values came in; nothing went out
    local = world.local()
    assert {e: local[e]["name"] for e in list(local)[:N]} == {
        f"person{i}@example.com": f"Remote {i}" for i in range(N)
    }
    assert world.consent("person0@example.com") == ("active", "unsubscribed")  # the opt-out too
    assert world.opted_out_remotely("person0@example.com")
    assert cycles.list_conflicts(world.config, db=world.db) == []
    assert world.cycle().write_calls == 0


def test_resolve_all_per_field_holds_until_every_field_in_conflict_has_a_side(
    make_world: Callable[..., World],
):
    world = _filled(make_world)
    world.emu.edit("person1@example.com", City="Brest")  # person1 differs in Name and City
    assert world.cycle().summary()["first_meetings_held"] == N

    assert cycles.resolve(world.config, None, "remote", db=world.db, fields=("Name",)) == N
    partly = world.cycle()
    assert partly.summary()["first_meetings_held"] == 1  # person1: City has no side yet
    (left,) = cycles.list_conflicts(world.config, db=world.db)
    assert left["key"] == "person1@example.com"
    assert {f["field"]: f.get("take") for f in left["fields"]} == {"City": None, "Name": "remote"}

    assert cycles.resolve(world.config, None, "local", db=world.db, fields=("City",)) == 1
    done = world.cycle()
    assert done.outcome == "converged", done.message
    p1 = world.remote()["person1@example.com"]["fields"]
    assert (p1["Name"], p1["City"]) == ("Remote 1", "Minsk")
    assert world.local()["person1@example.com"]["name"] == "Remote 1"
    assert world.cycle().write_calls == 0


def test_resolve_all_take_local_keeps_an_opt_out_made_at_the_provider(
    make_world: Callable[..., World],
):
    world = _filled(make_world)
    world.cycle()
    assert cycles.resolve(world.config, None, "local", db=world.db) == N
    done = world.cycle()
    assert done.outcome == "converged", done.message
    assert world.remote()["person1@example.com"]["fields"]["Name"] == "Person 1"
    assert world.opted_out_remotely("person0@example.com")  # rule 3, whatever is chosen
    assert world.consent("person0@example.com") == ("active", "unsubscribed")
    assert world.cycle().write_calls == 0


@pytest.mark.parametrize(("first_sync", "winner"), [("local", "Person 1"), ("remote", "Remote 1")])
def test_first_sync_local_or_remote_settles_without_holding(
    make_world: Callable[..., World], first_sync: str, winner: str
):
    world = _filled(make_world, first_sync=first_sync, conflict="manual")
    r = world.cycle()
    assert r.outcome == "converged" and r.summary()["first_meetings_held"] == 0, r.message
    assert world.remote()["person1@example.com"]["fields"]["Name"] == winner
    assert world.local()["person1@example.com"]["name"] == winner
    assert world.opted_out_remotely("person0@example.com")
    assert world.cycle().write_calls == 0


def test_a_plan_counts_the_first_meetings_it_would_hold_and_records_nothing(
    make_world: Callable[..., World],
):
    world = _filled(make_world)
    plan = world.cycle(dry_run=True)
    assert plan.outcome == "planned" and plan.summary()["first_meetings_held"] == N
    assert cycles.list_conflicts(world.config, db=world.db) == []


def test_a_side_for_one_field_of_one_contact_keeps_the_side_chosen_for_its_others(
    make_world: Callable[..., World],
):
    world = _filled(make_world)
    world.emu.edit("person1@example.com", City="Brest")  # Name and City differ
    world.cycle()
    key = "person1@example.com"
    assert cycles.resolve(world.config, key, "local", db=world.db) == 1
    assert cycles.resolve(world.config, key, "remote", db=world.db, fields=("City",)) == 1
    assert cycles.resolve(world.config, key, "remote", db=world.db, fields=("Phone",)) == 0
    world.cycle()
    p1 = world.remote()[key]["fields"]
    assert (p1["Name"], p1["City"]) == ("Person 1", "Brest")
    assert (world.local()[key]["name"], world.local()[key]["city"]) == ("Person 1", "Brest")
    assert [c["key"] for c in cycles.list_conflicts(world.config, db=world.db)] == [
        f"person{i}@example.com" for i in range(N) if i != 1
    ]
