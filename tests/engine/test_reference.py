"""The stable reference (``reference_field``): each contact carries syncd's own id at the
provider, so a create whose answer was lost and a key changed at the provider are recognised."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import World
from sqlalchemy import select
from sqlmodel import Session, col

from syncd.config import parse_config
from syncd.errors import ConfigError
from syncd.providers import PROVIDERS
from syncd.store import open_engine
from syncd.store.models import Base, Contact, new_ref, new_refs

REF = "syncd_id"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, reference_field=REF)


def refs(w: World) -> dict[str, str]:
    with Session(w.db) as s:
        return {c.email: c.ref for c in s.exec(select(Contact)).scalars() if c.email and c.ref}


def people(w: World, n: int) -> None:
    w.ingest(
        {"email": f"p{i}@example.com", "phone": f"+37529100000{i}", "name": f"P{i}"}
        | {"lists": ["news"]}
        for i in range(n)
    )


def test_each_contact_is_created_with_its_reference_and_keeps_it(world: World) -> None:
    people(world, 3)
    before = refs(world)
    assert len(set(before.values())) == 3
    world.cycle()
    remote = world.remote()
    assert {e: c["fields"][REF] for e, c in remote.items()} == before
    assert any(f["name"] == REF for f in world.emu._fields_json())  # created like mapped fields
    world.ingest([{"email": "p0@example.com", "name": "Changed"}])
    world.cycle()
    assert refs(world) == before
    assert world.cycle().write_calls == 0


def test_new_references_are_unique_and_sort_in_the_order_they_were_made(world: World) -> None:
    # Time first (UUID version 7) so each new ref is written at the right edge of its index.
    first = new_refs(1000)
    time.sleep(0.002)
    later = [new_ref(), *new_refs(3)]
    made = first + later
    assert len(set(made)) == len(made)
    assert first == sorted(first) and max(first) < min(later)
    for ref in made:
        assert len(ref) == 32 and uuid.UUID(ref).hex == ref
        assert uuid.UUID(ref).version == 7 and uuid.UUID(ref).variant == uuid.RFC_4122
        assert abs(int(ref[:12], 16) - time.time() * 1000) < 60_000  # milliseconds since 1970
    # The bulk insert of ingestion gives them too: a later file's contacts sort after.
    people(world, 3)
    time.sleep(0.002)
    world.ingest([{"email": "late@example.com"}])
    after = refs(world)
    assert all(after["late@example.com"] > after[f"p{i}@example.com"] for i in range(3))


def test_lost_creates_are_recognised_not_repeated_not_resurrected(world: World) -> None:
    people(world, 4)
    assert world.cycle_losing_answers().outcome == "unreachable"
    assert len(world.remote()) == 4  # the creates went through; the base knows nothing of it
    with Session(world.db) as s:
        assert s.scalar(select(col(Base.key))) is None

    world.ingest(
        [
            {"email": "p0@example.com", "delete": "1"},  # deleted after its lost create
            {"email": "moved@example.com", "phone": "+375291000001"},  # p1's address changed
            {"email": "p2@example.com", "name": "Edited"},  # edited since
        ]
    )
    world.emu.calls.clear()
    result = world.cycle()
    assert result.outcome == "converged", result.summary()
    remote = world.remote()
    assert sorted(remote) == ["moved@example.com", "p2@example.com", "p3@example.com"]
    assert remote["p2@example.com"]["fields"]["Name"] == "Edited"
    assert sorted(world.local()) == sorted(remote)
    assert result.counts["create"] == 1  # only the new address; p2 and p3 were not sent again
    assert "p0@example.com" not in world.local()
    assert world.cycle().write_calls == 0


def test_a_key_changed_at_the_provider_moves_the_same_local_contact(world: World) -> None:
    people(world, 2)
    world.cycle()
    before = refs(world)
    world.emu.change_email("p0@example.com", "p0.new@example.com")
    world.emu.edit("p0.new@example.com", City="Brest")
    result = world.cycle()
    assert result.outcome == "converged", result.summary()
    after = refs(world)
    assert after["p0.new@example.com"] == before["p0@example.com"]  # the same contact
    assert "p0@example.com" not in after
    assert world.local()["p0.new@example.com"]["city"] == "Brest"
    assert sorted(world.remote()) == ["p0.new@example.com", "p1@example.com"]
    assert world.cycle().write_calls == 0


def test_a_store_from_before_references_gets_one_for_every_contact(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the contact table as syncd made it before `ref`
        db.execute(
            "CREATE TABLE contact (id INTEGER PRIMARY KEY, email VARCHAR UNIQUE, "
            "phone VARCHAR UNIQUE, fields VARCHAR, tags VARCHAR, status VARCHAR, deleted BOOLEAN)"
        )
        db.executemany(
            "INSERT INTO contact (email, fields, tags, status, deleted) "
            "VALUES (?, '{}', '[]', 'active', 0)",
            [(f"old{i}@example.com",) for i in range(3)],
        )
    open_engine(f"sqlite:///{path}").dispose()
    engine = open_engine(f"sqlite:///{path}")  # a second opening changes nothing
    with Session(engine) as s:
        filled = dict(s.exec(select(col(Contact.id), col(Contact.ref))).all())
    assert len(filled) == 3 and all(filled.values()) and len(set(filled.values())) == 3
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE contact SET ref = ? WHERE id = 2", (filled[1],))  # unique


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ({"provider": "smsby", "key": "phone"}, "cannot keep it"),
        ({"fields": {REF: "name"}}, "also in `fields`"),
        ({"reference_field": "1bad"}, "reference_field"),
    ],
)
def test_reference_field_is_refused_where_it_cannot_work(target: dict[str, Any], says: str):
    base = {"name": "t", "provider": "unisender", "list_id": "1", "api_key": "k"}
    with pytest.raises(ConfigError) as err:
        parse_config(
            {"target": [base | {"reference_field": REF} | target]}, "test", providers=PROVIDERS
        )
    assert says in str(err.value.problems)
