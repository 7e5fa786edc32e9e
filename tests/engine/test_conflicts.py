"""Conflicts: field-level policies end to end, and the manual policy's hold and resolve."""

from __future__ import annotations

import pytest
from conftest import World

from syncd.commands import cycles


def _diverge(world: World) -> None:
    world.add_local(2)
    world.cycle()
    world.ingest([{"email": "person0@example.com", "name": "Local Name"}])
    world.emu.edit("person0@example.com", Name="Remote Name")


@pytest.mark.parametrize(("policy", "winner"), [("local", "Local Name"), ("remote", "Remote Name")])
def test_policy_decides_a_field_changed_on_both_sides(make_world, policy, winner):
    world = make_world(conflict=policy)
    _diverge(world)
    world.cycle()
    assert world.local()["person0@example.com"]["name"] == winner
    assert world.remote()["person0@example.com"]["fields"]["Name"] == winner
    assert world.cycle().write_calls == 0


def test_per_field_override(make_world):
    world = make_world(conflict={"default": "local", "Name": "remote"})
    _diverge(world)
    world.cycle()
    assert world.local()["person0@example.com"]["name"] == "Remote Name"


def test_manual_conflict_is_held_listed_and_resolved(make_world):
    world = make_world(conflict="manual")
    _diverge(world)
    calls = world.import_calls()
    held = world.cycle()
    assert held.outcome == "conflicts" and held.exit_code == 1
    assert world.import_calls() == calls  # untouched on both sides
    assert world.local()["person0@example.com"]["name"] == "Local Name"
    assert world.remote()["person0@example.com"]["fields"]["Name"] == "Remote Name"
    (conflict,) = cycles.list_conflicts(world.config, db=world.db)
    assert conflict["fields"] == [
        {"field": "Name", "local": "Local Name", "remote": "Remote Name", "base": "Person 0"}
    ]
    assert world.cycle().outcome == "conflicts"  # still held, still untouched

    assert cycles.resolve(world.config, "person0@example.com", "remote", db=world.db) == 1
    done = world.cycle()
    assert done.outcome == "converged"
    assert world.local()["person0@example.com"]["name"] == "Remote Name"
    assert cycles.list_conflicts(world.config, db=world.db) == []
    assert world.cycle().write_calls == 0


def test_manual_conflict_settles_by_itself_when_the_sides_agree(make_world):
    world = make_world(conflict="manual")
    _diverge(world)
    world.cycle()
    world.ingest([{"email": "person0@example.com", "name": "Remote Name"}])
    assert world.cycle().outcome == "converged"
    assert cycles.list_conflicts(world.config, db=world.db) == []
