"""A silently short export never undoes a local delete.

Unisender's export file states no row count, so a file cut at a line break reads as a whole,
valid list (the emulator's ``export_cut_rows``). A contact deleted locally that falls in the
missing tail looks deleted at the provider too; its base must outlive that export, so that the
next whole one deletes it there instead of bringing it back as a sign-up
(``syncd.core.reconcile``, "gone on both sides").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import World
from sqlalchemy import select, text
from sqlmodel import Session, col

from syncd.core.reconcile import ABSENCE_EXPORTS
from syncd.store.models import Base


@pytest.fixture(autouse=True)
def _outbox_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default outbox folder, ./outbox, is read back below


def events(tmp_path: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted((tmp_path / "outbox").glob("*.ndjson"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def export_order(world: World) -> list[str]:
    """The list's contacts in the order the provider exports them (its own ids)."""
    return list(world.remote())


def base_of(world: World, key: str) -> Base | None:
    with Session(world.db) as s:
        return s.scalars(select(Base).where(col(Base.key) == key)).first()


def hide_a_local_delete(world: World) -> str:
    """20 contacts in agreement; the one the export file lists last is deleted locally, and the
    file is cut, cleanly, just before it. Returns its address."""
    world.add_local(20)
    assert world.cycle().outcome == "converged"
    gone = export_order(world)[-1]  # the last row of the file
    world.ingest([{"email": gone, "delete": 1}])
    world.emu.faults.export_cut_rows = 19  # the file ends, cleanly, just before it
    return gone


def delete_on_both_sides(world: World, index: int) -> str:
    """Five contacts in agreement; the one at ``index`` is deleted locally and at the provider.
    Returns its address."""
    gone = world.add_local(5)[index]
    world.cycle()
    world.ingest([{"email": gone, "delete": 1}])
    world.emu.delete(gone)
    return gone


def test_a_local_delete_hidden_by_a_silently_short_export_is_carried_out_later(
    world: World, tmp_path: Path
) -> None:
    gone = hide_a_local_delete(world)
    r = world.cycle()
    assert world.emu.faults.injected["export_cut_short"] == 1
    assert r.export_complete and r.outcome == "converged", r.message  # nothing tells it apart
    assert r.write_calls == 0 and gone in world.remote()  # nothing inferred from the absence
    world.emu.faults.export_cut_rows = None
    r = world.cycle()
    assert r.summary()["deleted"] == 1 and world.emu.get(gone) is None
    for _ in range(ABSENCE_EXPORTS + 1):
        r = world.cycle()
        assert r.outcome == "converged" and r.write_calls == 0
    assert gone not in world.local() and gone not in world.remote()
    assert len(world.local()) == len(world.remote()) == 19
    assert not [e for e in events(tmp_path) if e["kind"] == "signup"]
    assert not [e for e in events(tmp_path) if e.get("key") == gone or gone in json.dumps(e)]


def test_a_local_delete_outlives_short_exports_in_a_row(world: World, tmp_path: Path) -> None:
    gone = hide_a_local_delete(world)
    for _ in range(ABSENCE_EXPORTS - 1):
        assert world.cycle().write_calls == 0
    world.emu.faults.export_cut_rows = None
    assert world.cycle().summary()["deleted"] == 1
    assert world.emu.get(gone) is None and gone not in world.local()
    assert world.cycle().write_calls == 0
    assert not [e for e in events(tmp_path) if e["kind"] == "signup"]


def test_a_delete_on_both_sides_converges_in_one_cycle(world: World, tmp_path: Path) -> None:
    """The plain case: deleted locally and at the provider. One cycle converges with no write;
    the base goes once enough whole exports lacked the contact, and only then does a new
    sign-up with the same address count as one."""
    gone = delete_on_both_sides(world, 2)
    r = world.cycle()
    assert r.outcome == "converged" and r.write_calls == 0, r.message
    assert gone not in world.local() and world.emu.get(gone) is None
    for _ in range(ABSENCE_EXPORTS - 1):
        assert base_of(world, gone) is not None
        r = world.cycle()
        assert r.outcome == "converged" and r.write_calls == 0
    assert base_of(world, gone) is None  # forgotten: nothing of it stays in the store's diff
    assert world.cycle().write_calls == 0
    world.emu.sign_up(gone, world.list_id, fields={"Name": "Someone new"})
    world.cycle()
    assert world.local()[gone]["name"] == "Someone new"
    assert [e["kind"] for e in events(tmp_path)] == ["signup"]


def test_a_counted_absence_is_compared_every_cycle_even_without_its_dirty_mark(
    world: World,
) -> None:
    """A base counting the exports that lack its key is compared by every cycle because it
    counts (``Base.unseen``), not only because the key is marked written (``dirty``): with the
    mark gone (here by hand) the count still runs out and the base is forgotten."""
    gone = delete_on_both_sides(world, 2)
    world.cycle()
    kept = base_of(world, gone)
    assert kept is not None and kept.unseen == 1
    with world.db.begin() as conn:
        assert conn.execute(text("DELETE FROM dirty WHERE key = :k"), {"k": gone}).rowcount == 1
    for _ in range(ABSENCE_EXPORTS - 1):
        assert world.cycle().write_calls == 0
    assert base_of(world, gone) is None


def test_a_contact_added_back_locally_while_its_absence_is_counted_is_created_again(
    world: World,
) -> None:
    """The kept base is the local delete's tombstone, not an agreement: the same contact added
    back locally, unchanged, is a new contact to create, not one the provider deleted."""
    back = delete_on_both_sides(world, 1)
    world.cycle()
    assert base_of(world, back) is not None  # counting the exports that lack it
    world.add_local(1, start=1)  # the same contact, unchanged
    r = world.cycle()
    assert r.summary()["created"] == 1 and r.summary()["removed_local"] == 0, r.summary()
    assert back in world.local() and world.remote()[back]["fields"]["Name"] == "Person 1"
    kept = base_of(world, back)
    assert kept is not None and kept.unseen == 0
    assert world.cycle().write_calls == 0


def test_a_contact_added_back_locally_waits_for_a_whole_export_to_be_created(
    world: World,
) -> None:
    """Added back over a tombstone while the export is incomplete: the base cannot stand in for
    the provider's row (it is what the local side deleted), so the create waits (rule 1) instead
    of the old base being taken as agreed, which a later export lacking the contact would read
    as a delete at the provider."""
    back = delete_on_both_sides(world, 1)
    world.cycle()
    world.add_local(1, start=1)  # the same contact, unchanged
    world.emu.faults.export_truncate = True
    r = world.cycle()
    assert not r.export_complete and r.summary()["deferred"] == 1 and r.write_calls == 0
    kept = base_of(world, back)
    assert kept is not None and kept.unseen == 1  # nothing inferred, nothing settled
    world.emu.faults.export_truncate = False
    r = world.cycle()
    assert r.summary()["created"] == 1 and r.summary()["removed_local"] == 0, r.summary()
    assert back in world.local() and back in world.remote()
    assert world.cycle().write_calls == 0


def test_a_base_kept_for_a_hidden_delete_starts_counting_again_once_the_key_is_seen(
    world: World,
) -> None:
    """The count is of exports since both sides last agreed: an edit at the provider brings
    the contact back (an edit beats a delete) and settles the base, so a later local delete
    hidden by a short export is counted from nothing again."""
    gone = hide_a_local_delete(world)
    world.cycle()
    kept = base_of(world, gone)
    assert kept is not None and kept.unseen == 1
    world.emu.faults.export_cut_rows = None
    world.emu.edit(gone, City="Brest")
    world.cycle()
    assert world.local()[gone]["city"] == "Brest"
    kept = base_of(world, gone)
    assert kept is not None and kept.unseen == 0


def test_a_contact_added_back_unchanged_settles_its_count_and_follows_later_deletes(
    world: World,
) -> None:
    """Deleted locally, hidden by a short export, then added back unchanged while the provider
    kept it all along: all three sides are equal again, and the count still ends, so that a
    later delete at the provider is followed as usual."""
    gone = hide_a_local_delete(world)
    world.cycle()
    world.emu.faults.export_cut_rows = None
    row = next(r for r in world.emu.contacts_in_list(world.list_id) if r["email"] == gone)
    fields = {"name": row["fields"]["Name"], "city": row["fields"]["City"]}
    world.ingest([{"email": gone, **fields, "lists": ["news"]}])
    r = world.cycle()
    assert r.write_calls == 0, r.summary()
    kept = base_of(world, gone)
    assert kept is not None and kept.unseen == 0
    world.emu.delete(gone)
    assert world.cycle().summary()["removed_local"] == 1 and gone not in world.local()


def test_deletes_hidden_by_a_short_export_still_go_through_the_guard(world: World) -> None:
    world.add_local(100)
    world.cycle()
    tail = export_order(world)[70:]
    world.ingest({"email": e, "delete": 1} for e in tail)
    world.emu.faults.export_cut_rows = 70  # every one of the 30 falls in the missing tail
    r = world.cycle()
    assert r.outcome == "converged" and r.write_calls == 0 and len(world.remote()) == 100
    world.emu.faults.export_cut_rows = None
    r = world.cycle()
    assert r.outcome == "refused" and "max_delete_fraction" in r.message
    assert len(world.remote()) == 100
    r = world.cycle(allow_mass_delete=True)
    assert r.summary()["deleted"] == 30 and len(world.remote()) == 70
    assert not set(tail) & set(world.local())
