"""The change-event outbox: event building, hourly NDJSON files, crash safety, the schema."""

from __future__ import annotations

import json
import stat
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import postgresql_schema
from sqlalchemy import func, make_url, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from syncd.cli import main
from syncd.core.projection import Projection, RemoteChange
from syncd.local import outbox
from syncd.local.change_event import ChangeEvent, event_schema
from syncd.local.outbox import flush, record
from syncd.store import open_engine
from syncd.store.models import OutboxEvent

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "change-event.schema.json"
T0 = datetime(2025, 3, 9, 14, 59, 58, tzinfo=UTC)
KEY = "ann@example.com"


def proj(
    status: str = "active", tags: tuple[str, ...] = (), list_status: str = "active", **fields: str
) -> Projection:
    return Projection.build(KEY, fields, tags, status, list_status)


def event(
    before: Projection | None,
    after: Projection | None,
    now: datetime = T0,
    list_name: str | None = None,
) -> ChangeEvent:
    change = RemoteChange("news", KEY, "pull", before, after)
    return ChangeEvent.from_remote_change(change, "unisender", "c0ffee", now, list_name)


def dumped(e: ChangeEvent) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(e.model_dump_json())
    return data


# -- building events ------------------------------------------------------------------------


def test_signup_carries_every_field_as_new() -> None:
    e = dumped(event(None, proj(tags=("vip",), Name="Ann", City="Oslo")))
    assert e["kind"] == "signup"
    assert e["changes"] == {
        "City": {"before": None, "after": "Oslo"},
        "Name": {"before": None, "after": "Ann"},
        "tags": {"before": [], "after": ["vip"]},
        "status": {"before": None, "after": "active"},
        "list_status": {"before": None, "after": "active"},
    }
    assert e["before"] is None
    assert e["after"] == {
        "fields": {"City": "Oslo", "Name": "Ann"},
        "tags": ["vip"],
        "status": "active",
        "list_status": "active",
    }


def test_update_lists_only_what_changed() -> None:
    e = dumped(event(proj(Name="Ann", City="Oslo"), proj(Name="Ann", City="Bergen", Zip="5003")))
    assert e["kind"] == "update"
    assert e["changes"] == {
        "City": {"before": "Oslo", "after": "Bergen"},
        "Zip": {"before": None, "after": "5003"},
    }


def test_cleared_field_and_tags_only_edit_are_updates() -> None:
    e = dumped(event(proj(tags=("a",), Name="Ann"), proj(tags=("b", "a"))))
    assert e["kind"] == "update"
    assert e["changes"] == {
        "Name": {"before": "Ann", "after": None},
        "tags": {"before": ["a"], "after": ["a", "b"]},
    }


@pytest.mark.parametrize(
    ("before", "after", "kind"),
    [
        ("active", "unsubscribed", "unsubscribe"),
        ("active", "blocked", "block"),
        ("blocked", "unsubscribed", "unsubscribe"),
        ("unsubscribed", "blocked", "block"),
        ("unsubscribed", "active", "resubscribe"),
        ("blocked", "active", "resubscribe"),
    ],
)
def test_status_changes_name_the_kind(before: str, after: str, kind: str) -> None:
    e = dumped(event(proj(before, Name="Ann"), proj(after, Name="Ann")))
    assert e["kind"] == kind
    # opted out as a whole is unsubscribed from the list too (Projection.build)
    lists = {s: "active" if s == "active" else "unsubscribed" for s in (before, after)}
    assert e["changes"] == {
        "status": {"before": before, "after": after},
        **(
            {"list_status": {"before": lists[before], "after": lists[after]}}
            if len({*lists.values()}) == 2
            else {}
        ),
    }


def test_consent_outranks_signup_and_edits() -> None:
    # a consumer acting only on unsubscribes must not miss one hidden in a signup or an edit
    assert event(None, proj("unsubscribed")).kind == "unsubscribe"
    assert event(None, proj("blocked")).kind == "block"
    e = dumped(event(proj(Name="Ann"), proj("unsubscribed", Name="Anne")))
    assert e["kind"] == "unsubscribe"
    assert set(e["changes"]) == {"Name", "status", "list_status"}


def test_remote_delete() -> None:
    e = dumped(event(proj("unsubscribed", tags=("x",), Name="Ann"), None))
    assert e["kind"] == "delete"
    assert e["after"] is None
    assert e["changes"] == {
        "Name": {"before": "Ann", "after": None},
        "tags": {"before": ["x"], "after": []},
        "status": {"before": "unsubscribed", "after": None},
        "list_status": {"before": "unsubscribed", "after": None},
    }


# -- consent per list -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "kind"),
    [
        (("active", "active"), ("active", "unsubscribed"), "list_unsubscribe"),
        (("active", "unsubscribed"), ("active", "active"), "list_resubscribe"),
        # the contact's own status outranks its list; an opt-out outranks an opt-in
        (("active", "active"), ("unsubscribed", "unsubscribed"), "unsubscribe"),
        (("active", "unsubscribed"), ("blocked", "active"), "block"),
        # opted out as a whole is unsubscribed from the list too: only the address changes here
        (("unsubscribed", "unsubscribed"), ("active", "unsubscribed"), "resubscribe"),
        (("unsubscribed", "unsubscribed"), ("active", "active"), "resubscribe"),
        (("active", "unsubscribed"), ("unsubscribed", "unsubscribed"), "unsubscribe"),
        (("active", "unsubscribed"), ("blocked", "unsubscribed"), "block"),
    ],
)
def test_list_status_changes_name_the_kind(
    before: tuple[str, str], after: tuple[str, str], kind: str
) -> None:
    old, new = proj(before[0], list_status=before[1]), proj(after[0], list_status=after[1])
    e = dumped(event(old, new))
    assert e["kind"] == kind
    expected = {}
    if old.status != new.status:
        expected["status"] = {"before": old.status, "after": new.status}
    if old.list_status != new.list_status:
        expected["list_status"] = {"before": old.list_status, "after": new.list_status}
    assert e["changes"] == expected
    assert (e["before"]["list_status"], e["after"]["list_status"]) == (
        old.list_status,
        new.list_status,
    )


def test_a_list_opt_out_outranks_signup_and_edits() -> None:
    e = dumped(event(None, proj(list_status="unsubscribed", Name="Ann")))
    assert e["kind"] == "list_unsubscribe"
    assert e["changes"]["list_status"] == {"before": None, "after": "unsubscribed"}
    e = dumped(event(proj(Name="Ann"), proj(list_status="unsubscribed", Name="Anne")))
    assert e["kind"] == "list_unsubscribe"
    assert set(e["changes"]) == {"Name", "list_status"}
    # a removal at the provider is a delete, whatever the list status was
    assert event(proj(list_status="unsubscribed"), None).kind == "delete"


def test_a_field_named_list_status_does_not_shadow_the_contacts_own() -> None:
    after = Projection.build(KEY, {"list_status": "1", "tags": "2"})
    e = dumped(event(proj(list_status="unsubscribed"), after))
    assert e["changes"] == {"list_status": {"before": "unsubscribed", "after": "active"}}
    assert e["after"]["fields"] == {"list_status": "1", "tags": "2"}


def test_the_local_list_is_written_when_the_recorder_knows_it() -> None:
    known = dumped(event(None, proj(), list_name="newsletter"))
    assert known["list"] == "newsletter"
    assert list(known)[:4] == ["id", "time", "target", "list"]
    assert "list" not in dumped(event(None, proj()))  # absent, never null
    again = ChangeEvent.model_validate_json(json.dumps(known))
    assert again.list_name == "newsletter" and dumped(again) == known


def test_the_recorder_writes_the_list_of_its_target(db: Engine) -> None:
    record_change = outbox.recorder("unisender", "c0ffee", list_name="newsletter")
    with Session(db) as session:
        change = RemoteChange("news", KEY, "pull", proj(), proj(list_status="unsubscribed"))
        record_change(session, change)
        session.commit()
    with Session(db) as session:
        (body,) = session.execute(select(OutboxEvent.body)).scalars().all()
    line = json.loads(body)
    assert (line["list"], line["kind"]) == ("newsletter", "list_unsubscribe")
    assert line["after"]["list_status"] == "unsubscribed"


def test_an_event_written_before_list_consent_is_still_read() -> None:
    old = (
        '{"id":"2b3c4d5e6f708192a3b4c5d6e7f8091a","time":"2025-01-15T09:12:05Z",'
        '"target":"newsletter","provider":"unisender","key":"boris@example.org",'
        '"kind":"unsubscribe","changes":{"status":{"before":"active","after":"unsubscribed"}},'
        '"before":{"fields":{},"tags":[],"status":"active"},'
        '"after":{"fields":{},"tags":[],"status":"unsubscribed"},"cycle":"5f0c1a2b3c4d"}'
    )
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(json.loads(old))
    event_ = ChangeEvent.model_validate_json(old)
    assert event_.after is not None and event_.after.list_status == "active"
    assert event_.list_name is None


def test_identity_time_and_round_trip() -> None:
    a, b = event(None, proj()), event(None, proj())
    assert a.id != b.id and len(a.id) == 32
    assert a.time == "2025-03-09T14:59:58Z" and a.hour == "2025-03-09T14"
    assert (a.target, a.provider, a.key, a.cycle) == ("news", "unisender", KEY, "c0ffee")
    naive = event(None, proj(), now=datetime(2025, 3, 9, 14, 0, 0))
    assert naive.time == "2025-03-09T14:00:00Z"  # naive means UTC, not the host's zone
    oslo = event(None, proj(), now=datetime(2025, 3, 9, 15, 0, tzinfo=timezone(timedelta(hours=1))))
    assert oslo.time == "2025-03-09T14:00:00Z"
    again = ChangeEvent.model_validate_json(a.model_dump_json())
    assert again.model_dump_json() == a.model_dump_json()
    with pytest.raises(ValueError):
        event(None, None)


# -- flushing -------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Engine:
    engine = open_engine(f"sqlite:///{tmp_path / 'syncd.db'}")
    outbox.ensure_table(engine)  # idempotent beside open_engine's create_all
    return engine


def put(db: Engine, *events: ChangeEvent) -> None:
    with Session(db) as session:
        for e in events:
            record(session, e)
        session.commit()


def pending(db: Engine) -> int:
    with Session(db) as session:
        return session.scalar(select(func.count()).select_from(OutboxEvent)) or 0


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_record_rolls_back_with_the_callers_transaction(db: Engine) -> None:
    with Session(db) as session:
        record(session, event(None, proj()))
        session.rollback()
    assert pending(db) == 0


def test_flush_writes_one_owner_only_file_per_hour(db: Engine, tmp_path: Path) -> None:
    first = event(None, proj(Name="Ann"))  # 14:59:58
    second = event(proj(Name="Ann"), proj("unsubscribed", Name="Ann"), T0 + timedelta(seconds=1))
    third = event(proj("unsubscribed"), None, T0 + timedelta(seconds=3))  # 15:00:01
    put(db, first, second, third)
    folder = tmp_path / "out" / "box"

    assert flush(db, folder) == 3

    assert sorted(p.name for p in folder.glob("changes-*")) == [
        "changes-2025-03-09T14.ndjson",
        "changes-2025-03-09T15.ndjson",
    ]
    assert [e["id"] for e in lines(folder / "changes-2025-03-09T14.ndjson")] == [
        first.id,
        second.id,
    ]
    assert [e["id"] for e in lines(folder / "changes-2025-03-09T15.ndjson")] == [third.id]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    assert not list(folder.glob(".changes-*.tmp"))
    assert pending(db) == 0


def test_second_flush_without_new_events_writes_nothing(db: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    assert flush(db, folder) == 0
    assert not folder.exists()  # nothing pending: not even the folder is touched
    put(db, event(None, proj()))
    assert flush(db, folder) == 1
    file = folder / "changes-2025-03-09T14.ndjson"
    before = (file.read_bytes(), file.stat().st_ino, file.stat().st_mtime_ns)
    assert flush(db, folder) == 0
    assert (file.read_bytes(), file.stat().st_ino, file.stat().st_mtime_ns) == before


def test_later_flush_appends_to_the_hours_file(db: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    a, b = event(None, proj()), event(None, proj(), T0 + timedelta(seconds=1))
    put(db, a)
    flush(db, folder)
    put(db, b)
    assert flush(db, folder) == 1
    assert [e["id"] for e in lines(folder / "changes-2025-03-09T14.ndjson")] == [a.id, b.id]


def test_crash_between_rename_and_delete_duplicates_nothing(
    db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "outbox"
    a, b = event(None, proj()), event(proj(), None)
    put(db, a, b)

    def crash(*_: object) -> None:
        raise RuntimeError("killed after the rename")

    with monkeypatch.context() as m:
        m.setattr(outbox, "_forget", crash)
        with pytest.raises(RuntimeError):
            flush(db, folder)
    file = folder / "changes-2025-03-09T14.ndjson"
    assert [e["id"] for e in lines(file)] == [a.id, b.id]
    assert pending(db) == 2  # the rows outlived the rename

    c = event(None, proj(), T0 + timedelta(seconds=1))
    put(db, c)
    assert flush(db, folder) == 1  # only the new one
    assert [e["id"] for e in lines(file)] == [a.id, b.id, c.id]
    assert pending(db) == 0


def test_foreign_lines_in_the_file_are_kept(db: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    folder.mkdir(mode=0o700)
    file = folder / "changes-2025-03-09T14.ndjson"
    file.write_text('{"id": "x"}\nnot json')  # a damaged last line without its newline
    (folder / ".changes-2025-03-09T14.old.tmp").write_text("left by a crash")
    e = event(None, proj())
    put(db, e)
    assert flush(db, folder) == 1
    assert file.read_text().splitlines() == ['{"id": "x"}', "not json", e.model_dump_json()]
    assert not list(folder.glob(".changes-*.tmp"))


def test_two_threads_flushing_at_once_lose_and_repeat_nothing(db: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    events = [event(None, proj(), T0 + timedelta(seconds=i)) for i in range(40)]
    put(db, *events)
    start = threading.Barrier(2)
    written: list[int] = []

    def run() -> None:
        start.wait()
        written.append(flush(db, folder))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(written) == 40
    ids = [e["id"] for f in sorted(folder.glob("changes-*")) for e in lines(f)]
    assert ids == [e.id for e in events]


def test_rows_another_replica_is_flushing_are_not_written_twice(tmp_path: Path) -> None:
    """Replicas share one PostgreSQL outbox table and each flushes into its own folder: rows
    that one replica has claimed and not yet deleted are skipped by the other, not copied."""
    with postgresql_schema() as url:
        # a flush that took claimed rows would then wait on their locks: fail, do not hang
        options = make_url(url).query["options"]
        assert isinstance(options, str)
        db = open_engine(
            make_url(url)
            .update_query_dict({"options": f"{options} -clock_timeout=5s"})
            .render_as_string(hide_password=False)
        )
        a, b = event(None, proj()), event(proj(), None)
        put(db, a, b)
        with Session(db) as first:  # the first replica, between its claim and its delete
            claimed = first.execute(select(OutboxEvent).with_for_update()).all()
            assert len(claimed) == 2
            assert flush(db, tmp_path / "second") == 0
            assert not list((tmp_path / "second").glob("changes-*"))
            first.rollback()  # it died before its delete: the rows are free again
        assert flush(db, tmp_path / "second") == 2
        assert pending(db) == 0
        db.dispose()


# -- the schema -----------------------------------------------------------------------------


def test_every_written_line_validates_against_the_schema(db: Engine, tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    put(
        db,
        event(None, proj(tags=("vip",), Name="Ann")),
        event(proj(Name="Ann"), proj(Name="Anne", City="Oslo")),
        event(proj(), proj("unsubscribed")),
        event(proj(), proj("blocked")),
        event(proj("blocked"), proj()),
        event(proj(tags=("a",)), None, T0 + timedelta(hours=1)),
        event(proj(), proj(list_status="unsubscribed"), list_name="newsletter"),
        event(proj(list_status="unsubscribed"), proj(), list_name="newsletter"),
    )
    folder = tmp_path / "outbox"
    assert flush(db, folder) == 8
    kinds = set()
    for file in folder.glob("changes-*.ndjson"):
        for line in lines(file):
            validator.validate(line)
            kinds.add(line["kind"])
    assert kinds == {
        "signup",
        "update",
        "unsubscribe",
        "block",
        "resubscribe",
        "delete",
        "list_unsubscribe",
        "list_resubscribe",
    }
    # and the schema does reject what is not an event
    bad = {**lines(folder / "changes-2025-03-09T14.ndjson")[0], "kind": "moved"}
    assert not validator.is_valid(bad)
    assert not validator.is_valid({**bad, "kind": "update", "changes": {"tags": None}})
    assert not validator.is_valid({**bad, "list": None})  # absent when unknown, never null
    gone = {**bad, "after": {**bad["after"], "list_status": "blocked"}}
    assert not validator.is_valid(gone)  # blocking is the contact's, never one list's


def test_checked_in_schema_matches_the_model() -> None:
    checked_in = json.loads(SCHEMA_FILE.read_text())
    assert checked_in == event_schema(), (
        "schemas/change-event.schema.json is stale: syncd schemas write"
    )
    shown = CliRunner().invoke(main, ["schemas", "show", "change-event"])
    assert shown.exit_code == 0
    assert json.loads(shown.output) == checked_in
