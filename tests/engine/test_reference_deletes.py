"""With ``reference_field`` on, a contact deleted at the provider stays deleted.

A contact that signs up at the provider enters the mirror without syncd's reference; the next
cycle writes the reference there (an update). Whatever stage that update is at when the
provider deletes the contact (not sent yet, sent and its answer lost, confirmed), the next
complete export decides: absent, the provider's delete wins, as it does without a reference.
importContacts is an upsert, so an update sent for an absent contact would re-create it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import World

REF = "syncd_id"
WHO = "fresh@example.org"


@pytest.fixture
def world(tmp_path: Path, store_url: str) -> Iterator[World]:
    w = World(tmp_path, store_url, reference_field=REF)
    yield w
    w.db.dispose()


def signed_up_and_pulled(world: World) -> None:
    world.add_local(2)
    world.cycle()
    world.emu.sign_up(WHO, world.list_id, fields={"Name": "Fresh"})
    assert world.cycle().outcome == "converged"
    assert WHO in world.local()  # pulled; the provider's row has no reference yet


def gone_for_good(world: World, who: str = WHO) -> None:
    for _ in range(3):
        result = world.cycle()
        assert result.outcome == "converged", result.summary()
        assert who not in world.remote(), "re-created at the provider"
        assert world.emu.get(who) is None
        assert who not in world.local(), "kept in the mirror"
    assert sorted(world.local()) == sorted(world.remote())
    assert world.cycle().write_calls == 0


def test_deleted_before_its_reference_was_written(world: World) -> None:
    signed_up_and_pulled(world)
    world.emu.delete(WHO)
    gone_for_good(world)


def test_deleted_after_its_reference_update_was_sent_and_the_answer_lost(world: World) -> None:
    signed_up_and_pulled(world)
    assert world.cycle_losing_answers().outcome == "unreachable"  # the update is in flight
    assert world.remote()[WHO]["fields"][REF]  # it landed; syncd never read that
    world.emu.delete(WHO)
    gone_for_good(world)


def test_deleted_after_its_reference_update_was_lost_on_the_way(world: World) -> None:
    signed_up_and_pulled(world)
    assert world.cycle_losing_answers(land=False).outcome == "unreachable"
    world.emu.delete(WHO)
    gone_for_good(world)


def test_deleted_after_its_reference_was_confirmed(world: World) -> None:
    signed_up_and_pulled(world)
    world.cycle()  # the reference update, confirmed: the base holds the reference
    assert world.remote()[WHO]["fields"][REF]
    world.emu.delete(WHO)
    gone_for_good(world)


def test_an_incomplete_export_sends_no_reference_update(world: World) -> None:
    """Nothing is inferred from an incomplete export, and nothing syncd's own is sent on it:
    the contact may be gone from the provider, and the update would bring it back."""
    signed_up_and_pulled(world)
    world.emu.delete(WHO)
    world.emu.faults.export_truncate = True
    result = world.cycle()
    assert not result.export_complete and result.outcome == "partial"
    assert "1 updates syncd sends of its own accord wait for a complete export" in result.message
    assert world.emu.get(WHO) is None, "re-created by an update sent on an incomplete export"
    world.emu.faults.export_truncate = False
    gone_for_good(world)


def test_deleted_after_a_local_edit_was_sent_and_the_answer_lost(world: World) -> None:
    """The in-flight update is syncd's own write, not an edit the provider has not seen: the
    provider's delete wins over it as over a confirmed one."""
    world.add_local(2)
    world.cycle()
    world.ingest([{"email": "person0@example.com", "name": "Edited"}])
    assert world.cycle_losing_answers().outcome == "unreachable"
    assert world.remote()["person0@example.com"]["fields"]["Name"] == "Edited"
    world.emu.delete("person0@example.com")
    gone_for_good(world, "person0@example.com")


def test_a_local_edit_made_after_the_lost_answer_still_beats_the_delete(world: World) -> None:
    """Edited again since the write whose answer was lost: a local edit the provider never
    saw, so the edit wins over the delete (``on_edit_delete = "edit"``), as it always does."""
    world.add_local(2)
    world.cycle()
    world.ingest([{"email": "person0@example.com", "name": "Edited"}])
    assert world.cycle_losing_answers().outcome == "unreachable"
    world.emu.delete("person0@example.com")
    world.ingest([{"email": "person0@example.com", "name": "Edited again"}])
    assert world.cycle().outcome == "converged"
    assert world.remote()["person0@example.com"]["fields"]["Name"] == "Edited again"
    assert world.local()["person0@example.com"]["name"] == "Edited again"
    assert world.cycle().write_calls == 0


def test_an_incomplete_export_does_not_send_a_lost_write_again(world: World) -> None:
    world.add_local(2)
    world.cycle()
    world.ingest([{"email": "person0@example.com", "name": "Edited"}])
    assert world.cycle_losing_answers(land=False).outcome == "unreachable"
    world.emu.delete("person0@example.com")
    world.emu.faults.export_truncate = True
    imports = world.import_calls()
    result = world.cycle()
    assert not result.export_complete and result.outcome == "partial"
    assert world.import_calls() == imports, "a write re-sent without a complete export"
    assert world.emu.get("person0@example.com") is None
    world.emu.faults.export_truncate = False
    gone_for_good(world, "person0@example.com")
