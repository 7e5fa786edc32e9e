"""Full cycles through ``syncd.commands.cycles.run_once`` against the push-only emulators (sms.by,
Octopush).

Neither provider documents an export, so the engine takes the remote side as the base: local
creates, updates and deletes go out once, a cycle without local change writes nothing, and what a
provider cannot do (sms.by: delete; both: record an opt-out) is reported, never pushed wrongly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from syncd.cli import _summary_line
from syncd.commands import cycles
from syncd.config import Config, TargetConfig, parse_config
from syncd.emulators.octopush import OctopushEmulator
from syncd.emulators.smsby import SmsbyEmulator
from syncd.engine.result import CycleOptions, CycleResult
from syncd.local.ingest import ingest_file
from syncd.providers import PROVIDERS, make_provider
from syncd.providers.base import Provider
from syncd.store import open_engine
from syncd.store.models import Rejection

API_KEY = "push-key-91c2"
LOGIN = "ops@example.com"

SETUPS: dict[str, dict[str, Any]] = {
    "smsby": {
        "base_url": "http://127.0.0.1:9/api/v2",
        "fields": {"name": "name", "city": "city"},
    },
    "octopush": {
        "base_url": "http://127.0.0.1:9/v1/public",
        "api_login": LOGIN,
        "fields": {"first_name": "name", "param1": "city"},
    },
}


class PushWorld:
    """A push-only emulator account, a mirror and a config: one phone-keyed target 'news'."""

    def __init__(self, tmp_path: Path, provider: str, **target: Any) -> None:
        self.tmp = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.kind = provider
        self.sms = SmsbyEmulator(token=API_KEY)
        self.octo = OctopushEmulator(api_login=LOGIN, api_key=API_KEY)
        self.handle = self.sms.handle if provider == "smsby" else self.octo.handle
        if provider == "smsby":
            self.list_id = str(self.sms.add_list("Newsletter"))
        else:
            self.list_id = "Newsletter"
            self.octo.add_list(self.list_id)
        self.config = self._config(provider, target)
        self.db: Engine = open_engine(self.config.store.url)
        self._files = 0

    def _config(self, provider: str, target: dict[str, Any]) -> Config:
        values: dict[str, Any] = {
            "name": "news",
            "provider": provider,
            "list_id": self.list_id,
            "local_list": "news",
            "key": "phone",
            "api_key": API_KEY,
            "rate_limit_per_minute": 1_000_000,
            **SETUPS[provider],
            **target,
        }
        return parse_config(
            {"store": {"url": f"sqlite:///{self.tmp / 'syncd.db'}"}, "target": [values]},
            "test",
            providers=PROVIDERS,
        )

    def provider(self, config: Config, target: TargetConfig) -> Provider:
        return make_provider(
            target, transport=httpx.MockTransport(self.handle), sleep=lambda _s: None
        )

    def cycle(self, **options: Any) -> CycleResult:
        (result,) = cycles.run_once(
            self.config, db=self.db, options=CycleOptions(**options), providers=self.provider
        )
        return result

    def ingest(self, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
        self._files += 1
        path = self.tmp / f"in-{self._files}.ndjson"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return ingest_file(self.db, path, self.config.ingest).to_dict()

    def add_local(self, n: int, start: int = 0, **extra: Any) -> list[str]:
        numbers = [phone(i) for i in range(start, start + n)]
        self.ingest(
            {"phone": p, "name": f"Person {i}", "city": "Minsk", "lists": ["news"], **extra}
            for i, p in zip(range(start, start + n), numbers, strict=True)
        )
        return numbers

    def remote(self) -> dict[str, dict[str, Any]]:
        """The remote list by E.164 number, fields under their remote names."""
        if self.kind == "smsby":
            return {
                "+" + c["phone"]: c["fields"] for c in self.sms.contacts_in_list(int(self.list_id))
            }
        return {c["phone_number"]: c for c in self.octo.contacts_in_list(self.list_id)}

    def write_calls(self) -> int:
        emu = self.sms if self.kind == "smsby" else self.octo
        return emu.write_calls

    def rejections(self) -> dict[str, tuple[str, str]]:
        with Session(self.db) as session:
            rows = session.exec(select(Rejection).where(col(Rejection.target) == "news")).all()
            return {r.key: (r.code, r.message) for r in rows}


def phone(i: int) -> str:
    return f"+37529{1000000 + i}"


@pytest.fixture(params=["smsby", "octopush"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> PushWorld:
    return PushWorld(tmp_path, request.param)


NAME = {"smsby": "name", "octopush": "first_name"}
CITY = {"smsby": "city", "octopush": "param1"}


# --------------------------------------------------------------------------- both providers


def test_creates_and_updates_go_out_once_then_nothing(world: PushWorld) -> None:
    numbers = world.add_local(5)
    first = world.cycle()
    assert first.outcome == "converged", first.message
    assert first.summary()["created"] == 5 and first.write_calls == 1
    remote = world.remote()
    assert sorted(remote) == numbers
    assert remote[numbers[0]][NAME[world.kind]] == "Person 0"

    second = world.cycle()
    assert second.outcome == "converged" and second.write_calls == 0 and second.calls == []
    assert second.api_calls == 0  # no export to read: a quiet cycle costs nothing

    world.ingest([{"phone": numbers[2], "city": "Brest"}])
    third = world.cycle()
    assert third.outcome == "converged" and third.summary()["updated"] == 1
    assert world.remote()[numbers[2]][CITY[world.kind]] == "Brest"
    assert world.cycle().write_calls == 0


def test_invalid_rows_are_rejected_one_by_one_with_the_providers_message(tmp_path: Path) -> None:
    for kind in ("smsby", "octopush"):
        fields = dict(SETUPS[kind]["fields"])
        if kind == "smsby":
            fields["email"] = "work_email"  # a free-text local field the provider validates
        world = PushWorld(tmp_path / kind, kind, fields=fields)
        numbers = world.add_local(4)
        if kind == "smsby":
            world.ingest([{"phone": numbers[1], "work_email": "not-an-email"}])
            expected = ("invalid", "Incorrect email")
        else:
            world.octo.refuse_number(numbers[1])
            expected = ("117", f"Invalid phone number: {numbers[1]}")
        result = world.cycle()
        assert result.outcome == "rejected", kind
        assert result.summary()["created"] == 3 and result.summary()["rejected"] == 1
        assert world.rejections() == {numbers[1]: expected}
        assert sorted(world.remote()) == [numbers[0], numbers[2], numbers[3]]

        again = world.cycle()  # a permanent rejection waits until the local record changes
        assert again.write_calls == 0 and again.summary()["rejected"] == 1


def test_a_locally_opted_out_contact_is_never_pushed_as_active(world: PushWorld) -> None:
    """Neither provider can record an opt-out: an opted-out contact is never created there,
    and one already there is taken off the list (Octopush) or reported by name (sms.by)."""
    numbers = world.add_local(3)
    world.ingest([{"phone": phone(9), "name": "Nope", "lists": ["news"], "status": "unsubscribed"}])
    first = world.cycle()
    assert first.summary()["created"] == 3 and first.summary()["withheld_opted_out"] == 1
    assert phone(9) not in world.remote()
    assert first.outcome == "converged"  # withholding is the right state, not an error

    writes = world.write_calls()
    world.ingest([{"phone": numbers[0], "status": "unsubscribed"}])
    second = world.cycle()
    if world.kind == "octopush":
        assert second.summary()["deleted"] == 1 and numbers[0] not in world.remote()
        assert second.outcome == "converged"
    else:
        assert second.write_calls == 0 and world.write_calls() == writes
        assert second.summary()["unsupported"] == 1 and numbers[0] in second.message
        assert second.outcome == "rejected"  # a consent gap a person must close
    third = world.cycle()
    assert third.write_calls == 0


def test_an_update_carries_what_the_provider_would_otherwise_lose(world: PushWorld) -> None:
    """sms.by updates only the fields an import names ("Import semantics"): the changed one
    goes alone. Octopush's create overwrites the contact and omitted params are undocumented
    (``partial_update`` False): every mapped field goes, the unchanged one with its value."""
    numbers = world.add_local(2)
    world.cycle()
    world.ingest([{"phone": numbers[1], "city": "Brest"}])
    result = world.cycle()
    assert result.outcome == "converged", result.message
    name, city = NAME[world.kind], CITY[world.kind]
    (call,) = result.calls
    if world.kind == "smsby":
        assert call.columns == (city,)
        assert call.first_rows == ({"phone": numbers[1].removeprefix("+"), city: "Brest"},)
    else:
        assert call.columns == (name, city)
        assert call.first_rows == ({"phone_number": numbers[1], name: "Person 1", city: "Brest"},)
    assert world.remote()[numbers[1]][name] == "Person 1"
    assert world.remote()[numbers[1]][city] == "Brest"
    assert world.cycle().write_calls == 0


def test_plan_shows_the_calls_and_writes_nothing(world: PushWorld) -> None:
    world.add_local(3)
    plan = world.cycle(dry_run=True)
    method = {"smsby": "importContacts", "octopush": "contact/create"}[world.kind]
    assert [(c.method, c.op, c.rows) for c in plan.calls] == [(method, "create", 3)]
    assert world.write_calls() == 0 and world.remote() == {}
    assert world.cycle().summary()["created"] == 3


# --------------------------------------------------------------------------- sms.by


def second_of_three_deleted_locally(world: PushWorld) -> tuple[list[str], CycleResult]:
    """Three numbers pushed, then the second deleted locally: the numbers and the next cycle."""
    numbers = world.add_local(3)
    world.cycle()
    world.ingest([{"phone": numbers[1], "delete": 1}])
    return numbers, world.cycle()


def test_smsby_local_delete_is_reported_as_unsupported(tmp_path: Path) -> None:
    world = PushWorld(tmp_path, "smsby")
    numbers, result = second_of_three_deleted_locally(world)
    assert result.outcome == "rejected"  # the cycle says a change could not be carried out
    assert result.summary()["unsupported"] == 1 and result.summary()["deleted"] == 0
    assert result.write_calls == 0
    assert numbers[1] in world.remote()  # still there: sms.by documents no delete
    assert numbers[1] in result.message  # reported by name, not silently dropped
    again = world.cycle()
    assert again.write_calls == 0 and again.outcome == "converged"  # reported once


def test_smsby_rows_split_at_500(tmp_path: Path) -> None:
    world = PushWorld(tmp_path, "smsby")
    world.add_local(1200)
    result = world.cycle()
    assert result.outcome == "converged"
    assert [c.rows for c in result.calls] == [500, 500, 200]  # "Import limits"
    assert len(world.remote()) == 1200
    assert world.cycle().write_calls == 0


def test_smsby_columns_split_beyond_30_field_names(tmp_path: Path) -> None:
    fields = {f"f{i:02d}": f"f{i:02d}" for i in range(31)}
    world = PushWorld(tmp_path, "smsby", fields=fields)
    values = {name: f"v{name}" for name in fields}
    world.ingest({"phone": phone(i), "lists": ["news"], **values} for i in range(3))
    result = world.cycle()
    assert result.outcome == "converged", result.message
    assert [(c.rows, len(c.columns)) for c in result.calls] == [(3, 29), (3, 2)]  # + the key
    assert world.remote()[phone(0)] == values
    assert world.cycle().write_calls == 0


def test_members_without_a_phone_are_counted_every_cycle_and_never_sent(world: PushWorld) -> None:
    """A phone target cannot match a member without a phone: it is not sent, and every cycle's
    summary says how many there are, so that they are not lost without a word."""
    world.add_local(2)
    world.ingest({"email": f"nophone{i}@example.com", "lists": ["news"]} for i in range(3))
    first = world.cycle()
    assert first.outcome == "converged" and first.summary()["created"] == 2
    assert first.summary()["without_key"] == 3 and len(world.remote()) == 2
    again = world.cycle()
    assert again.write_calls == 0 and again.summary()["without_key"] == 3
    assert "3 members without this target's key, not synced" in _summary_line(again)


# --------------------------------------------------------------------------- Octopush


def test_octopush_local_delete_goes_out_once(tmp_path: Path) -> None:
    world = PushWorld(tmp_path, "octopush")
    numbers, result = second_of_three_deleted_locally(world)
    assert result.outcome == "converged" and result.summary()["deleted"] == 1
    assert [(c.method, c.rows) for c in result.calls] == [("contact/delete", 1)]
    assert numbers[1] not in world.remote()
    assert world.octo.get(numbers[1]) is not None  # list-scoped: the account keeps it
    assert world.cycle().write_calls == 0


def test_octopush_rows_split_by_the_setting_and_by_the_provider(tmp_path: Path) -> None:
    world = PushWorld(tmp_path, "octopush", max_rows_per_call=4)
    world.add_local(10)
    result = world.cycle()
    assert [c.rows for c in result.calls] == [4, 4, 2]
    assert result.write_calls == 3 and len(world.remote()) == 10

    other = PushWorld(tmp_path / "other", "octopush")
    other.octo.max_contacts = 4  # the provider refuses bigger batches (code 305)
    other.add_local(10)
    result = other.cycle()
    assert result.outcome == "converged", result.message
    assert result.write_calls == 6  # 10 refused, 5 refused, then 3+2, and the other 5 as 3+2
    assert len(other.remote()) == 10
    assert other.cycle().write_calls == 0


def test_deletes_the_provider_cannot_do_do_not_trip_the_mass_delete_guard(tmp_path: Path) -> None:
    world = PushWorld(tmp_path, "smsby")
    numbers = world.add_local(20)
    world.cycle()
    world.ingest({"phone": n, "delete": 1} for n in numbers[:11])
    result = world.cycle()
    assert result.outcome != "refused"  # nothing would be deleted at all
    assert result.summary()["unsupported"] == 11 and result.write_calls == 0
