"""The history a cycle keeps per key: conflicts and how each was settled, holds written once,
nothing from a plan, and the explanation built from it (``syncd.commands.explain``)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from conftest import World

from syncd.commands import cycles
from syncd.commands.explain import explain, explain_schema
from syncd.errors import UnknownKey
from syncd.store import history

KEY = "person0@example.com"


def _diverge(world: World) -> None:
    world.add_local(2)
    world.cycle()
    world.ingest([{"email": KEY, "name": "Local Name"}])
    world.emu.edit(KEY, Name="Remote Name")


def steps(world: World, key: str = KEY) -> list[dict[str, Any]]:
    found = explain(world.config, key, db=world.db).model_dump()
    jsonschema.validate(json.loads(json.dumps(found)), explain_schema())
    return [s for s in found["history"] if s["target"] is not None]


@pytest.mark.parametrize(("policy", "took"), [("local", "local"), ("remote", "remote")])
def test_a_conflict_settled_by_the_policy_says_which_side_each_field_took(make_world, policy, took):
    world = make_world(conflict=policy)
    _diverge(world)
    world.cycle()
    last = steps(world)[-1]
    assert last["case"] == "merge"
    (conflict,) = last["outcome"]["conflicts"]
    assert conflict == {
        "field": "Name",
        "local": "Local Name",
        "remote": "Remote Name",
        "base": "Person 0",
        "took": took,
    }
    if took == "local":
        assert last["sent"]["fields"] == {"Name": "Local Name"}
        assert last["outcome"]["result"] == "confirmed"
    else:  # nothing to send: the mirror took the provider's value
        assert last["sent"] is None and last["outcome"]["result"] == "applied"
        assert last["outcome"]["changed"] == {"Name": ["Local Name", "Remote Name"]}


def test_a_held_conflict_is_written_once_and_its_resolution_after_it(make_world):
    world = make_world(conflict="manual")
    _diverge(world)
    world.cycle()
    world.cycle()  # still held: no second row
    held = steps(world)[-1]
    assert (held["case"], held["outcome"]["result"]) == ("conflict_held", "held")
    assert held["outcome"]["conflicts"][0]["took"] == "held"
    assert "syncd resolve" in held["outcome"]["reason"]
    assert [s["case"] for s in steps(world)].count("conflict_held") == 1
    shown = explain(world.config, KEY, db=world.db).targets["news"]
    assert shown.conflict is not None and shown.conflict[0]["field"] == "Name"

    cycles.resolve(world.config, KEY, "remote", db=world.db)
    world.cycle()
    last = steps(world)[-1]
    assert last["outcome"]["result"] == "applied"
    assert last["outcome"]["conflicts"][0]["took"] == "remote"


def test_a_plan_writes_no_history(world: World):
    world.add_local(3)
    before = history.count(world.db)
    assert before == 3  # the local writes
    assert world.cycle(dry_run=True).outcome == "planned"
    assert history.count(world.db) == before
    world.cycle()
    assert history.count(world.db) == before + 3


def test_a_remote_delete_is_pulled_and_told(world: World):
    world.add_local(2)
    world.cycle()
    world.emu.delete(KEY)
    world.cycle()
    last = steps(world)[-1]
    assert last["outcome"]["local"] == "remove" and last["outcome"]["result"] == "applied"
    assert last["outcome"]["event"]["kind"] == "delete"
    assert explain(world.config, KEY, db=world.db).targets["news"].local is None


def test_an_unknown_key_raises_naming_it(world: World):
    world.add_local(1)
    with pytest.raises(UnknownKey, match=r"nobody@example\.com"):
        explain(world.config, "nobody@example.com", db=world.db)
