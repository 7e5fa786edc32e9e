"""The watched inbox: real files, a real watchdog observer, a real SQLite mirror in tmp_path."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from syncd.config import Config, parse_config
from syncd.local.inbox import Inbox
from syncd.local.inbox import ledger as ledger_module
from syncd.local.inbox.ledger import Ledger
from syncd.local.ingest import ingest_file
from syncd.providers import PROVIDERS
from syncd.store import open_engine
from syncd.store.models import IngestedFile

HEADER = "email,name,city,lists\n"


class Box:
    """An inbox over a fresh mirror, recording what it reports."""

    def __init__(self, tmp_path: Path, debounce: float = 0.05, **target: Any) -> None:
        self.tmp = tmp_path
        self.folder = tmp_path / "inbox"
        self.config = make_config(tmp_path, debounce, **target)
        self.db: Engine = open_engine(self.config.store.url)
        self.applied: list[set[str]] = []
        self.metrics: list[str] = []
        self.inbox = self.new_inbox()

    def new_inbox(self) -> Inbox:
        """A fresh Inbox over the same folder and store: what a restarted daemon builds."""
        # settle=0: these tests scan files they have just written and closed
        return Inbox(self.db, self.config, self.applied.append, self.metrics.append, settle=0)

    def drop(self, name: str, content: str) -> Path:
        """Written beside under a .tmp name, then renamed in."""
        tmp = self.folder / f"{name}.tmp"
        tmp.write_text(content, encoding="utf-8")
        return tmp.rename(self.folder / name)

    def report(self, where: str, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.folder / where / f"{name}.report.json").read_text(encoding="utf-8")
        )
        return data

    def sql(self, query: str) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(text(query)).all())

    def members(self, list_name: str) -> set[str]:
        rows = self.sql(
            "SELECT c.email FROM membership m JOIN contact c ON c.id = m.contact_id "
            f"WHERE m.list_name = '{list_name}'"
        )
        return {r[0] for r in rows}

    def field(self, email: str, name: str) -> Any:
        (row,) = self.sql(f"SELECT fields FROM contact WHERE email = '{email}'")
        return json.loads(row[0]).get(name)

    def contacts(self) -> int:
        return int(self.sql("SELECT count(*) FROM contact")[0][0])

    def ledger(self) -> list[Any]:
        return self.sql("SELECT sha256, name, settled_at FROM ingested_file")

    def seed(self, content: str) -> None:
        """Put contacts in the mirror without the inbox."""
        path = self.tmp / f"seed-{time.monotonic_ns()}.csv"
        path.write_text(content, encoding="utf-8")
        ingest_file(self.db, path, self.config.ingest)


def make_config(tmp_path: Path, debounce: float, **target: Any) -> Config:
    base = {
        "name": "news",
        "provider": "unisender",
        "list_id": "1",
        "local_list": "news",
        "api_key": "k",
        **target,
    }
    return parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 's.db'}"},
            "inbox": {"path": str(tmp_path / "inbox")},
            "daemon": {"debounce": debounce},
            "target": [base],
        },
        "test",
        env={},
        providers=PROVIDERS,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


def settle(seconds: float = 0.25) -> None:
    """A short quiet period, long against the tests' debounce, to show nothing else happens."""
    time.sleep(seconds)


def people(start: int, n: int, lists: str = "news", city: str = "Minsk") -> str:
    return HEADER + "".join(
        f"u{i}@example.com,User {i},{city},{lists}\n" for i in range(start, start + n)
    )


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path)
    yield b
    b.inbox.stop()


@pytest.fixture
def watching(box: Box) -> Box:
    box.inbox.start()
    return box


# --------------------------------------------------------------------------------------------
# Watching


def test_file_renamed_into_the_inbox_is_ingested_once(watching: Box) -> None:
    (watching.folder / "partial.csv.part").write_text(people(50, 1))
    (watching.folder / ".hidden.csv").write_text(people(51, 1))
    (watching.folder / "sub").mkdir()
    (watching.folder / "sub" / "nested.csv").write_text(people(52, 1))

    watching.drop("a.csv", people(0, 3))

    wait_for(lambda: watching.metrics == ["processed"])
    settle()
    assert watching.metrics == ["processed"]
    assert watching.applied == [{"news"}]
    report = watching.report("processed", "a.csv")
    assert (report["file"], report["rows"], report["created"]) == ("a.csv", 3, 3)
    assert report["rejected"] == [] and "ingested_at" in report
    assert watching.contacts() == 3
    assert sorted(p.name for p in (watching.folder / "processed").iterdir()) == [
        "a.csv",
        "a.csv.report.json",
    ]
    # partial, hidden and nested files are not touched
    assert (watching.folder / "partial.csv.part").exists()
    assert (watching.folder / ".hidden.csv").exists()
    assert (watching.folder / "sub" / "nested.csv").exists()
    ((_, name, settled_at),) = watching.ledger()
    assert name == "a.csv" and settled_at is not None


def test_file_moved_in_from_another_folder_is_ingested(watching: Box) -> None:
    outside = watching.tmp / "elsewhere.ndjson"
    outside.write_text(json.dumps({"email": "moved@example.com", "lists": ["news"]}) + "\n")
    outside.rename(watching.folder / "moved.ndjson")
    wait_for(lambda: watching.metrics == ["processed"])
    assert watching.report("processed", "moved.ndjson")["created"] == 1


def test_file_written_slowly_is_taken_whole_once_closed(watching: Box) -> None:
    content = people(0, 40)
    half = len(content) // 2
    with (watching.folder / "slow.csv").open("w", encoding="utf-8") as f:
        f.write(content[:half])
        f.flush()
        os.fsync(f.fileno())
        time.sleep(0.3)  # several debounce periods with a half-written file in the inbox
        assert not (watching.folder / "processed" / "slow.csv").exists()
        assert watching.metrics == []
        f.write(content[half:])

    wait_for(lambda: watching.metrics == ["processed"])
    settle()
    report = watching.report("processed", "slow.csv")
    assert (report["rows"], report["created"], report["rejected"]) == (40, 40, [])
    assert watching.metrics == ["processed"]
    assert watching.contacts() == 40


def test_malformed_file_lands_in_failed_with_the_reason(watching: Box) -> None:
    watching.drop("broken.csv", 'email,name\n"unterminated,quote\n')
    watching.drop("notjson.ndjson", "this is not json\n")

    wait_for(lambda: len(watching.metrics) == 2)
    assert watching.metrics == ["failed", "failed"]
    assert watching.applied == []  # nothing applied: no sync to trigger
    broken = watching.report("failed", "broken.csv")
    assert "not valid CSV" in broken["error"] and broken["rows"] == 0
    notjson = watching.report("failed", "notjson.ndjson")
    assert "is not JSON" in notjson["error"]
    assert (watching.folder / "failed" / "broken.csv").exists()
    assert not list(watching.folder.glob("*.csv"))
    assert watching.contacts() == 0 and watching.ledger() == []


def test_file_with_some_bad_rows_is_processed_with_the_bad_rows_listed(watching: Box) -> None:
    watching.drop(
        "mixed.csv",
        HEADER
        + "good1@example.com,G1,Minsk,news\n"  # line 2
        + "not-an-email,X,Minsk,news\n"  # line 3
        + "good2@example.com,G2,Minsk,news\n"  # line 4
        + "good1@example.com,Dup,Minsk,news\n",  # line 5: key already on line 2
    )
    wait_for(lambda: (watching.folder / "processed" / "mixed.csv.report.json").exists())
    report = watching.report("processed", "mixed.csv")
    assert (report["rows"], report["created"]) == (4, 2)
    assert [r["line"] for r in report["rejected"]] == [3, 5]
    assert "already on line 2" in report["rejected"][1]["reason"]
    assert "error" not in report
    assert watching.members("news") == {"good1@example.com", "good2@example.com"}


def test_file_whose_every_row_is_rejected_lands_in_failed(watching: Box) -> None:
    watching.drop("allbad.csv", HEADER + "nope,A,Minsk,news\nalso-nope,B,Minsk,news\n")
    wait_for(lambda: watching.metrics == ["failed"])
    report = watching.report("failed", "allbad.csv")
    assert "all 2 rows were rejected" in report["error"]
    assert [r["line"] for r in report["rejected"]] == [2, 3]
    assert watching.ledger() == []


def test_a_burst_of_files_gives_one_on_applied_call(tmp_path: Path) -> None:
    # a debounce long against the five drops, so a loaded machine still sees one burst
    box = Box(tmp_path, debounce=1.0)
    box.inbox.start()
    try:
        for i in range(5):
            box.drop(f"burst-{i}.csv", people(i * 10, 3, lists=f"list{i}"))
        wait_for(lambda: len(box.metrics) == 5)
        settle(1.2)
        assert box.metrics == ["processed"] * 5
        assert box.applied == [{f"list{i}" for i in range(5)}]
        assert box.contacts() == 15
    finally:
        box.inbox.stop()


def test_errors_in_callbacks_do_not_stop_the_watcher(box: Box) -> None:
    def explode(_lists: set[str]) -> None:
        raise RuntimeError("callback bug")

    box.inbox.stop()
    box.inbox = Inbox(box.db, box.config, explode, box.metrics.append, settle=0)
    box.inbox.start()
    box.drop("one.csv", people(0, 1))
    wait_for(lambda: box.metrics == ["processed"])
    box.drop("two.csv", people(1, 1))
    wait_for(lambda: box.metrics == ["processed", "processed"])


# --------------------------------------------------------------------------------------------
# Scanning at start


def test_scan_takes_files_waiting_at_start_oldest_first(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    now = time.time()
    # names sort the other way round from age: the newest write must win
    for name, city, age in (
        ("a.csv", "Newest", 10),
        ("b.csv", "Middle", 20),
        ("c.csv", "Oldest", 30),
    ):
        path = folder / name
        path.write_text(HEADER + f"same@example.com,Same,{city},news\n", encoding="utf-8")
        os.utime(path, (now - age, now - age))
    (folder / "waiting.csv.tmp").write_text(people(9, 1))

    box = Box(tmp_path)  # creates processed/ and failed/
    assert (folder / "processed").is_dir() and (folder / "failed").is_dir()
    outcomes = box.inbox.scan()

    assert [o.name for o in outcomes] == ["c.csv", "b.csv", "a.csv"]
    assert box.field("same@example.com", "city") == "Newest"
    assert box.applied == [{"news"}]
    assert box.metrics == ["processed"] * 3
    assert (folder / "waiting.csv.tmp").exists()


def test_inbox_folder_is_created_when_missing(tmp_path: Path) -> None:
    box = Box(tmp_path)
    assert (tmp_path / "inbox" / "processed").is_dir()
    assert (tmp_path / "inbox" / "failed").is_dir()
    assert box.inbox.scan() == [] and box.applied == []


def test_name_clash_in_processed_gets_a_numeric_suffix(box: Box) -> None:
    box.drop("same.csv", people(0, 1))
    box.inbox.scan()
    box.drop("same.csv", people(1, 1))
    box.inbox.scan()
    processed = box.folder / "processed"
    assert sorted(p.name for p in processed.iterdir()) == [
        "same-1.csv",
        "same-1.csv.report.json",
        "same.csv",
        "same.csv.report.json",
    ]
    assert "u0@example.com" in (processed / "same.csv").read_text()
    assert "u1@example.com" in (processed / "same-1.csv").read_text()


# --------------------------------------------------------------------------------------------
# Exactly once across crashes


class SimulatedCrash(BaseException):
    """Escapes every ``except Exception``, as a SIGKILL would stop everything at that point."""


def scan_crashing_in(box: Box, monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
    """One scan of the inbox that stops dead where it calls ``owner.name``."""

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise SimulatedCrash

    with monkeypatch.context() as m:
        m.setattr(owner, name, crash)
        with pytest.raises(SimulatedCrash):
            box.inbox.scan()


def test_ledger_stops_a_reapply_after_a_crash_between_commit_and_move(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    box.drop("crm.csv", people(0, 2, city="Minsk"))

    scan_crashing_in(box, monkeypatch, Ledger, "finish")
    # committed with its ledger row, never moved
    assert (box.folder / "crm.csv").exists()
    ((_, name, settled),) = box.ledger()
    assert (name, settled) == ("crm.csv", None)
    assert box.field("u0@example.com", "city") == "Minsk"

    # meanwhile someone else edits a contact the file set
    box.seed(HEADER + "u0@example.com,User 0,Brest,news\n")

    restarted = box.new_inbox()
    (outcome,) = restarted.scan()
    assert outcome.recovered and outcome.status == "processed"
    assert box.field("u0@example.com", "city") == "Brest"  # not applied a second time
    report = box.report("processed", "crm.csv")
    assert report["recovered"] is True and report["created"] == 2
    assert box.applied == [{"news"}]
    assert box.ledger()[0][2] is not None  # settled
    assert not (box.folder / "crm.csv").exists()

    # identical content dropped again later is a new delivery and applies again
    box.drop("crm.csv", people(0, 2, city="Minsk"))
    (again,) = restarted.scan()
    assert not again.recovered
    assert box.field("u0@example.com", "city") == "Minsk"
    assert (box.folder / "processed" / "crm-1.csv").exists()


def test_crash_after_the_move_gets_its_report_written_at_start(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    box.drop("late.csv", people(0, 3))

    scan_crashing_in(box, monkeypatch, ledger_module, "_write_json")
    assert (box.folder / "processed" / "late.csv").exists()
    assert not (box.folder / "processed" / "late.csv.report.json").exists()

    assert box.new_inbox().scan() == []
    report = box.report("processed", "late.csv")
    assert report["created"] == 3 and report["recovered"] is True
    assert box.ledger()[0][2] is not None
    assert box.contacts() == 3


def test_ledger_table_is_created_by_the_inbox(tmp_path: Path) -> None:
    box = Box(tmp_path)
    assert box.ledger() == []
    assert IngestedFile.__tablename__ == "ingested_file"


# --------------------------------------------------------------------------------------------
# Snapshots


def test_snapshot_replaces_the_membership_of_its_list(box: Box) -> None:
    box.seed(
        HEADER
        + "a@example.com,A,Minsk,news\n"
        + "b@example.com,B,Minsk,news\n"
        + 'c@example.com,C,Minsk,"news,vip"\n'
        + "d@example.com,D,Minsk,other\n"
        + "f@example.com,F,Minsk,news\n"
    )
    box.drop(
        "news.snapshot.csv",
        "email,city,status\n"
        "b@example.com,Brest,\n"
        "c@example.com,Minsk,\n"
        "e@example.com,Gomel,\n"
        "f@example.com,Minsk,bogus\n",  # a bad row: no statement that f@ left the list
    )
    (outcome,) = box.inbox.scan()

    assert outcome.status == "processed"
    assert box.members("news") == {
        "b@example.com",
        "c@example.com",
        "e@example.com",
        "f@example.com",
    }
    assert box.members("vip") == {"c@example.com"}  # other lists of a named contact stay
    assert box.members("other") == {"d@example.com"}
    assert box.contacts() == 6  # a@ left the list, not the mirror
    assert box.field("b@example.com", "city") == "Brest"
    report = box.report("processed", "news.snapshot.csv")
    assert report["snapshot"] == {"list": "news", "removed": 1}
    assert (report["created"], report["updated"], report["unchanged"]) == (1, 1, 1)
    assert [(r["line"], r["key"]) for r in report["rejected"]] == [(5, "f@example.com")]
    assert box.applied == [{"news", "vip"}]


def test_snapshot_over_the_mass_delete_guard_is_refused_whole(box: Box) -> None:
    box.seed(people(0, 20))
    box.drop(
        "news.snapshot.ndjson",
        json.dumps({"email": "u0@example.com", "city": "Changed"})
        + "\n"
        + json.dumps({"email": "new@example.com"})
        + "\n",
    )
    (outcome,) = box.inbox.scan()

    assert outcome.status == "failed"
    report = box.report("failed", "news.snapshot.ndjson")
    assert "mass-delete guard" in report["error"] and "19 of the 20" in report["error"]
    assert report["snapshot"] == {"list": "news", "removed": 0, "would_remove": 19}
    # nothing applied: neither the removals nor the rows
    assert len(box.members("news")) == 20
    assert box.field("u0@example.com", "city") == "Minsk"
    assert box.sql("SELECT count(*) FROM contact WHERE email = 'new@example.com'")[0][0] == 0
    assert box.ledger() == []
    assert box.metrics == ["failed"] and box.applied == []


def test_snapshot_guard_follows_the_target_setting(tmp_path: Path) -> None:
    box = Box(tmp_path, max_delete_fraction=1.0)
    box.seed(people(0, 20))
    box.drop("news.snapshot.csv", people(0, 1))
    (outcome,) = box.inbox.scan()
    assert outcome.status == "processed"
    assert box.members("news") == {"u0@example.com"}
    assert box.contacts() == 20


def test_start_up_scan_leaves_a_file_still_being_written_to_its_close_event(tmp_path):
    box = Box(tmp_path)
    box.inbox = Inbox(box.db, box.config, box.applied.append, box.metrics.append, settle=0.5)
    box.inbox.start()
    try:
        with (box.folder / "growing.csv").open("w", encoding="utf-8") as f:
            f.write("email,lists\na@example.com,news\n")
            f.flush()
            assert box.inbox.scan() == []  # fresh: not taken half-written
            f.write("b@example.com,news\n")
        report_path = box.folder / "processed" / "growing.csv.report.json"
        wait_for(report_path.exists, what="the report in processed/")
        report = json.loads(report_path.read_text())
        assert report["created"] == 2
    finally:
        box.inbox.stop()


# --------------------------------------------------------------------------------------------
# What else can be dropped in: FIFOs, links, long names; modes; a bounded stop


def _unblock(fifo: Path) -> None:
    """Keep giving a reader stuck on ``fifo`` its end of file for a while, so that a failing test
    cannot hang the run."""

    def keep_unblocking() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for place in (fifo, fifo.parent / "failed" / fifo.name):
                with contextlib.suppress(OSError):  # no reader (ENXIO) or not there
                    os.close(os.open(place, os.O_WRONLY | os.O_NONBLOCK))
            time.sleep(0.05)

    threading.Thread(target=keep_unblocking, daemon=True).start()


def test_a_fifo_renamed_in_goes_to_failed_and_the_next_file_is_taken(watching: Box) -> None:
    fifo = watching.tmp / "pipe.csv"
    os.mkfifo(fifo)
    fifo.rename(watching.folder / "pipe.csv")
    try:
        watching.drop("good.csv", people(0, 3))
        wait_for(lambda: watching.contacts() == 3, what="the file after the FIFO")
        wait_for(lambda: watching.metrics.count("failed") == 1, what="the FIFO set aside")
    finally:
        _unblock(watching.folder / "pipe.csv")
    assert not os.path.lexists(watching.folder / "pipe.csv")
    assert stat.S_ISFIFO(os.lstat(watching.folder / "failed" / "pipe.csv").st_mode)
    assert "FIFO" in watching.report("failed", "pipe.csv")["error"]
    assert (watching.folder / "processed" / "good.csv").is_file()
    started = time.monotonic()
    assert watching.inbox.stop(timeout=5)
    assert time.monotonic() - started < 5


def test_the_start_up_scan_sets_a_fifo_aside_without_opening_it(box: Box) -> None:
    os.mkfifo(box.folder / "pipe.ndjson")
    box.drop("good.csv", people(0, 2))
    try:
        outcomes = box.inbox.scan()
    finally:
        _unblock(box.folder / "pipe.ndjson")
    assert sorted((o.name, o.status) for o in outcomes) == [
        ("good.csv", "processed"),
        ("pipe.ndjson", "failed"),
    ]
    assert box.contacts() == 2
    assert sorted(p.name for p in box.folder.iterdir()) == ["failed", "processed"]


def test_a_link_to_a_file_outside_the_inbox_is_refused_with_a_report(box: Box) -> None:
    outside = box.tmp / "secret.csv"
    outside.write_text(people(0, 4), encoding="utf-8")
    mode = stat.S_IMODE(outside.stat().st_mode)
    (box.folder / "link.csv").symlink_to(outside)
    (box.folder / "dangling.csv").symlink_to(box.tmp / "nowhere.csv")
    outcomes = box.inbox.scan()
    assert sorted((o.name, o.status) for o in outcomes) == [
        ("dangling.csv", "failed"),
        ("link.csv", "failed"),
    ]
    assert box.contacts() == 0 and box.applied == [] and box.ledger() == []
    assert "symbolic link" in box.report("failed", "link.csv")["error"]
    moved = box.folder / "failed" / "link.csv"
    assert moved.is_symlink() and os.readlink(moved) == str(outside)  # the link, not its target
    assert outside.read_text(encoding="utf-8") == people(0, 4)
    assert stat.S_IMODE(outside.stat().st_mode) == mode  # nothing reached through the link


def test_a_251_byte_name_is_applied_with_its_report_and_a_settled_ledger(box: Box) -> None:
    long_name = "a" * 247 + ".csv"
    other = "a" * 246 + "b.csv"  # same start: the shortened names must still differ
    box.drop(long_name, people(0, 2))
    box.drop(other, people(2, 1))
    outcomes = box.inbox.scan()
    assert [o.status for o in outcomes] == ["processed", "processed"]
    assert box.contacts() == 3
    assert [r[2] is not None for r in box.ledger()] == [True, True]
    processed = box.folder / "processed"
    reports = sorted(processed.glob("*.report.json"))
    assert len(reports) == 2
    files = {json.loads(r.read_text(encoding="utf-8"))["file"] for r in reports}
    assert files == {long_name, other}
    for report in reports:
        moved = processed / report.name.removesuffix(".report.json")
        assert moved.is_file() and moved.name.endswith(".csv")
        assert len(os.fsencode(report.name)) <= 255
    assert sorted(p.name for p in box.folder.iterdir()) == ["failed", "processed"]
    # the same long name again: a third, distinct pair
    box.drop(long_name, people(3, 1))
    assert [o.status for o in box.inbox.scan()] == ["processed"]
    assert len(list(processed.glob("*.report.json"))) == 3


def test_processed_and_failed_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        box = Box(tmp_path)
        box.drop("good.csv", people(0, 2))
        box.drop("bad.csv", "not,a\nheader with \0 nul\n")
        box.drop("empty.csv", HEADER)
        box.inbox.scan()
    finally:
        os.umask(old)
    for sub in ("processed", "failed"):
        folder = box.folder / sub
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, sub
        entries = list(folder.iterdir())
        assert entries, sub
        for entry in entries:
            assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry


def test_folders_made_by_an_earlier_version_become_owner_only(tmp_path: Path) -> None:
    for sub in ("processed", "failed"):
        (tmp_path / "inbox" / sub).mkdir(parents=True)
        (tmp_path / "inbox" / sub).chmod(0o755)
    box = Box(tmp_path)
    for sub in ("processed", "failed"):
        assert stat.S_IMODE((box.folder / sub).stat().st_mode) == 0o700


def test_stop_is_bounded_while_a_pass_is_stuck(tmp_path: Path) -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck(_lists: set[str]) -> None:
        entered.set()
        release.wait(30)

    box = Box(tmp_path)
    inbox = Inbox(box.db, box.config, stuck, settle=0)
    inbox.start()
    try:
        box.drop("good.csv", people(0, 1))
        assert entered.wait(5), "the pass never ran"
        started = time.monotonic()
        assert inbox.stop(timeout=0.5) is False
        assert time.monotonic() - started < 2
    finally:
        release.set()
    box.inbox.stop()


def test_a_link_made_in_place_in_a_watched_inbox_is_refused_at_once(watching: Box) -> None:
    outside = watching.tmp / "secret.csv"
    outside.write_text(people(0, 2), encoding="utf-8")
    (watching.folder / "link.csv").symlink_to(outside)
    os.mkfifo(watching.folder / "pipe.csv")
    wait_for(lambda: watching.metrics.count("failed") == 2, what="both set aside")
    assert watching.contacts() == 0
    assert "symbolic link" in watching.report("failed", "link.csv")["error"]
    assert "FIFO" in watching.report("failed", "pipe.csv")["error"]


def test_a_big_file_unreadable_near_its_end_lands_in_failed_with_nothing_applied(
    box: Box,
) -> None:
    # Rows stream into the transaction a chunk at a time: chunks were written before the bad
    # line was reached, and must roll back with the ledger row.
    content = people(0, 3_000) + "caf\xe9@example.com,Bad,Minsk,news\n"
    (box.folder / "late.csv").write_bytes(content.encode("latin-1"))
    (outcome,) = box.inbox.scan()

    assert outcome.status == "failed"
    report = box.report("failed", "late.csv")
    assert "line 3002 is not valid UTF-8" in report["error"] and report["rows"] == 0
    assert box.contacts() == 0 and box.ledger() == [] and box.applied == []


def test_a_snapshot_over_several_chunks_keeps_touched_and_protected_members(box: Box) -> None:
    box.seed(people(0, 2_600))
    rows = people(0, 2_500).splitlines()[1:]  # u2500..u2599 are not named: they leave
    rows[1_200] = "u1200@example.com,Bad,Minsk,news,x"  # a bad row keeps its contact on the list
    rows.append("u9000@example.com,New,Minsk,")  # joins the list
    box.drop("news.snapshot.csv", HEADER + "\n".join(rows) + "\n")
    (outcome,) = box.inbox.scan()

    assert outcome.status == "processed", outcome.report.get("error")
    report = box.report("processed", "news.snapshot.csv")
    assert report["snapshot"] == {"list": "news", "removed": 100}
    assert [r["line"] for r in report["rejected"]] == [1_202]
    members = box.members("news")
    assert len(members) == 2_501
    assert {"u1200@example.com", "u9000@example.com"} <= members
    assert "u2500@example.com" not in members
    assert box.sql("SELECT name FROM sqlite_temp_master") == []  # scratch tables dropped
