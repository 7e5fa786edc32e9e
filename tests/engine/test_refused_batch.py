"""A whole import the provider refuses for one row, whatever its HTTP status, costs that row only.

Unisender/Selzy document errors as HTTP 200 with an envelope (§1.2 of
shared/providers/unisender-selzy.md); a server that answers 400 instead, naming the row, must
not stop every later cycle: the batch is split until the row stands alone, the rest applied.
"""

from __future__ import annotations

from conftest import World
from sqlmodel import Session, col, select

from syncd.store.models import Rejection

BAD = "person321@example.com"
MESSAGE = f'Invalid value of field "email": "{BAD}"'


def rejections(world: World) -> dict[str, tuple[str, str]]:
    with Session(world.db) as session:
        rows = session.exec(select(Rejection).where(col(Rejection.target) == "news")).all()
        return {r.key: (r.code, r.message) for r in rows}


def test_an_import_refused_with_http_400_applies_the_rest_and_rejects_the_row(world: World):
    emails = world.add_local(500)
    world.emu.refuse_import(BAD, status=400, code="invalid_arg", message=MESSAGE)

    first = world.cycle()
    assert first.outcome == "rejected" and first.exit_code == 1, first.message
    assert first.summary()["created"] == 499 and first.summary()["rejected"] == 1
    assert set(world.remote()) == set(emails) - {BAD}
    assert rejections(world) == {BAD: ("invalid_arg", MESSAGE)}
    assert world.emu.faults.injected["import_refused http_400"] >= 1

    # the next cycle does not fail either: the row waits for a local change, nothing is sent
    calls = world.import_calls()
    again = world.cycle()
    assert again.outcome == "rejected" and again.exit_code == 1, again.message
    assert again.write_calls == 0 and world.import_calls() == calls
    assert again.summary()["rejected"] == 1
    assert rejections(world) == {BAD: ("invalid_arg", MESSAGE)}
    assert set(world.remote()) == set(emails) - {BAD}
