"""Writes whose answer never came back (a crash, a cut connection): ``in_flight`` remembers them,
so the next export tells syncd's own echo from a remote edit (found by
tests/system/test_crash.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import World
from sqlmodel import Session, select

from syncd.commands import cycles
from syncd.config import Config, TargetConfig
from syncd.engine.result import CycleOptions, CycleResult
from syncd.errors import ProviderUnreachable
from syncd.providers.base import Provider, PushCall
from syncd.store.models import InFlight


def edit(w: World, email: str, **fields: str) -> None:
    w.ingest([{"email": email, **fields}])


def test_a_lost_update_then_a_local_delete_deletes_instead_of_reviving(world: World) -> None:
    (ann,) = world.add_local(1)
    world.cycle()
    edit(world, ann, name="Edited")
    assert world.cycle_losing_answers().outcome == "unreachable"  # landed; answer lost
    world.ingest([{"email": ann, "delete": "1"}])
    result = world.cycle()
    assert result.outcome == "converged", result.summary()
    assert ann not in world.local() and ann not in world.remote()
    assert world.cycle().write_calls == 0


def test_a_merge_stopped_before_its_push_keeps_a_later_remote_edit(world: World) -> None:
    """The merge writes the remote City into the mirror and stops before pushing the local
    Name; a newer remote City must then read as a remote edit, not as a conflict."""
    (ann,) = world.add_local(1)
    world.cycle()
    edit(world, ann, name="Edited")
    world.emu.edit(ann, City="Brest")
    asked = iter([False, True])  # go at the chunk, stop at the push
    assert world.cycle(should_stop=lambda: next(asked)).outcome == "stopped"
    assert world.local()[ann]["city"] == "Brest"  # the mirror's half is committed
    world.emu.edit(ann, City="Pinsk")
    assert world.cycle().outcome == "converged"
    assert world.local()[ann]["city"] == world.remote()[ann]["fields"]["City"] == "Pinsk"
    assert world.remote()[ann]["fields"]["Name"] == "Edited"


def test_a_lost_answer_is_forgotten_once_its_key_settles(world: World) -> None:
    ann, bob = world.add_local(2)
    world.cycle()
    edit(world, ann, name="Edited")
    world.cycle_losing_answers()  # ann's update landed, its answer lost
    world.emu.edit(ann, City="Brest")
    edit(world, bob, name="Bob")
    world.cycle_losing_answers()  # ann settles (City pulled); bob's push loses its answer
    with Session(world.db) as s:
        assert [f.key for f in s.exec(select(InFlight)).all()] == [bob]
    world.emu.edit(ann, City="Pinsk")
    assert world.cycle().outcome == "converged"
    assert world.local()[ann]["city"] == world.remote()[ann]["fields"]["City"] == "Pinsk"
    with Session(world.db) as s:
        assert s.exec(select(InFlight)).all() == []


def test_without_an_answer_the_write_is_sent_again(world: World) -> None:
    (ann,) = world.add_local(1)
    world.cycle()
    edit(world, ann, name="Edited")
    world.cycle_losing_answers(land=False)
    assert world.remote()[ann]["fields"]["Name"] == "Person 0"
    result = world.cycle()
    assert result.counts["update"] == 1
    assert world.remote()[ann]["fields"]["Name"] == "Edited"


def test_an_exclude_whose_answer_was_lost_still_lets_a_returning_contact_shed_tags(
    make_world: Any,
) -> None:
    """Unisender keeps an excluded contact and its tags. With the exclude's answer lost, the next
    export no longer shows the contact and the base goes; the record of what was left there must
    already exist, or tags removed locally meanwhile would stay at the provider on its return."""
    world: World = make_world(on_local_delete="exclude")
    e = "p4@example.com"
    world.ingest([{"email": e, "name": "Ann", "tags": ["a", "b", "c"], "lists": ["news"]}])
    assert world.cycle().outcome == "converged"
    world.ingest([{"email": e, "delete": 1}])
    assert world.cycle_losing_answers().outcome == "unreachable"  # landed; answer lost
    assert e not in world.remote() and world.emu.get(e) is not None  # off the list, kept
    assert world.cycle().outcome == "converged"  # reads the exclude back: nothing to send
    world.ingest([{"email": e, "name": "Ann", "tags": ["a"], "lists": ["news"]}])
    assert world.cycle().outcome == "converged"
    assert world.remote()[e]["tags"] == ["a"] == world.local()[e]["tags"]


def cycle_with_remote_city(world: World, email: str, city: str, *, land: bool) -> CycleResult:
    """A cycle whose first write call meets a remote edit of City made after the export (a
    person at the provider), then lands (``land``) or not; its answer never comes back."""
    return cycle_with_remote_edit(world, lambda: world.emu.edit(email, City=city), land=land)


def cycle_with_remote_edit(
    world: World, remote_edit: Callable[[], None], *, land: bool
) -> CycleResult:
    """A cycle whose first write call meets ``remote_edit``, made at the provider after the export,
    then lands (``land``) or not; its answer never comes back."""

    def provider(config: Config, target: TargetConfig) -> Provider:
        adapter = world.provider(config, target)
        push = adapter.push

        def edit_push_and_lose(call: PushCall) -> Any:
            remote_edit()
            if land:
                push(call)
            raise ProviderUnreachable("connection reset before the answer")

        adapter.push = edit_push_and_lose  # type: ignore[method-assign]
        return adapter

    (result,) = cycles.run_once(
        world.config, db=world.db, options=CycleOptions(), providers=provider
    )
    return result


def test_a_lost_partial_update_takes_a_field_it_did_not_send_as_a_remote_edit(
    world: World,
) -> None:
    """The update named Name only. City, edited at the provider while it was on its way, is
    neither overwritten by it nor read back as syncd's own write: it is pulled."""
    (ann,) = world.add_local(1)
    world.cycle()
    edit(world, ann, name="Edited")
    assert cycle_with_remote_city(world, ann, "Brest", land=True).outcome == "unreachable"
    with Session(world.db) as s:
        assert [f.key for f in s.exec(select(InFlight)).all()] == [ann]
    assert world.remote()[ann]["fields"] == {"Name": "Edited", "City": "Brest"}
    result = world.cycle()
    assert result.outcome == "converged", result.message
    assert result.write_calls == 0 and result.counts["conflicts_settled"] == 0
    assert result.summary()["pulled"] == 1
    assert world.local()[ann]["city"] == "Brest" and world.local()[ann]["name"] == "Edited"
    assert world.cycle().write_calls == 0


def test_a_partial_update_that_did_not_land_is_sent_again_alone(world: World) -> None:
    (ann,) = world.add_local(1)
    world.cycle()
    edit(world, ann, name="Edited")
    cycle_with_remote_city(world, ann, "Brest", land=False)
    result = world.cycle()
    assert result.outcome == "converged", result.message
    assert [(c.op, c.columns) for c in result.calls] == [("update", ("Name",))]
    assert world.remote()[ann]["fields"] == {"Name": "Edited", "City": "Brest"}
    assert world.local()[ann]["city"] == "Brest"
    assert world.cycle().write_calls == 0


def test_a_lost_update_that_sent_no_tags_takes_a_tag_removed_meanwhile_as_a_remote_edit(
    world: World,
) -> None:
    """The update named Name and no tags (they did not change). A tag removed at the provider
    while it was on its way stays removed, and is read back as a remote edit, not as a part of
    syncd's write that failed to land: pulled, with no write."""
    (ann,) = world.add_local(1, tags=["news", "vip"])
    world.cycle()
    edit(world, ann, name="Edited")
    untag = cycle_with_remote_edit(world, lambda: world.emu.set_tags(ann, ["news"]), land=True)
    assert untag.outcome == "unreachable"
    assert world.remote()[ann]["tags"] == ["news"]
    assert world.remote()[ann]["fields"]["Name"] == "Edited"
    result = world.cycle()
    assert result.outcome == "converged", result.message
    assert result.write_calls == 0 and result.counts["conflicts_settled"] == 0
    assert result.summary()["pulled"] == 1
    assert world.local()[ann]["tags"] == ["news"] and world.local()[ann]["name"] == "Edited"
    assert world.cycle().write_calls == 0


def test_a_lost_update_that_did_not_land_is_sent_again_without_the_tags(world: World) -> None:
    """Not landed: Name goes again, alone; the tag removed at the provider meanwhile is pulled,
    not put back."""
    (ann,) = world.add_local(1, tags=["news", "vip"])
    world.cycle()
    edit(world, ann, name="Edited")
    cycle_with_remote_edit(world, lambda: world.emu.set_tags(ann, ["news"]), land=False)
    result = world.cycle()
    assert result.outcome == "converged", result.message
    assert [(c.op, c.columns, c.first_rows) for c in result.calls] == [
        ("update", ("Name",), ({"email": ann, "Name": "Edited"},))
    ]
    assert world.remote()[ann]["tags"] == ["news"] == world.local()[ann]["tags"]
    assert world.remote()[ann]["fields"]["Name"] == "Edited"
    assert world.cycle().write_calls == 0
