"""Each side as last read: a cycle redoes only what moved, and never mistakes a row it did not
redo for one that is gone.

The store keeps every member's projection (``local_seen``, forgotten by triggers whenever the
contact or a membership is written), the last complete export by row fingerprint
(``remote_seen``) and the keys written since their last comparison (``dirty``). These tests
hold the cycle to three promises: nothing is rebuilt when nothing moved, every kind of write is
noticed whoever makes it, and a write racing the cycle is never read as a delete.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import World
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from syncd.store import seen


def _progress(world: World, **options: Any) -> dict[str, int]:
    steps: dict[str, int] = {}
    world.cycle(progress=lambda stage, n, _total: steps.__setitem__(stage, n), **options)
    return steps


def _count(world: World, sql: str, **params: Any) -> int:
    with world.db.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def _parsed_rows(world: World, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts, per cycle, the export rows the adapter is asked to read."""
    read: list[int] = []
    real = world.provider

    def provider(config: Any, target: Any) -> Any:
        adapter = real(config, target)
        read_raw = adapter.read_raw

        def counted(raw: Any) -> Any:
            read[-1] += 1
            return read_raw(raw)

        adapter.read_raw = counted
        read.append(0)
        return adapter

    monkeypatch.setattr(world, "provider", provider)
    return read


def test_a_cycle_with_no_edits_projects_parses_and_compares_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    world.add_local(30)
    assert world.cycle().summary()["created"] == 30
    world.cycle()  # reads back the creates: every row of the export is new to it
    parsed = _parsed_rows(world, monkeypatch)
    steps = _progress(world)
    assert steps["exported"] == 30  # the whole export is still read (rule 1)
    assert parsed == [0]  # ... but not one row of it parsed again
    assert steps["staged local"] == 0 and steps["differing keys"] == 0
    assert _count(world, "SELECT count(*) FROM dirty") == 0


def test_only_what_moved_is_redone_on_either_side(world: World, monkeypatch: pytest.MonkeyPatch):
    world.add_local(20)
    world.cycle()
    world.cycle()
    world.ingest([{"email": "person3@example.com", "city": "Pinsk"}])
    world.emu.edit("person7@example.com", Name="Changed There")
    parsed = _parsed_rows(world, monkeypatch)
    steps = _progress(world)
    assert parsed == [1] and steps["staged local"] == 1 and steps["differing keys"] == 2
    assert world.remote()["person3@example.com"]["fields"]["City"] == "Pinsk"
    assert world.local()["person7@example.com"]["name"] == "Changed There"


def test_a_write_by_hand_in_sql_is_noticed(world: World):
    """The triggers see every writer, not only syncd's code."""
    world.add_local(5)
    world.cycle()
    with world.db.begin() as conn:
        conn.execute(
            text("UPDATE contact SET fields = :f WHERE email = 'person2@example.com'"),
            {"f": '{"name": "Person 2", "city": "Grodno"}'},
        )
    r = world.cycle()
    assert r.summary()["updated"] == 1
    assert world.remote()["person2@example.com"]["fields"]["City"] == "Grodno"


def test_leaving_the_list_and_a_list_opt_out_are_noticed(world: World):
    world.add_local(4)
    world.cycle()
    with world.db.begin() as conn:
        conn.execute(
            text(
                "DELETE FROM membership WHERE list_name = 'news' AND contact_id = "
                "(SELECT id FROM contact WHERE email = 'person0@example.com')"
            )
        )
        conn.execute(
            text(
                "UPDATE membership SET state = 'unsubscribed' WHERE list_name = 'news' AND "
                "contact_id = (SELECT id FROM contact WHERE email = 'person1@example.com')"
            )
        )
    world.cycle()
    assert "person0@example.com" not in world.remote()
    assert world.opted_out_remotely("person1@example.com")


def test_an_edit_racing_the_cycle_is_never_read_as_a_delete(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """An inbox file lands after the cycle's scan has passed a contact: the write forgets the
    contact's projection. The comparison projects it again rather than see no local row and
    delete it at the provider."""
    world.add_local(6)
    world.cycle()
    real = seen.compute_diff
    landed: list[dict[str, Any]] = []

    def edit_first(*args: Any, **kwargs: Any) -> int:
        if not landed:
            landed.append(world.ingest([{"email": "person1@example.com", "city": "Brest"}]))
        return real(*args, **kwargs)

    monkeypatch.setattr(seen, "compute_diff", edit_first)
    r = world.cycle()
    monkeypatch.undo()
    assert landed and landed[0]["updated"] == 1
    assert r.summary()["deleted"] == 0
    assert "person1@example.com" in world.remote()
    world.cycle()
    assert world.remote()["person1@example.com"]["fields"]["City"] == "Brest"
    assert world.cycle().write_calls == 0


def test_a_new_field_mapping_projects_every_member_again(make_world: Any):
    world = make_world(fields={"Name": "name"})
    world.add_local(3)
    world.cycle()
    world.cycle()
    world.config = world.make_config(fields={"Name": "name", "City": "city"})
    r = world.cycle()
    assert r.summary()["updated"] == 3
    assert world.remote()["person0@example.com"]["fields"]["City"] == "Minsk"
    assert world.cycle().write_calls == 0


def test_an_incomplete_export_keeps_the_keys_it_could_not_check(world: World):
    """A change at the provider read by no complete export stays to be compared: the cycle
    whose export broke off clears nothing, and the next complete one pulls the change."""
    from syncd.emulators.kit import Faults

    world.add_local(4)
    world.cycle()
    world.cycle()
    world.emu.edit("person2@example.com", City="Vitebsk")
    world.emu.faults = Faults(export_truncate=True, seed=1)
    assert world.cycle().export_complete is False
    world.emu.faults = Faults()
    world.cycle()
    assert world.local()["person2@example.com"]["city"] == "Vitebsk"


def test_the_salt_is_the_same_in_every_process():
    """Sets iterate in the hash seed's order: a salt made from their repr would differ from
    one process to the next, and every cycle would rebuild both sides."""
    code = (
        "from syncd.store import seen, mirror; from syncd.providers.unisender import "
        "UnisenderProvider as U; print(seen.salt_of(mirror.LocalView('email', 'news', "
        "{'Name': 'name'}), U.capabilities))"
    )
    salts = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(salts) == 1


def test_a_row_gone_from_the_middle_is_a_remote_delete(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """The rows after it are no longer where they were: each is found a step further on, and
    the one that went is gone, not merely unmet."""
    world.add_local(20)
    world.cycle()
    world.cycle()
    world.emu.delete("person5@example.com")
    parsed = _parsed_rows(world, monkeypatch)
    r = world.cycle()
    assert parsed == [0]
    assert r.summary()["removed_local"] == 1
    assert "person5@example.com" not in world.local()
    assert world.cycle().write_calls == 0


def test_an_export_in_another_order_is_parsed_no_more(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """Every row is then not where it was: the store is asked about them, and knows them."""
    world.add_local(12)
    world.cycle()
    world.cycle()
    parsed = _parsed_rows(world, monkeypatch)
    real = world.provider

    def reversed_export(config: Any, target: Any) -> Any:
        adapter = real(config, target)
        export_raw = adapter.export_raw
        adapter.export_raw = lambda salt: reversed(list(export_raw(salt)))
        return adapter

    monkeypatch.setattr(world, "provider", reversed_export)
    steps = _progress(world)
    assert parsed == [0] and steps["differing keys"] == 0
    steps = _progress(world)  # and the new order is the one checked against next
    assert parsed == [0, 0] and steps["differing keys"] == 0


def test_the_stored_projection_is_project_local_s_text():
    """``stage.stored_projector`` builds ``local_seen``'s text without a ``Projection``: it must
    be the very text (and digest) of ``project_local(...).to_json()``, whatever the member."""
    from syncd.core.calls import Capabilities
    from syncd.core.projection import digest_of
    from syncd.engine import stage
    from syncd.store.mirror import LocalView, MemberRow

    views = [
        LocalView("email", "news", {"Name": "name", "City": "city", "Phone": "phone"}),
        LocalView("phone", "news", {"Email": "email", "Age": "age"}, reference="Ref"),
        LocalView("email", "news", {"Ref": "name"}, reference="Ref", list_consent=True),
        LocalView("phone", "news", {"Email": "email", "Age": "age", "B": "name"}),
        LocalView("email", "news", {"Z": "city", "A": "name"}, list_consent=True),
    ]
    caps_all = [
        Capabilities(500, 50),
        Capabilities(500, 50, tags=False, list_consent=True),
        Capabilities(500, 50, statuses=frozenset({"active", "unsubscribed", "blocked"})),
    ]
    members = [
        MemberRow("a@x.org", None, '{"name": "Ann", "city": ""}', '["b", "a", "", "b"]',
                  "active", "r1", "active"),
        MemberRow("b@x.org", "+375291", '{"name": "Бор", "age": 7}', "[]", "active", None,
                  "unsubscribed"),
        MemberRow(None, "+375292", '{"age": null}', '["z"]', "blocked", "", "active"),
        MemberRow("c@x.org", "", "{}", '["t"]', "unsubscribed", "r3", "unsubscribed"),
        MemberRow("", None, "{}", "[]", "active", None, "active"),
    ]  # fmt: skip
    for view in views:
        for caps in caps_all:
            for member in members:
                p = stage.project_local(member, view, caps)
                text_ = None if p is None else p.to_json()
                want = (None, None, None) if p is None else (p.key, digest_of(text_), text_)
                assert stage.project_stored(member, view, caps) == want
                assert stage.stored_projector(view, caps)(member) == want
    odd = Capabilities(500, 50, statuses=frozenset({"active", "bogus"}))
    with pytest.raises(ValueError):
        stage.project_stored(members[0]._replace(status="bogus"), views[0], odd)
    with pytest.raises(ValueError):
        stage.stored_projector(views[0], odd)(members[0]._replace(status="bogus"))
    # a status the provider folds is folded the same way
    folded = members[0]._replace(status="inactive")
    assert stage.stored_projector(views[0], caps_all[0])(folded) == stage.project_stored(
        folded, views[0], caps_all[0]
    )


_any_text = st.text(max_size=6)


@given(
    key=st.text(min_size=1, max_size=8),
    names=st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=3, unique=True),
    values=st.lists(st.none() | _any_text | st.integers(), min_size=3, max_size=3),
    tags=st.lists(_any_text, max_size=3),
    status=st.sampled_from(["active", "unsubscribed", "blocked", "inactive"]),
    state=st.sampled_from(["active", "unsubscribed"]),
    list_consent=st.booleans(),
)
def test_the_stored_projection_is_project_local_s_text_for_any_text(
    key: str,
    names: list[str],
    values: list[Any],
    tags: list[str],
    status: str,
    state: str,
    list_consent: bool,
) -> None:
    """Quotes, backslashes, control and non-ASCII characters in a key, a field's name or
    value, or a tag: the text ``stored_projector`` writes out is still ``to_json``'s."""
    import json

    from syncd.core.calls import Capabilities
    from syncd.core.projection import digest_of
    from syncd.engine import stage
    from syncd.store.mirror import LocalView, MemberRow

    view = LocalView(
        "email", "news", {name: f"f{i}" for i, name in enumerate(names)}, None, list_consent
    )
    caps = Capabilities(
        500, 50, list_consent=list_consent, statuses=frozenset({"active", "unsubscribed"})
    )
    fields = json.dumps({f"f{i}": value for i, value in enumerate(values)})
    member = MemberRow(key, None, fields, json.dumps(tags), status, None, state)
    p = stage.project_local(member, view, caps)
    assert p is not None
    want = (p.key, digest_of(p.to_json()), p.to_json())
    assert stage.stored_projector(view, caps)(member) == want
