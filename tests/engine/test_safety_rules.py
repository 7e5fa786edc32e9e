"""DESIGN.md §3: one test (at least) per safety rule, each failing if the rule breaks."""

from __future__ import annotations

import logging

import pytest
from conftest import API_KEY, World
from sqlalchemy import func, select
from sqlmodel import Session

from syncd.commands import cycles
from syncd.config import is_loopback_host, parse_config
from syncd.errors import ConfigError
from syncd.providers import PROVIDERS
from syncd.store.models import Base
from syncd.store.schema import metadata


def base_rows(world: World) -> int:
    with Session(world.db) as s:
        return int(s.scalar(select(func.count()).select_from(Base)) or 0)


# Rule 1 -----------------------------------------------------------------------------------


def test_rule1_no_deletion_is_inferred_from_a_truncated_export(world: World):
    world.add_local(20)
    world.cycle()
    world.emu.delete("person3@example.com")
    world.ingest([{"email": "person5@example.com", "city": "Gomel"}])
    world.emu.faults.export_truncate = True
    r = world.cycle()
    assert not r.export_complete and "incomplete" in r.message
    assert r.summary()["removed_local"] == 0 and len(world.local()) == 20
    # local changes still go out
    assert world.remote()["person5@example.com"]["fields"]["City"] == "Gomel"
    world.emu.faults.export_truncate = False
    assert world.cycle().summary()["removed_local"] == 1


def test_rule1_an_export_that_never_completes_infers_nothing(make_world):
    world = make_world(export_timeout=0.05)
    world.add_local(5)
    world.cycle()
    world.emu.delete("person1@example.com")
    world.emu.faults.export_never_completes = True
    r = world.cycle()
    assert not r.export_complete
    assert "person1@example.com" in world.local()


def test_rule1_no_creates_or_deletes_while_the_remote_is_unknown(world: World):
    world.add_local(3)
    world.cycle()
    world.emu.unsubscribe("person0@example.com", world.list_id)
    world.add_local(1, start=10)
    world.ingest([{"email": "person0@example.com", "delete": 1}])
    world.emu.faults.export_truncate = True
    r = world.cycle()
    assert r.summary()["deferred"] == 2 and r.write_calls == 0
    assert "person10@example.com" not in world.remote()


# Rule 2 -----------------------------------------------------------------------------------


def test_rule2_mass_delete_guard_stops_before_writing_local_deletes(world: World):
    emails = world.add_local(100)
    world.cycle()
    world.ingest({"email": e, "delete": 1} for e in emails[:30])
    calls = world.import_calls()
    r = world.cycle()
    assert r.outcome == "refused" and "max_delete_fraction" in r.message and r.exit_code == 1
    assert world.import_calls() == calls and len(world.remote()) == 100
    r = world.cycle(allow_mass_delete=True)
    assert r.summary()["deleted"] == 30 and len(world.remote()) == 70


def test_rule2_mass_delete_guard_protects_the_mirror_from_remote_deletes(world: World):
    emails = world.add_local(100)
    world.cycle()
    for e in emails[:25]:
        world.emu.delete(e)
    r = world.cycle()
    assert r.outcome == "refused" and len(world.local()) == 100


def test_rule2_measures_deletions_against_the_list_not_the_base(make_world):
    """The first push's answer was lost: 100 contacts at the provider, none in the base yet.
    Deleting 15 of them locally is 15 % of the list, not "15 of 0 synced contacts"."""
    world = make_world(reference_field="syncd_id")
    emails = world.add_local(100)
    assert world.cycle_losing_answers().outcome == "unreachable"  # landed; answer lost
    assert len(world.remote()) == 100
    world.ingest({"email": e, "delete": 1} for e in emails[:15])
    r = world.cycle()
    assert r.outcome == "converged", r.message
    assert r.summary()["deleted"] == 15 and len(world.remote()) == 85
    # and 25 % is still too many
    world.ingest({"email": e, "delete": 1} for e in emails[15:37])
    assert world.cycle().outcome == "refused"


def test_rule2_deletes_deferred_by_an_incomplete_export_do_not_trip_the_guard(world: World):
    """Rule 1 defers every delete while the remote is unknown: nothing would be deleted, so
    the cycle still pushes its edits instead of being refused."""
    emails = world.add_local(100)
    world.cycle()
    world.ingest({"email": e, "delete": 1} for e in emails[:30])
    world.ingest([{"email": emails[50], "name": "Edited"}])
    world.emu.faults.export_truncate = True
    r = world.cycle()
    assert r.outcome != "refused", r.message
    assert r.summary()["deferred"] == 30 and r.summary()["updated"] == 1
    assert len(world.remote()) == 100
    world.emu.faults.export_truncate = False
    assert world.cycle().outcome == "refused"  # with the remote known, 30 % is a mass delete


def test_rule2_a_few_deletes_pass(world: World):
    emails = world.add_local(100)
    world.cycle()
    world.ingest({"email": e, "delete": 1} for e in emails[:5])
    assert world.cycle().summary()["deleted"] == 5


# Rule 3 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["list", "account", "block"])
def test_rule3_never_resubscribe(world: World, how: str):
    world.add_local(3)
    world.cycle()
    email = "person0@example.com"
    if how == "list":
        world.emu.unsubscribe(email, world.list_id)
    elif how == "account":
        world.emu.unsubscribe(email)
    else:
        world.emu.block(email)
    # the local side insists: active again, and edited
    world.ingest([{"email": email, "status": "active", "name": "Insisting"}])
    for _ in range(3):
        world.cycle()
        assert world.opted_out_remotely(email)
    status, state = world.consent(email)
    if how == "list":
        # the person left this list only: the mirror keeps it as that list's consent
        assert (status, state) == ("active", "unsubscribed")
        assert world.emu.get(email)["email_status"] not in ("unsubscribed", "blocked")
    else:
        assert status in ("unsubscribed", "blocked")


def unsubscribed_there_then_deleted_here(world: World, contacts: int, email: str) -> None:
    """``contacts`` people in step on both sides; ``email`` unsubscribes at the provider, a cycle
    brings that back, then the local side deletes it."""
    world.add_local(contacts)
    world.cycle()
    world.emu.unsubscribe(email, world.list_id)
    world.cycle()
    world.ingest([{"email": email, "delete": 1}])


def test_rule3_a_remote_unsubscribe_of_a_locally_deleted_contact_is_never_deleted(world: World):
    unsubscribed_there_then_deleted_here(world, 3, "person1@example.com")
    r = world.cycle()
    assert world.emu.get("person1@example.com") is not None  # the opt-out record stays
    assert r.summary()["kept_opted_out"] == 1 and r.write_calls == 0


def test_rule3_re_created_contact_stays_opted_out(world: World):
    unsubscribed_there_then_deleted_here(world, 2, "person0@example.com")
    world.ingest([{"email": "person0@example.com", "lists": ["news"]}])
    world.cycle()
    assert world.consent("person0@example.com") == ("active", "unsubscribed")
    assert world.opted_out_remotely("person0@example.com")


def test_rule3_local_unsubscribe_is_pushed_as_unsubscribe(world: World):
    world.add_local(2)
    world.cycle()
    world.ingest([{"email": "person1@example.com", "status": "unsubscribed"}])
    world.cycle()
    assert world.opted_out_remotely("person1@example.com")
    assert world.cycle().write_calls == 0


# Rule 4 -----------------------------------------------------------------------------------


def test_rule4_base_moves_only_on_confirmation_of_the_call(make_world):
    world = make_world(retries=0)
    world.add_local(5)
    world.emu.faults.http_5xx_rate = 1.0
    world.emu.faults.methods = {"importContacts"}
    r = world.cycle()
    assert r.outcome == "unreachable" and r.exit_code == 3
    assert base_rows(world) == 0
    world.emu.faults.http_5xx_rate = 0.0
    assert world.cycle().summary()["created"] == 5
    assert base_rows(world) == 5


def test_rule4_a_rejected_row_keeps_its_base_and_waits_for_a_local_change(world: World):
    world.ingest([{"email": "info@example.com", "lists": ["news"]}])  # role address
    world.add_local(2)
    r = world.cycle()
    assert r.summary()["created"] == 2 and r.summary()["rejected"] == 1
    assert r.outcome == "rejected" and r.exit_code == 1
    assert base_rows(world) == 2
    again = world.cycle()
    assert again.write_calls == 0 and again.summary()["rejected"] == 1  # held, not re-sent
    assert cycles.status(world.config, world.db)[0].rejected == 1


# Rule 5 -----------------------------------------------------------------------------------


def test_rule5_a_cycle_after_a_converged_one_sends_no_write(world: World):
    world.add_local(40)
    world.cycle()
    world.emu.edit("person1@example.com", City="Pinsk")
    world.emu.unsubscribe("person2@example.com", world.list_id)
    world.ingest([{"email": "person3@example.com", "tags": ["x"]}])
    world.cycle()
    calls = world.import_calls()
    r = world.cycle()
    assert r.write_calls == 0 and world.import_calls() == calls and r.outcome == "converged"


# Rule 7 -----------------------------------------------------------------------------------


def test_rule7_the_api_key_appears_in_no_log_store_or_output(world: World, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    world.add_local(3)
    world.emu.faults.http_5xx_rate = 0.5
    world.emu.faults.seed = 7
    results = [world.cycle(), world.cycle()]
    texts = [caplog.text, *(str(r.summary()) + r.message for r in results)]
    assert all(API_KEY not in t for t in texts)
    for f in tmp_path.glob("syncd.db*"):
        assert API_KEY.encode() not in f.read_bytes()
    with world.db.connect() as conn:  # every row of every table, whichever the database
        for table in metadata().sorted_tables:
            assert API_KEY not in repr(conn.execute(select(table)).all()), table.name
    assert API_KEY not in repr(world.config) and API_KEY not in str(world.config.target[0])


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # PostgreSQL has no file
def test_rule7_the_store_file_is_owner_only(world: World, tmp_path):
    assert (tmp_path / "syncd.db").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://emulator:8765/en/api",  # a compose service name is not this machine
        "http://10.0.0.5/en/api",
        "HTTP://api.unisender.com/en/api",
        "http://127.0.0.1.example.com/en/api",
        "http://user@127.0.0.1@example.com/en/api",
        "ftp://127.0.0.1/en/api",
    ],
)
def test_rule7_a_key_is_never_sent_in_clear_beyond_this_machine(url: str):
    target = {"name": "news", "provider": "unisender", "list_id": "1", "api_key": "k"}
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"target": [{**target, "base_url": url}]}, "syncd.toml", env={}, providers=PROVIDERS
        )
    (problem,) = caught.value.problems
    assert problem.startswith("target[0]") and "base_url" in problem
    assert "https://" in problem


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8765/en/api",
        "http://127.3.4.5/en/api",
        "http://[::1]:8765/en/api",
        "http://localhost:8765/en/api",
        "https://api.unisender.com/en/api",
        None,  # the provider's own https:// address
    ],
)
def test_rule7_https_or_loopback_http_is_accepted(url: str | None):
    target = {"name": "news", "provider": "unisender", "list_id": "1", "api_key": "k"}
    config = parse_config(
        {"target": [{**target, "base_url": url}]}, "syncd.toml", env={}, providers=PROVIDERS
    )
    assert config.target[0].api_root.startswith(
        ("https://", "http://127.", "http://[::1]", "http://localhost")
    )


# Rule 8 -----------------------------------------------------------------------------------


def test_rule8_an_invalid_config_lists_every_problem_with_its_key():
    data = {
        "store": {"url": 5},
        "target": [
            {"name": "a", "provider": "mailfoo", "list_id": "1", "api_key": "${NOPE_NOT_SET}"},
            {"name": "a", "provider": "unisender", "list_id": "1", "api_key": "k", "colour": "red"},
        ],
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "syncd.toml", env={}, providers=PROVIDERS)
    text = str(exc.value)
    for needle in (
        "syncd.toml",
        "store.url",
        "target[0].provider",
        "NOPE_NOT_SET",
        "target[1].colour",
    ):
        assert needle in text


def test_rule8_duplicate_target_names_are_refused():
    t = {"provider": "unisender", "list_id": "1", "api_key": "k"}
    with pytest.raises(ConfigError, match="duplicate target name"):
        parse_config(
            {"target": [{"name": "a", **t}, {"name": "a", **t}]}, "f", env={}, providers=PROVIDERS
        )


def test_rule8_bad_rows_are_reported_with_line_and_reason_and_good_rows_apply(world: World):
    report = world.ingest(
        [
            {"email": "good@example.com", "lists": ["news"]},
            {"email": "not-an-email", "lists": ["news"]},
            {"phone": "12", "lists": ["news"]},
            {"email": "other@example.com", "status": "maybe"},
        ]
    )
    assert report["created"] == 1
    assert [r["line"] for r in report["rejected"]] == [2, 3, 4]
    assert all(r["reason"] for r in report["rejected"])


def test_rule7_the_status_listener_binds_loopback_by_default():
    host, _port = parse_config({}, "syncd.toml", env={}, providers=PROVIDERS).http.address()
    assert is_loopback_host(host)
