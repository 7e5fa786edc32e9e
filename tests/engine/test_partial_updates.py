"""Updates carry only the fields that changed (``Capabilities.partial_update``).

At Unisender/Selzy an import leaves the fields it does not name as they are, so an update that
names only the changed fields cannot overwrite an edit made at the provider between syncd's
export and its push. The tags likewise travel only when they changed: an additive tags column
would put back a tag removed there meanwhile. A provider that may replace what it is not given
gets every field.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import World, config_toml, emulator_process, unisender_target

from syncd.commands import cycles
from syncd.config import Config, TargetConfig
from syncd.engine.result import CycleOptions, CycleResult
from syncd.providers.base import Provider, PushCall
from syncd.providers.netcore import NetcoreProvider
from syncd.providers.octopush import OctopushProvider
from syncd.providers.smsby import SmsbyProvider
from syncd.providers.unisender import UnisenderProvider


def cycle_with(world: World, before_push: Callable[[PushCall], None]) -> CycleResult:
    """A cycle whose provider runs ``before_push`` right before each write call: after the
    export, before the import, as a person editing at the provider meanwhile would."""

    def provider(config: Config, target: TargetConfig) -> Provider:
        adapter = world.provider(config, target)
        push = adapter.push

        def hooked(call: PushCall) -> Any:
            before_push(call)
            return push(call)

        adapter.push = hooked  # type: ignore[method-assign]
        return adapter

    (result,) = cycles.run_once(
        world.config, db=world.db, options=CycleOptions(), providers=provider
    )
    return result


def once(action: Callable[[], None]) -> Callable[[PushCall], None]:
    done: list[bool] = []

    def run(_call: PushCall) -> None:
        if not done:
            done.append(True)
            action()

    return run


def test_each_adapter_declares_partial_updates_from_its_wire_facts() -> None:
    # Unisender/Selzy and sms.by keep the fields an import does not name; Octopush overwrites
    # the contact and Netcore's bulk upload is undocumented on this point: every field goes.
    assert UnisenderProvider.capabilities.partial_update
    assert SmsbyProvider.capabilities.partial_update
    octopush = OctopushProvider(_target("octopush", key="phone", api_login="me@example.com"))
    netcore = NetcoreProvider(_target("netcore"))
    assert not octopush.capabilities.partial_update
    assert not netcore.capabilities.partial_update


def _target(provider: str, **values: Any) -> TargetConfig:
    return TargetConfig(name="t", provider=provider, list_id="1", api_key="k", fields={}, **values)


def test_an_update_sends_the_key_and_the_changed_fields_only(world: World) -> None:
    ann, bob = world.add_local(2)
    first = world.cycle()
    assert [(c.op, c.columns) for c in first.calls] == [("create", ("Name", "City"))]
    world.ingest([{"email": ann, "city": "Brest"}, {"email": bob, "name": ""}])
    result = world.cycle()
    assert result.outcome == "converged", result.message
    assert [(c.op, c.columns, c.first_rows) for c in result.calls] == [
        ("update", ("City",), ({"email": ann, "City": "Brest"},)),
        ("update", ("Name",), ({"email": bob, "Name": ""},)),
    ]
    assert world.remote()[ann]["fields"] == {"Name": "Person 0", "City": "Brest"}
    assert world.remote()[bob]["fields"] == {"Name": "", "City": "Minsk"}  # cleared: sent as ""
    assert world.cycle().write_calls == 0


def test_a_remote_edit_made_during_the_push_survives_a_local_edit_of_another_field(
    world: World,
) -> None:
    ann, bob = world.add_local(2)
    world.cycle()
    world.ingest([{"email": ann, "name": "Anna"}, {"email": bob, "city": "Grodno"}])

    def edit_remotely() -> None:
        world.emu.edit(ann, City="Brest")
        world.emu.edit(bob, Name="Robert")

    assert cycle_with(world, once(edit_remotely)).outcome == "converged"
    assert world.remote()[ann]["fields"] == {"Name": "Anna", "City": "Brest"}
    assert world.remote()[bob]["fields"] == {"Name": "Robert", "City": "Grodno"}
    pulled = world.cycle()  # the remote edits are remote edits: into the mirror, no conflict
    assert pulled.summary()["pulled"] == 2 and pulled.write_calls == 0
    assert pulled.counts["conflicts_settled"] == 0
    assert (world.local()[ann]["city"], world.local()[bob]["name"]) == ("Brest", "Robert")
    assert world.cycle().write_calls == 0


def test_a_tag_removed_remotely_during_a_push_of_another_field_does_not_come_back(
    world: World,
) -> None:
    """The update changes Name only, so it names no tags: the tag removed at the provider
    after the export stays removed, and the next cycle pulls the removal without a write."""
    ann, bob = world.add_local(2, tags=["news", "vip"])
    world.cycle()
    world.ingest([{"email": ann, "name": "Anna"}, {"email": bob, "city": "Grodno"}])

    def untag_remotely() -> None:
        world.emu.set_tags(ann, ["news"])
        world.emu.set_tags(bob, ["vip"])

    result = cycle_with(world, once(untag_remotely))
    assert result.outcome == "converged", result.message
    assert (world.remote()[ann]["tags"], world.remote()[bob]["tags"]) == (["news"], ["vip"])
    assert [(c.op, c.columns, c.first_rows) for c in result.calls] == [
        ("update", ("Name",), ({"email": ann, "Name": "Anna"},)),
        ("update", ("City",), ({"email": bob, "City": "Grodno"},)),
    ]
    pulled = world.cycle()
    assert pulled.summary()["pulled"] == 2 and pulled.write_calls == 0
    assert pulled.counts["conflicts_settled"] == 0
    assert (world.local()[ann]["tags"], world.local()[bob]["tags"]) == (["news"], ["vip"])
    assert world.local()[ann]["name"] == "Anna" and world.local()[bob]["city"] == "Grodno"
    assert world.cycle().write_calls == 0


def test_a_change_of_tags_only_goes_with_overwrite_only_to_remove(world: World) -> None:
    """Tags alone still go (key + tags), apart from a field's update; a removal replaces the
    set (overwrite_tags=1), an addition adds to it."""
    ann, bob, cy = world.add_local(3, tags=["news", "vip"])
    world.cycle()
    world.ingest(
        [
            {"email": ann, "tags": ["news"]},
            {"email": bob, "tags": ["news", "vip", "new"]},
            {"email": cy, "city": "Brest"},
        ]
    )
    result = world.cycle()
    assert result.outcome == "converged", result.message
    assert [(c.columns, c.overwrite_tags, c.first_rows) for c in result.calls] == [
        ((), True, ({"email": ann, "tags": "news"},)),
        ((), False, ({"email": bob, "tags": "new,news,vip"},)),
        (("City",), False, ({"email": cy, "City": "Brest"},)),
    ]
    remote = world.remote()
    assert remote[ann]["tags"] == ["news"]
    assert sorted(remote[bob]["tags"]) == ["new", "news", "vip"]
    assert sorted(remote[cy]["tags"]) == ["news", "vip"]
    assert world.cycle().write_calls == 0


def test_without_partial_updates_every_field_is_sent(world: World, monkeypatch: Any) -> None:
    """The capability decides: a provider that may reset what it is not given gets it all."""
    ann, bob = world.add_local(2)
    world.cycle()
    original = world.provider

    def whole(config: Config, target: TargetConfig) -> Provider:
        adapter = original(config, target)
        adapter.capabilities = replace(adapter.capabilities, partial_update=False)
        return adapter

    monkeypatch.setattr(world, "provider", whole)
    world.ingest([{"email": ann, "city": "Brest"}, {"email": bob, "name": "Bob"}])
    result = world.cycle()
    assert [(c.op, c.columns, c.rows) for c in result.calls] == [("update", ("Name", "City"), 2)]
    assert result.calls[0].first_rows[0] == {
        "email": ann,
        "tags": "",
        "Name": "Person 0",
        "City": "Brest",
    }
    assert world.cycle().write_calls == 0


# ------------------------------------------------------------ end to end, real processes

KEY = "partial-e2e-key-5b0c"
LATENCY = 3.0  # seconds each importContacts waits before it is applied: the window for an edit


def _syncd(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncd", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(cwd: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    out, err = _syncd(cwd, env, *args).communicate(timeout=120)
    assert out.strip(), err
    return json.loads(out) if args[0] == "run-once" else {"out": out}


def _configure(tmp_path: Path, emulator: str) -> dict[str, str]:
    """A config for one target against the emulator; returns the environment to run syncd in."""
    target = unisender_target(emulator, api_key=KEY, export_poll_interval=0.05)
    (tmp_path / "syncd.toml").write_text(config_toml(tmp_path, target), encoding="utf-8")
    return {k: v for k, v in os.environ.items() if k != "SYNCD_CONFIG"}


def _ingest(tmp_path: Path, env: dict[str, str], name: str, csv: str) -> None:
    path = tmp_path / name
    path.write_text(csv, encoding="utf-8")
    _run(tmp_path, env, "ingest", str(path))


def _push_held(tmp_path: Path, env: dict[str, str], admin: httpx.Client) -> subprocess.Popen[str]:
    """Start `syncd run-once` with importContacts held back by the emulator (its `latency`
    fault); return once the first import has arrived, after the export, and waits."""
    imports = admin.get("/calls").json()["calls"].get("importContacts", 0)
    admin.post("/faults", json={"latency": LATENCY, "methods": ["importContacts"]})
    push = _syncd(tmp_path, env, "run-once", "--json")
    deadline = time.monotonic() + 60
    while admin.get("/calls").json()["calls"].get("importContacts", 0) == imports:
        assert push.poll() is None and time.monotonic() < deadline, push.communicate()
        time.sleep(0.01)
    return push


@contextmanager
def _edits_pushed_and_held(
    tmp_path: Path, people: str
) -> Iterator[tuple[dict[str, str], httpx.Client, subprocess.Popen[str]]]:
    """`syncd emulate unisender` and the mirror in step on ``people``, then a local edit of each
    of Ann and Bob, pushed by a `syncd run-once` whose first import waits at the emulator: yields
    the environment, the emulator's admin client and that push."""
    with emulator_process("unisender", KEY) as emulator:
        env = _configure(tmp_path, emulator)
        _ingest(tmp_path, env, "people.csv", people)
        assert _run(tmp_path, env, "run-once", "--json")["outcome"] == "converged"

        _ingest(
            tmp_path,
            env,
            "edits.csv",
            "email,name,city\nann@example.com,Anna,Minsk\nbob@example.com,Bob,Grodno\n",
        )
        with httpx.Client(base_url=f"{emulator}/_emulator", timeout=10) as admin:
            yield env, admin, _push_held(tmp_path, env, admin)


def _finish(push: subprocess.Popen[str], admin: httpx.Client) -> dict[str, Any]:
    """Let the held push finish: the import in flight keeps its delay; no others wait."""
    admin.post("/faults", json={})
    out, err = push.communicate(timeout=120)
    assert push.returncode == 0, out + err
    result: dict[str, Any] = json.loads(out)
    return result


def _local(tmp_path: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    rows = _run(tmp_path, env, "export")["out"].split("\n")[:-1]
    return {r["email"]: r for r in map(json.loads, rows)}


def _remote(admin: httpx.Client) -> dict[str, dict[str, Any]]:
    state = admin.get("/state", params={"list_id": 1}).json()["contacts"]
    return {c["email"]: c for c in state}


def _edit(admin: httpx.Client, email: str, action: str, **values: Any) -> dict[str, Any]:
    """An edit made at the provider (its UI, a form), through the emulator's admin API."""
    contact: dict[str, Any] = admin.post(
        "/contact", json={"action": action, "email": email, **values}
    ).json()
    return contact


@pytest.mark.slow
def test_a_remote_edit_between_export_and_import_survives_end_to_end(tmp_path: Path) -> None:
    """`syncd run-once` against `syncd emulate unisender`. The emulator holds each import back
    (its `latency` fault on importContacts); once the first import has arrived, after the
    export, the test edits those contacts at the provider, before the import is applied."""
    people = (
        "email,name,city,lists\nann@example.com,Ann,Minsk,news\nbob@example.com,Bob,Minsk,news\n"
    )
    with _edits_pushed_and_held(tmp_path, people) as (env, admin, push):
        # the first import has arrived and waits: edit the other field of each contact
        ann = _edit(admin, "ann@example.com", "edit", City="Brest")
        bob = _edit(admin, "bob@example.com", "edit", Name="Robert")
        # the edits came before the import was applied, or the test proves nothing
        assert (ann["fields"]["Name"], bob["fields"]["City"]) == ("Ann", "Minsk")
        assert _finish(push, admin)["updated"] == 2

        remote = _remote(admin)
        assert remote["ann@example.com"]["fields"] == {"Name": "Anna", "City": "Brest"}
        assert remote["bob@example.com"]["fields"] == {"Name": "Robert", "City": "Grodno"}

        pulled = _run(tmp_path, env, "run-once", "--json")
        assert (pulled["pulled"], pulled["write_calls"], pulled["conflicts"]) == (2, 0, 0)
        local = _local(tmp_path, env)
        assert local["ann@example.com"]["city"] == "Brest"
        assert local["bob@example.com"]["name"] == "Robert"
        assert _run(tmp_path, env, "run-once", "--json")["write_calls"] == 0


@pytest.mark.slow
def test_a_tag_removed_between_export_and_import_stays_removed_end_to_end(
    tmp_path: Path,
) -> None:
    """As above, with tags: the push changes one field of each contact, and while its import
    waits at the emulator the test removes a tag of each contact there. The update names no
    tags, so the removal stands, and the next cycle pulls it into the mirror without a write."""
    people = (
        "email,name,city,tags,lists\n"
        'ann@example.com,Ann,Minsk,"news,vip",news\n'
        'bob@example.com,Bob,Minsk,"news,vip",news\n'
    )
    with _edits_pushed_and_held(tmp_path, people) as (env, admin, push):
        ann = _edit(admin, "ann@example.com", "set_tags", tags=["news"])
        bob = _edit(admin, "bob@example.com", "set_tags", tags=["vip"])
        # the removals came before the import was applied, or the test proves nothing
        assert (ann["fields"]["Name"], bob["fields"]["City"]) == ("Ann", "Minsk")
        assert _finish(push, admin)["updated"] == 2

        remote = _remote(admin)
        assert remote["ann@example.com"]["tags"] == ["news"]
        assert remote["bob@example.com"]["tags"] == ["vip"]
        assert remote["ann@example.com"]["fields"] == {"Name": "Anna", "City": "Minsk"}
        assert remote["bob@example.com"]["fields"] == {"Name": "Bob", "City": "Grodno"}

        pulled = _run(tmp_path, env, "run-once", "--json")
        assert (pulled["pulled"], pulled["write_calls"], pulled["conflicts"]) == (2, 0, 0)
        local = _local(tmp_path, env)
        assert local["ann@example.com"]["tags"] == ["news"]
        assert local["bob@example.com"]["tags"] == ["vip"]
        assert _run(tmp_path, env, "run-once", "--json")["write_calls"] == 0
