"""A whole import the provider refuses for one row, whatever its HTTP status, costs that row only.

Unisender/Selzy document errors as HTTP 200 with an envelope (§1.2 of
shared/providers/unisender-selzy.md); a server that answers 400 instead, naming the row, must
not stop every later cycle: the batch is split until the row stands alone, the rest applied.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from conftest import World
from sqlmodel import Session, col, select

from syncd.config import Config, TargetConfig
from syncd.providers import make_provider
from syncd.providers.base import Provider
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

    # its local record changes, still unacceptable: sent alone, named by the answer, rejected
    world.ingest([{"email": BAD, "city": "Brest"}])
    alone = world.cycle()
    assert alone.outcome == "rejected" and alone.exit_code == 1, alone.message
    assert world.import_calls() == calls + 1 and alone.summary()["rejected"] == 1
    assert rejections(world) == {BAD: ("invalid_arg", MESSAGE)}


def test_a_paged_export_cut_short_pushes_local_changes_only(make_world: Callable[..., World]):
    """Selzy/Unisender's paged export: a page answer cut short proves nothing (DESIGN rule 1);
    the cycle still pushes local changes and infers nothing from absence."""
    world = make_world(export_mode="paged")
    world.add_local(3)
    assert world.cycle().outcome == "converged"
    world.ingest([{"email": "person0@example.com", "city": "Pinsk"}])
    world.emu.sign_up("signup@example.com", world.list_id)

    def cut(request: httpx.Request) -> httpx.Response:
        response = world.emu.handle(request)
        if request.url.path.endswith("/exportContacts"):
            body = response.read()
            return httpx.Response(200, content=body[: len(body) // 2])
        return response

    def provider(config: Config, target: TargetConfig) -> Provider:
        return make_provider(target, transport=httpx.MockTransport(cut), sleep=lambda _s: None)

    world.provider = provider  # type: ignore[method-assign]
    r = world.cycle()
    assert r.outcome != "failed" and r.exit_code != 3, r.message
    assert r.message.startswith("export incomplete") and "cut short" in r.message
    remote = world.remote()
    assert remote["person0@example.com"]["fields"]["City"] == "Pinsk"  # the edit went out
    assert set(world.local()) == {f"person{i}@example.com" for i in range(3)}
