"""Keys new locally and nothing else go through the bulk path (``syncd.engine.creates``): what
they leave behind (calls, base, history, rejections, in-flight journal) is what the general
path, reconcile key by key, leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import World
from sqlalchemy import text

from syncd.engine import creates
from syncd.store import mirror

ROWS: list[dict[str, Any]] = [
    {"email": "info@example.com", "lists": ["news"]},  # role address: refused by the provider
    {"email": "tagged@example.com", "name": "Tia", "tags": ["x", "y"], "lists": ["news"]},
    {"email": "gone@example.com", "status": "unsubscribed", "lists": ["news"]},  # opted out
    {"email": "noname@example.com", "lists": ["news"]},  # an empty field goes as ""
]


def _left_behind(world: World) -> dict[str, Any]:
    with world.db.connect() as conn:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(text(sql))]

        return {
            "history": rows(
                'SELECT target, key, "case", sent, outcome FROM history '
                "WHERE target IS NOT NULL ORDER BY key, id"
            ),
            "base": rows("SELECT target, key, digest, data, unseen FROM base ORDER BY key"),
            "rejection": rows(
                "SELECT target, key, digest, code, message, retryable FROM rejection ORDER BY key"
            ),
            "in_flight": rows("SELECT key FROM in_flight"),
            "remote": sorted(
                (c["email"], sorted(c["tags"]), c["fields"]) for c in world.remote().values()
            ),
        }


def _first_push(world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    world.ingest(ROWS)
    world.add_local(1203)  # three full calls and a part-filled one
    result = world.cycle()
    summary = {k: result.summary().get(k) for k in ("created", "rejected", "withheld")}
    return {"summary": summary, "write_calls": result.write_calls}, _left_behind(world)


def test_a_first_push_in_bulk_leaves_what_reconcile_key_by_key_leaves(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen: list[int] = []
    pure_creates = mirror.pure_creates

    def counted(*args: Any, **kwargs: Any) -> list[tuple[int, str, str]]:
        rows = pure_creates(*args, **kwargs)
        chosen.append(len(rows))
        return rows

    monkeypatch.setattr(mirror, "pure_creates", counted)
    bulk, bulk_rows = _first_push(world)
    assert sum(chosen) == len(world.local())  # every key was chosen (the opted out left again)

    monkeypatch.setattr(creates, "eligible", lambda _cycle: False)
    (tmp_path / "general").mkdir()
    general_world = World(tmp_path / "general")
    try:
        general, general_rows = _first_push(general_world)
    finally:
        general_world.db.dispose()

    assert bulk == general
    assert bulk["write_calls"] == 4  # ceil(1205 / 500), and the opt-out with its status
    for part in ("base", "rejection", "in_flight", "remote"):
        assert bulk_rows[part] == general_rows[part], part
    assert len(bulk_rows["history"]) == len(general_rows["history"])
    for a, b in zip(bulk_rows["history"], general_rows["history"], strict=True):
        assert a == b
    assert [r[1] for r in bulk_rows["rejection"]] == ["info@example.com"]


def test_a_second_cycle_after_a_bulk_first_push_sends_nothing(world: World) -> None:
    world.add_local(600)
    assert world.cycle().write_calls == 2
    again = world.cycle()
    assert again.write_calls == 0 and again.outcome == "converged"


def test_the_sent_text_of_a_row_is_the_general_entry_encoded() -> None:
    """``push._SentOf`` builds a create's ``sent`` text from parts made once per batch: the
    very text of ``_sent_by_key``'s entry encoded, whatever the row and the calls."""
    from syncd.core.calls import PushCall, RowChange
    from syncd.core.projection import Projection
    from syncd.engine import push
    from syncd.store import history

    class Named:
        def method_name(self, call: PushCall) -> str:
            return "importContacts"

    rows = tuple(
        RowChange("create", p, None)
        for p in (
            Projection.build(
                "a@x.org", {"Name": "Ann\t\u2028", "City": "Минск"}, ["b", "a", 'q"t\n']
            ),
            Projection.build("b@x.org", {"Name": 'Q"uote\\'}, []),
            Projection.build("c@x.org", {}, ["t"], "unsubscribed"),
            Projection.build("d@x.org", {"City": "Brest"}, [], "active", "unsubscribed"),
        )
    )
    for with_tags in (False, True):
        for with_status in (False, True):
            for split in ((("Name", "City"),), (("Name",), ("City",)), ((),)):
                calls = tuple(
                    PushCall(
                        op="create",
                        columns=cols,
                        rows=rows,
                        with_status=with_status and n == 0,
                        with_tags=with_tags and n == 0,
                        overwrite_tags=False,
                    )
                    for n, cols in enumerate(split)
                )
                general = push._sent_by_key(Named(), calls)  # type: ignore[arg-type]
                sent_of = push._SentOf(Named(), calls)  # type: ignore[arg-type]
                for change in rows:
                    want = history.encode(general[change.row.key])
                    assert sent_of(change.row) == want
                    assert sent_of.entry(change.row) == general[change.row.key]


def test_a_cycle_of_the_whole_list_runs_as_bulk_work_then_the_collector_is_as_before(
    world: World,
) -> None:
    import gc

    from syncd.collector import GC_YOUNG_THRESHOLD

    before = gc.get_threshold()
    world.add_local(600)
    seen: list[tuple[int, int]] = []
    emulator_import = world.emu.handle

    def handle(request: Any) -> Any:  # an import call, made while the cycle pushes
        if request.url.path.endswith("importContacts"):
            seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        return emulator_import(request)

    world.emu.handle = handle  # type: ignore[method-assign]
    assert world.cycle().outcome == "converged"
    assert len(seen) == 2 and all(t == GC_YOUNG_THRESHOLD and f > 0 for t, f in seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
