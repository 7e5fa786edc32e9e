"""A cycle narrowed to the contacts a webhook named (``syncd.engine.single.refresh``).

Each key is re-read at the emulator through ``getContact`` and reconciled alone, by the same
rules as a full cycle; what the read cannot say (tags) and what it does not show (other keys,
contacts off the list, newcomers) change nothing.
"""

from __future__ import annotations

import json
from typing import Any

from conftest import World
from sqlalchemy import text

from syncd.engine.result import CycleOptions
from syncd.engine.single import OPT_OUT, REREAD, refresh
from syncd.local import outbox


def synced(world: World, n: int = 3, **extra: Any) -> list[str]:
    emails = world.add_local(n, **extra)
    assert world.cycle().outcome == "converged"
    return emails


def narrowed(world: World, *work: tuple[str, str], **options: Any) -> Any:
    (target,) = world.config.target
    provider = world.provider(world.config, target)
    try:
        return refresh(world.db, target, provider, list(work), CycleOptions(**options))
    finally:
        provider.close()


def test_a_list_unsubscribe_read_back_reaches_the_mirror_and_the_outbox(world: World) -> None:
    emails = synced(world)
    world.emu.unsubscribe(emails[1], world.list_id)
    exports = world.emu.calls["async/exportContacts"]
    result = narrowed(
        world,
        (emails[1], REREAD),
        on_remote_change=outbox.recorder("unisender", "hook", list_name="news"),
    )
    assert result.outcome == "converged" and result.counts["pulled"] == 1
    assert world.consent(emails[1]) == ("active", "unsubscribed")
    assert world.consent(emails[0]) == ("active", "active")
    assert world.emu.calls["async/exportContacts"] == exports  # read one, exported nothing
    with world.db.connect() as conn:
        bodies = conn.execute(text("SELECT body FROM outbox_event")).scalars().all()
    assert [(e["key"], e["kind"]) for e in map(json.loads, bodies)] == [
        (emails[1], "list_unsubscribe")
    ]
    assert world.cycle().counts["pulled"] == 0  # the full cycle finds nothing left to do


def test_what_the_read_does_not_give_keeps_its_base(world: World) -> None:
    emails = synced(world, tags=["vip"])
    world.emu.edit(emails[0], Name="Renamed")
    result = narrowed(world, (emails[0], REREAD))
    assert result.outcome == "converged"
    row = world.local()[emails[0]]
    assert row["name"] == "Renamed" and row["tags"] == ["vip"]  # getContact has no tags
    assert world.remote()[emails[0]]["tags"] == ["vip"]


def test_keys_the_read_cannot_vouch_for_change_nothing(world: World) -> None:
    emails = synced(world)
    world.emu.delete(emails[2])  # gone at the provider: only an export may conclude that
    world.emu.sign_up("new@example.com", world.list_id)  # new to both sides: the export's
    before = world.local()
    assert narrowed(world, (emails[2], REREAD), ("new@example.com", REREAD)) is None
    assert world.local() == before
    assert world.cycle().outcome == "converged"
    assert emails[2] not in world.local() and "new@example.com" in world.local()


def test_other_keys_are_neither_compared_nor_touched(world: World) -> None:
    emails = synced(world, 12)
    for e in emails[1:]:
        world.emu.delete(e)  # eleven gone at the provider: a full cycle would weigh that
    result = narrowed(world, (emails[0], REREAD))
    assert result.outcome == "converged" and result.counts["pulled"] == 0
    assert len(world.local()) == 12


def test_an_opt_out_for_a_provider_without_a_read_is_taken_as_said(world: World) -> None:
    emails = synced(world)
    result = narrowed(world, (emails[0], OPT_OUT))
    assert result.outcome == "converged"
    assert world.consent(emails[0])[0] == "unsubscribed"
    assert narrowed(world, ("stranger@example.com", OPT_OUT)) is None
