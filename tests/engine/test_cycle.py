"""Full cycles against the emulated provider: convergence, batching, idempotence."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from conftest import World
from sqlalchemy import event

from syncd.commands import cycles
from syncd.config import Config, TargetConfig
from syncd.engine import stage
from syncd.engine.result import CycleOptions
from syncd.providers.base import Provider
from syncd.store import mirror


def test_1200_new_contacts_go_out_in_three_calls_then_nothing(world: World):
    world.add_local(1200)
    first = world.cycle()
    assert first.outcome == "converged", first.message
    assert [c.rows for c in first.calls] == [500, 500, 200]
    assert world.import_calls() == 3
    assert len(world.remote()) == 1200

    second = world.cycle()
    assert second.outcome == "converged"
    assert second.write_calls == 0 and second.calls == []
    assert world.import_calls() == 3


def test_local_edit_is_pushed_and_remote_edit_is_pulled(world: World):
    world.add_local(5)
    world.cycle()
    world.ingest([{"email": "person0@example.com", "city": "Brest"}])
    world.emu.edit("person1@example.com", Name="Changed Remotely")
    r = world.cycle()
    assert r.summary()["updated"] == 1 and r.summary()["pulled"] == 1
    assert world.remote()["person0@example.com"]["fields"]["City"] == "Brest"
    assert world.local()["person1@example.com"]["name"] == "Changed Remotely"
    assert world.cycle().write_calls == 0


def test_a_local_edit_made_while_the_cycle_runs_is_not_undone(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """An inbox file lands after the cycle staged the mirror and before it writes back what it
    pulled from the provider: written back, the pulled row would carry the staged (old) name
    and undo that edit. The contact is left for the next cycle, which carries both edits."""
    world.add_local(3)
    world.cycle()
    world.emu.edit("person0@example.com", City="Pinsk")  # to be pulled into the mirror
    real_iter_diff = mirror.iter_diff
    landed: list[dict[str, Any]] = []

    def inbox_lands_meanwhile(*args: Any, **kwargs: Any) -> Iterator[list[mirror.DiffRow]]:
        if not landed:  # once, between staging and the first decision
            landed.append(world.ingest([{"email": "person0@example.com", "name": "Meanwhile"}]))
        yield from real_iter_diff(*args, **kwargs)

    monkeypatch.setattr(mirror, "iter_diff", inbox_lands_meanwhile)
    r = world.cycle()
    monkeypatch.undo()
    assert landed and landed[0]["updated"] == 1
    assert world.local()["person0@example.com"]["name"] == "Meanwhile"
    assert r.summary()["edited_during_cycle"] == 1 and r.summary()["pulled"] == 0

    r = world.cycle()
    assert r.summary()["updated"] == 1 and r.summary()["pulled"] == 1
    assert world.local()["person0@example.com"]["name"] == "Meanwhile"
    assert world.local()["person0@example.com"]["city"] == "Pinsk"
    remote = world.remote()["person0@example.com"]["fields"]
    assert remote["Name"] == "Meanwhile" and remote["City"] == "Pinsk"
    assert world.cycle().write_calls == 0


def another_writer(world: World) -> str:
    """An inbox or a lease renewal writing the store, with a short patience instead of 30 s."""
    db = sqlite3.connect(str(world.db.url.database), timeout=1)
    try:
        db.execute("UPDATE contact SET status = status WHERE id = 1")
        db.commit()
        return "written"
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        db.close()


def test_the_store_stays_writable_while_an_export_streams(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """A big export streams for minutes: staged in one transaction, it would hold SQLite's
    write lock all that time, and inbox files and lease renewals would wait (or time out)."""
    if world.db.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no store-wide write lock")
    monkeypatch.setattr(mirror, "CHUNK", 50)  # several staging chunks from a small list
    world.add_local(120)
    world.cycle()
    writes: list[str] = []

    def provider(config: Config, target: TargetConfig) -> Provider:
        adapter = world.provider(config, target)
        export = adapter.export_raw

        def export_with_a_writer_meanwhile(salt: bytes) -> Iterator[Any]:
            for n, row in enumerate(export(salt)):
                if n == 75:  # the first chunk is staged; the export goes on
                    writes.append(another_writer(world))
                yield row

        adapter.export_raw = export_with_a_writer_meanwhile  # type: ignore[method-assign]
        return adapter

    (r,) = cycles.run_once(world.config, db=world.db, options=CycleOptions(), providers=provider)
    assert writes == ["written"]
    assert r.outcome == "converged" and r.write_calls == 0


def test_the_store_stays_writable_while_the_local_side_stages_and_the_diff_runs(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """Projecting the mirror's side and comparing the sides can be as long as the list: in one
    transaction they would hold SQLite's write lock all that time. Another writer (an inbox
    file, a lease renewal) with a short patience gets through between their chunks: each
    chunk takes the lock anew (``take_write_turn``), and the writer runs just before."""
    if world.db.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no store-wide write lock")
    monkeypatch.setattr(mirror, "CHUNK", 50)  # several chunks and key ranges from a small list
    world.add_local(120)
    world.cycle()
    world.add_local(130, start=120)  # three chunks to project, and something to push
    writes: list[str] = []
    turns = {"project": 0, "compare": 0}

    def before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT c.id FROM contact c"):
            phase = "project"  # the next page of members to project is looked for
        elif statement.startswith("SELECT key FROM dirty"):
            phase = "compare"  # the next range of keys is being compared
        else:
            return
        turns[phase] += 1
        if turns[phase] == 2:  # one chunk (or range) is done; more follow
            writes.append(another_writer(world))

    event.listen(world.db, "before_cursor_execute", before_execute)
    try:
        r = world.cycle()
    finally:
        event.remove(world.db, "before_cursor_execute", before_execute)
    assert writes == ["written", "written"]
    assert r.outcome == "converged" and r.write_calls == 1
    assert world.cycle().write_calls == 0


@pytest.mark.slow
def test_a_20k_cycle_on_a_short_lease_keeps_it(world: World, monkeypatch: pytest.MonkeyPatch):
    """With ``lease_timeout = 3`` the renewal writes every second while the cycle stages
    20,000 contacts, slowed here to take seconds as on a busy machine: neither may starve the
    other (the lease lost), nor fail the other's write ("database is locked")."""
    world.add_local(20_000)
    projector = stage.stored_projector

    def busy_machine(*args: Any) -> Any:
        project = projector(*args)

        def slowly(member: Any) -> Any:
            time.sleep(0.0001)
            return project(member)

        return slowly

    monkeypatch.setattr(stage, "stored_projector", busy_machine)
    config = world.config.model_copy(
        update={"daemon": world.config.daemon.model_copy(update={"lease_timeout": 3.0})}
    )
    results = []
    for _ in range(3):
        (r,) = cycles.run_once(
            config, db=world.db, options=CycleOptions(), providers=world.provider
        )
        results.append(r)
        world.ingest([{"email": f"person{len(results)}@example.com", "city": "Brest"}])
    assert [r.outcome for r in results] == ["converged"] * 3, [r.message for r in results]
    assert [r.write_calls for r in results] == [40, 1, 1]


def test_sign_up_at_the_provider_enters_the_mirror(world: World):
    world.add_local(2)
    world.cycle()
    world.emu.sign_up("fresh@example.org", world.list_id, fields={"Name": "Fresh"}, tags=["web"])
    world.cycle()
    fresh = world.local()["fresh@example.org"]
    assert fresh["name"] == "Fresh" and fresh["tags"] == ["web"] and "news" in fresh["lists"]
    assert world.cycle().write_calls == 0


def test_remote_delete_leaves_the_local_list(world: World):
    world.add_local(3)
    world.cycle()
    world.emu.delete("person2@example.com")
    r = world.cycle()
    assert r.summary()["removed_local"] == 1
    assert "person2@example.com" not in world.local()
    assert world.cycle().write_calls == 0


def test_local_delete_is_pushed_as_delete(world: World):
    world.add_local(3)
    world.cycle()
    world.ingest([{"email": "person1@example.com", "delete": 1}])
    r = world.cycle()
    assert r.summary()["deleted"] == 1
    assert "person1@example.com" not in world.remote()
    assert world.emu.get("person1@example.com") is None  # on_local_delete = delete
    assert world.cycle().write_calls == 0


def test_leaving_the_local_list_excludes_without_deleting(world: World):
    world.add_local(3)
    world.cycle()
    world.ingest([{"email": "person1@example.com", "lists": ["other"]}])
    world.cycle()
    assert "person1@example.com" not in world.remote()
    assert world.emu.get("person1@example.com") is not None  # still in the account


def test_exclude_policy_never_deletes_from_the_account(make_world):
    world = make_world(on_local_delete="exclude")
    world.add_local(3)
    world.cycle()
    world.ingest([{"email": "person1@example.com", "delete": 1}])
    world.cycle()
    assert "person1@example.com" not in world.remote()
    assert world.emu.get("person1@example.com") is not None


def test_tags_removed_locally_use_overwrite_tags_only_then(world: World):
    world.ingest([{"email": "t@example.com", "tags": ["a", "b"], "lists": ["news"]}])
    first = world.cycle()
    assert not any(c.overwrite_tags for c in first.calls)
    world.ingest([{"email": "t@example.com", "tags": ["a", "c"]}])  # +c -b
    second = world.cycle()
    assert [c.overwrite_tags for c in second.calls] == [True]
    assert sorted(world.remote()["t@example.com"]["tags"]) == ["a", "c"]
    world.ingest([{"email": "t@example.com", "tags": ["a", "c", "d"]}])  # addition only
    third = world.cycle()
    assert [c.overwrite_tags for c in third.calls] == [False]


def test_columns_split_when_a_contact_has_more_fields_than_a_call_carries(
    world: World, monkeypatch
):
    world.add_local(3)
    original = world.provider

    def narrow(config, target):
        provider = original(config, target)
        provider.capabilities = replace(provider.capabilities, fields_per_call=1)
        return provider

    monkeypatch.setattr(world, "provider", narrow)
    r = world.cycle()
    assert [(c.rows, c.columns) for c in r.calls] == [(3, ("Name",)), (3, ("City",))]
    assert world.remote()["person0@example.com"]["fields"] == {"Name": "Person 0", "City": "Minsk"}
    assert world.cycle().write_calls == 0


def test_plan_writes_nothing_anywhere(world: World):
    world.add_local(7)
    before_local = world.local()
    plan = world.cycle(dry_run=True)
    assert plan.outcome == "planned"
    assert [(c.method, c.op, c.rows) for c in plan.calls] == [("importContacts", "create", 7)]
    assert plan.calls[0].first_rows[0]["email"] == "person0@example.com"
    assert world.import_calls() == 0 and world.remote() == {}
    assert world.local() == before_local
    with world.db.connect() as conn:  # not even the export's scratch rows, staged as they came
        for table in ("stage_new", "stage_gone", "stage_diff", "base"):
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == 0, table
    real = world.cycle()
    assert real.summary()["created"] == 7  # the dry run left no base behind


def test_rows_refused_for_now_are_named_in_the_message_and_sent_again(world: World):
    from syncd.emulators.kit import Faults

    world.add_local(5)
    world.emu.faults = Faults(row_reject_rate=1.0, seed=1)  # every row: "retry_later"
    r = world.cycle()
    assert r.outcome == "rejected" and r.exit_code == 1
    assert r.message == "5 rows refused by the provider (retry_later 5)"
    world.emu.faults = Faults()
    assert world.cycle().outcome == "converged" and len(world.remote()) == 5
    # what the cycle had to say already stays
    world.ingest([{"email": "person0@example.com", "city": "Pinsk"}])
    world.emu.faults = Faults(row_reject_rate=1.0, export_truncate=True, seed=1)
    r = world.cycle()
    assert r.message.startswith("export incomplete") and r.message.endswith("(retry_later 1)")


def _leaves_the_list_then_returns_with_fewer_tags(world: World, *leave: dict) -> None:
    e = "p4@example.com"
    world.ingest([{"email": e, "name": "Ann", "tags": ["a", "b", "c"], "lists": ["news"]}])
    assert world.cycle().outcome == "converged"
    for row in leave:
        world.ingest([row])
    r = world.cycle()
    assert [c.op for c in r.calls] == ["exclude"]  # off the list; the provider keeps it, tags too
    world.ingest([{"email": e, "name": "Ann", "tags": ["a"], "lists": ["news"]}])
    r = world.cycle()
    assert r.outcome == "converged"
    assert world.remote()[e]["tags"] == ["a"] == world.local()[e]["tags"]
    again = world.cycle()
    assert again.write_calls == 0 and again.summary()["pulled"] == 0
    assert world.local()[e]["tags"] == ["a"]  # b and c did not come back into the mirror


def test_tags_dropped_while_off_the_list_are_removed_when_it_returns(world: World):
    # a status row revives the tombstone as a contact on no list: excluded, not deleted
    e = "p4@example.com"
    _leaves_the_list_then_returns_with_fewer_tags(
        world, {"email": e, "delete": 1}, {"email": e, "status": "active"}
    )


def test_tags_dropped_while_excluded_are_removed_when_it_returns(make_world):
    world = make_world(on_local_delete="exclude")
    _leaves_the_list_then_returns_with_fewer_tags(world, {"email": "p4@example.com", "delete": 1})
