"""A cycle's outcome never claims more than the cycle did.

``converged`` (exit 0) only for a cycle that saw the whole export, did all its work and held its
lease to the end; an incomplete export is ``partial``, a cycle that ended early (lease lost, stop
asked for) is ``stopped``, each with the reason in its message and in the run record that
``syncd status`` reads, and each exiting 1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import World
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from syncd.commands import cycles
from syncd.config import Config, TargetConfig
from syncd.engine.result import CycleOptions, CycleResult
from syncd.providers.base import Provider
from syncd.store.lease import Leases


def last_run(world: World) -> dict[str, Any]:
    (status,) = cycles.status(world.config, db=world.db)
    assert status.last_run is not None
    return status.last_run


def cycle_with_export_hook(world: World, hook: Any, **options: Any) -> CycleResult:
    """A cycle whose export calls ``hook`` once it has read the provider's first row."""

    def provider(config: Config, target: TargetConfig) -> Provider:
        adapter = world.provider(config, target)
        export = adapter.export_raw

        def export_and_hook(salt: bytes) -> Iterator[Any]:
            for i, row in enumerate(export(salt)):
                if i == 0:
                    hook()
                yield row

        adapter.export_raw = export_and_hook  # type: ignore[method-assign]
        return adapter

    (result,) = cycles.run_once(
        world.config, db=world.db, options=CycleOptions(**options), providers=provider
    )
    return result


# -- an incomplete export ------------------------------------------------------------------


def test_an_incomplete_export_is_partial_not_converged_and_exits_1(world: World) -> None:
    world.add_local(5)
    world.cycle()
    world.add_local(2, start=10)  # two creates, deferred while the remote is unknown
    world.emu.faults.export_truncate = True
    r = world.cycle()
    assert not r.export_complete and r.summary()["deferred"] == 2
    assert r.outcome == "partial" and r.exit_code == 1
    assert "export incomplete" in r.message and "2 creates/deletes wait" in r.message
    assert cycles.exit_code([r]) == 1
    run = last_run(world)  # what `syncd status` shows
    assert run["outcome"] == "partial" and "export incomplete" in run["message"]
    assert run["counts"]["export_complete"] is False and run["counts"]["deferred"] == 2
    world.emu.faults.export_truncate = False
    done = world.cycle()
    assert done.outcome == "converged" and done.exit_code == 0, done.message
    assert last_run(world)["outcome"] == "converged"


def test_an_incomplete_export_with_nothing_to_defer_is_still_partial(world: World) -> None:
    """Edits at the provider were not read either: the cycle did not converge."""
    world.add_local(3)
    world.cycle()
    world.emu.faults.export_truncate = True
    r = world.cycle()
    assert r.outcome == "partial" and r.exit_code == 1 and "export incomplete" in r.message


def test_a_partial_cycle_with_refused_rows_says_both(world: World) -> None:
    world.add_local(3)
    world.cycle()
    world.ingest([{"email": "person1@example.com", "name": "Edited"}])
    world.emu.faults.row_reject_rate = 1.0
    world.emu.faults.export_truncate = True
    r = world.cycle()
    assert r.outcome == "partial" and r.exit_code == 1
    assert "export incomplete" in r.message and "refused by the provider" in r.message


# -- a cycle that ends early ---------------------------------------------------------------


def test_a_no_change_cycle_whose_lease_was_taken_over_reports_stopped(world: World) -> None:
    """Another replica took the lease while the export streamed in; the renewal thread has not
    noticed yet (it renews every third of lease_timeout). Nothing differs, so no check between
    batches runs: the cycle asks the store before it reports."""
    world.add_local(3)
    assert world.cycle().outcome == "converged"

    def take_over() -> None:
        with world.db.begin() as conn:
            conn.execute(
                text("UPDATE lease SET holder = 'elsewhere:1:abcdef' WHERE target = 'news'")
            )

    r = cycle_with_export_hook(world, take_over)
    assert r.write_calls == 0
    assert r.outcome == "stopped" and r.exit_code == 1
    assert "lease on news was lost" in r.message and "taken over" in r.message
    run = last_run(world)
    assert run["outcome"] == "stopped" and "lease on news was lost" in run["message"]


def test_a_cycle_whose_lease_is_lost_stops_before_its_next_batch(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store stops taking the renewals while the export streams in: the renewal thread
    gives the lease up, and the cycle writes nothing more and says why."""
    world.add_local(3)
    world.cycle()
    world.ingest([{"email": "person1@example.com", "name": "Edited"}])
    daemon = world.config.daemon.model_copy(update={"lease_timeout": 0.3})
    world.config = world.config.model_copy(update={"daemon": daemon})

    def unreachable(self: Leases, target: str) -> bool:
        raise OperationalError("UPDATE lease", {}, Exception("database is locked"))

    monkeypatch.setattr(Leases, "renew", unreachable)
    r = cycle_with_export_hook(world, lambda: time.sleep(0.8))
    assert r.outcome == "stopped" and r.exit_code == 1 and r.write_calls == 0
    assert "lease on news was lost" in r.message
    assert "could not be renewed within lease_timeout (0.3 s)" in r.message
    assert world.remote()["person1@example.com"]["fields"]["Name"] == "Person 1"
    monkeypatch.undo()
    assert world.cycle().outcome == "converged"  # the next cycle carries on from the base
    assert world.remote()["person1@example.com"]["fields"]["Name"] == "Edited"


def test_a_cycle_asked_to_stop_reports_stopped_and_why(world: World) -> None:
    world.add_local(3)
    world.cycle()
    world.ingest([{"email": "person1@example.com", "name": "Edited"}])
    r = world.cycle(should_stop=lambda: True)
    assert r.outcome == "stopped" and r.exit_code == 1
    assert "a stop was requested" in r.message
    assert last_run(world)["outcome"] == "stopped"
