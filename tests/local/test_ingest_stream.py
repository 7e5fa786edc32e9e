"""Streaming ingest: a big file in bounded memory, still all or nothing, still by line.

The file is read, checked and written chunk by chunk inside one transaction
(``syncd.local.ingest.write.apply_stream``); these tests hold it to what the whole-file version
promised: rejections name their line (duplicates across chunks too), nothing applies when the
database or the reader fails after chunks were written, and memory does not grow with the file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from conftest import config_toml, run_syncd, syncd_env
from sqlalchemy import text
from sqlalchemy.engine import Engine

from syncd.collector import GC_YOUNG_THRESHOLD
from syncd.config import IngestConfig
from syncd.errors import IngestError
from syncd.local.ingest import ingest_file
from syncd.local.ingest import write as ingest_write
from syncd.local.ingest.check import checked, validate
from syncd.local.ingest.read import read_rows
from syncd.local.ingest.write import apply_stream
from syncd.store.db import open_engine

CONFIG = IngestConfig()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_engine(f"sqlite:///{tmp_path}/s.db")


def big_csv(path: Path, rows: int, bad_every: int = 0) -> Path:
    """``rows`` contacts on list ``news``; every ``bad_every``-th row has no usable email."""
    with path.open("w", encoding="utf-8") as out:
        out.write("email,name,city,lists\n")
        for i in range(rows):
            if bad_every and i % bad_every == bad_every - 1:
                out.write(f"not-an-email-{i},Bad {i},Minsk,news\n")
            else:
                out.write(f"user{i}@example.com,User {i},Minsk,news\n")
    return path


def table_counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        contacts = conn.execute(text("SELECT count(*) FROM contact")).scalar_one()
        members = conn.execute(text("SELECT count(*) FROM membership")).scalar_one()
    return int(contacts), int(members)


def test_a_big_file_ingests_in_memory_that_does_not_grow_with_it(
    engine: Engine, tmp_path: Path
) -> None:
    path = big_csv(tmp_path / "big.csv", 50_000, bad_every=20_000)
    tracemalloc.start()
    try:
        report = ingest_file(engine, path, CONFIG)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report.rows, report.created, len(report.rejected)) == (50_000, 49_998, 2)
    assert table_counts(engine) == (49_998, 49_998)
    # Holding the whole file's changes took ~40 MiB here; chunk by chunk it is ~3 MiB.
    assert peak < 15 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_rejections_keep_their_lines_across_chunks_duplicates_included(
    engine: Engine, tmp_path: Path
) -> None:
    lines = ["email,phone,status"]
    lines += [f"u{i}@example.com,,active" for i in range(10)]  # lines 2-11
    lines += [
        "u3@example.com,,active",  # 12: duplicate of line 5, three chunks later
        "bad-address,,active",  # 13
        "u20@example.com,+375291234567,sleeping",  # 14: claims its keys, then rejected
        "u21@example.com,+375291234567,active",  # 15: the phone line 14 claimed
        "u22@example.com,+375291234568,active",  # 16
    ]
    path = tmp_path / "dups.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    expected_changes, expected_rejections = validate(read_rows(path), CONFIG)
    report = apply_stream(engine, checked(read_rows(path), CONFIG), chunk_size=3)

    assert report.rejected == expected_rejections  # the whole-file checks, line for line
    assert [(r.line, r.reason.split(":")[0]) for r in report.rejected] == [
        (12, "duplicate email u3@example.com"),
        (13, "invalid email 'bad-address'"),
        (14, "unknown status 'sleeping' (expected active, unsubscribed or blocked)"),
        (15, "duplicate phone +375291234567"),
    ]
    assert "already on line 5" in report.rejected[0].reason
    assert "already on line 14" in report.rejected[3].reason
    assert report.created == len(expected_changes) == 11
    assert report.rows == 15


def test_a_duplicate_names_the_first_line_whether_that_row_created_a_contact_or_not(
    store_url: str, tmp_path: Path
) -> None:
    # Claims of the contacts a file creates are read back from the contacts themselves on
    # SQLite, the others (and all of them on PostgreSQL) from a scratch table: both give the line.
    engine = open_engine(store_url)
    seed = tmp_path / "seed.csv"
    seed.write_text("email,phone\nthere@example.com,\n", encoding="utf-8")
    ingest_file(engine, seed, CONFIG)
    path = tmp_path / "dups.csv"
    rows = [
        "there@example.com,,Minsk",  # 2: updates a contact that was there
        "new1@example.com,+375291111111,Minsk",  # 3: creates one with both keys
        "new2@example.com,,Minsk",  # 4
        "new3@example.com,,Minsk",  # 5
        "there@example.com,,Brest",  # 6: duplicate of line 2
        "other@example.com,+375291111111,Brest",  # 7: the phone line 3 created
        "new2@example.com,,Brest",  # 8: duplicate of line 4
        "new4@example.com,,Brest",  # 9
    ]
    path.write_text("email,phone,city\n" + "\n".join(rows) + "\n", encoding="utf-8")

    report = apply_stream(engine, checked(read_rows(path), CONFIG), chunk_size=2)

    assert [(r.line, r.reason) for r in report.rejected] == [
        (6, "duplicate email there@example.com: already on line 2"),
        (7, "duplicate phone +375291111111: already on line 3"),
        (8, "duplicate email new2@example.com: already on line 4"),
    ]
    assert (report.created, report.updated) == (4, 1)
    assert report.rejected == validate(read_rows(path), CONFIG)[1]
    engine.dispose()


def test_a_database_failure_after_chunks_were_written_applies_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    ingest_file(engine, big_csv(tmp_path / "seed.csv", 10), CONFIG)
    before = table_counts(engine)
    # A real database refusal at row 2,500 (the third chunk), after two chunks were written.
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON contact "
                "WHEN NEW.email = 'boom@example.com' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    path = tmp_path / "crash.csv"
    rows = [f"new{i}@example.com,New {i},Brest,news" for i in range(5_000)]
    rows[2_500] = "boom@example.com,Boom,Brest,news"
    path.write_text("email,name,city,lists\n" + "\n".join(rows) + "\n", encoding="utf-8")
    calls: list[int] = []
    with pytest.raises(Exception, match="refused"):
        apply_stream(
            engine,
            checked(read_rows(path), CONFIG),
            progress=lambda read, applied: calls.append(read),
        )
    assert calls == [1_000, 2_000]  # two chunks were written before the refusal
    assert table_counts(engine) == before


def test_an_unreadable_line_late_in_a_big_file_applies_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    path = big_csv(tmp_path / "late.csv", 5_000)
    with path.open("ab") as out:
        out.write(b"caf\xe9@example.com,Latin-1,Minsk,news\n")  # line 5,002
    with pytest.raises(IngestError, match="line 5002 is not valid UTF-8"):
        ingest_file(engine, path, CONFIG)
    assert table_counts(engine) == (0, 0)


def test_rejections_past_the_listed_number_are_counted(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_write, "MAX_LISTED_REJECTIONS", 3)
    path = big_csv(tmp_path / "bad.csv", 100, bad_every=10)
    report = ingest_file(engine, path, CONFIG)
    data = report.to_dict()
    assert [r["line"] for r in data["rejected"]] == [11, 21, 31]
    assert data["rejected_unlisted"] == 7
    assert report.created + len(report.rejected) + report.rejected_unlisted == report.rows == 100


def test_the_command_logs_json_progress_lines_off_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "syncd.toml").write_text(config_toml(tmp_path), encoding="utf-8")
    path = big_csv(tmp_path / "big.csv", 3_500, bad_every=1_000)
    done = run_syncd("ingest", "--progress-every", "0", str(path), cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # rows were rejected
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    progress: list[dict[str, Any]] = [e for e in events if e["logger"] == "syncd.ingest"]
    assert [e["rows_read"] for e in progress] == [1_000, 2_000, 3_000, 3_500]
    assert [e["rows_applied"] for e in progress] == [999, 1_998, 2_997, 3_497]
    assert progress[-1]["bytes_read"] == progress[-1]["bytes_total"] == path.stat().st_size
    assert all(e["level"] == "INFO" and e["file"] == str(path) for e in progress)
    assert "3500 rows — created 3497" in done.stdout
    # The default pace (a line every 5 s) says nothing about a file this quick.
    quiet = run_syncd("ingest", str(big_csv(tmp_path / "small.csv", 10)), cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_file_the_store_has_no_room_for_is_named_with_the_reason_and_the_next_one_applies(
    tmp_path: Path,
) -> None:
    """A full disk (here: a limit on the size of any file the process writes, which SQLite
    meets as a full disk) fails the file it stops, in one line that names it and says where
    SQLite writes; that file's transaction rolls back and a smaller file after it applies."""
    import resource

    (tmp_path / "syncd.toml").write_text(config_toml(tmp_path), encoding="utf-8")
    first = run_syncd("ingest", str(big_csv(tmp_path / "first.csv", 10)), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    store = tmp_path / "syncd.db"
    room = max(p.stat().st_size for p in tmp_path.glob("syncd.db*")) + 128 * 1024

    def limited() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))

    big = big_csv(tmp_path / "big.csv", 30_000)
    small = tmp_path / "small.csv"
    small.write_text("email,name,city,lists\nlate@example.com,Late,Brest,news\n", "utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "syncd", "ingest", str(big), str(small)],
        env=syncd_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limited,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{big}: not ingested, nothing of it applied: the store refused the write: " in (
        done.stderr
    )
    # EFBIG reads as an I/O error (ENOSPC, a full disk, as "database or disk is full")
    assert "disk I/O error" in done.stderr and "point SQLITE_TMPDIR at" in done.stderr
    assert f"{small}: 1 rows — created 1" in done.stdout
    engine = open_engine(f"sqlite:///{store}")
    try:
        with engine.connect() as conn:
            emails = conn.execute(text("SELECT email FROM contact ORDER BY id")).scalars().all()
    finally:
        engine.dispose()
    assert emails == [f"user{i}@example.com" for i in range(10)] + ["late@example.com"]


def test_a_process_killed_after_chunks_were_written_leaves_the_mirror_as_it_was(
    tmp_path: Path,
) -> None:
    (tmp_path / "syncd.toml").write_text(config_toml(tmp_path), encoding="utf-8")
    path = big_csv(tmp_path / "big.csv", 100_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "ingest", "--progress-every", "0", str(path)],
        cwd=tmp_path,
        env=syncd_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the first progress line: a chunk is written, uncommitted
            if line.startswith("{") and json.loads(line).get("rows_read", 0) >= 2_000:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    engine = open_engine(f"sqlite:///{tmp_path / 'syncd.db'}")
    assert table_counts(engine) == (0, 0)
    assert len(forget_triggers(engine)) == 6  # set aside in the transaction that died


def forget_triggers(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%forget'"
            )
        )
        return {name: sql for name, sql in rows}


def test_written_contacts_lose_their_projections_and_the_triggers_stay(
    engine: Engine, tmp_path: Path
) -> None:
    ingest_file(engine, big_csv(tmp_path / "seed.csv", 6), CONFIG)
    triggers = forget_triggers(engine)
    assert len(triggers) == 6
    with engine.begin() as conn:  # a projection of every contact on two targets
        conn.execute(
            text(
                "INSERT INTO local_seen (contact_id, target, key, digest, data) "
                "SELECT id, t.name, email, 'd', '{}' FROM contact, "
                "(SELECT 'a' AS name UNION SELECT 'b') t"
            )
        )
    path = tmp_path / "change.csv"
    path.write_text(
        "email,name,city,lists\n"
        "user0@example.com,User 0,Minsk,news\n"  # unchanged: keeps its projections
        "user1@example.com,User 1,Brest,news\n"  # a field changed
        "user2@example.com,User 2,Minsk,\n"  # left every list
        "user3@example.com,User 3,Minsk,news,other\n"  # a row with one value too many
        "new@example.com,New,Minsk,news\n",  # a new contact
        encoding="utf-8",
    )
    report = ingest_file(engine, path, CONFIG)
    assert (report.unchanged, report.updated, report.created) == (1, 2, 1)
    with engine.connect() as conn:
        kept = conn.execute(
            text(
                "SELECT c.email, count(*) FROM local_seen s JOIN contact c ON c.id = s.contact_id "
                "GROUP BY c.email ORDER BY c.email"
            )
        ).all()
    assert [tuple(r) for r in kept] == [
        ("user0@example.com", 2),
        ("user3@example.com", 2),
        ("user4@example.com", 2),
        ("user5@example.com", 2),
    ]
    assert forget_triggers(engine) == triggers  # set aside only while the file applied
    with engine.begin() as conn:  # and they still forget
        conn.execute(
            text("UPDATE contact SET status = 'blocked' WHERE email = 'user0@example.com'")
        )
        assert conn.execute(text("SELECT count(*) FROM local_seen")).scalar_one() == 6


@pytest.mark.parametrize("largest_id", [None, 2**63 - 1])
def test_new_contacts_get_their_own_lists_whatever_ids_sqlite_gives(
    engine: Engine, tmp_path: Path, largest_id: int | None
) -> None:
    # The ids of a chunk's new contacts are taken from the largest id before and after their
    # insert; with a contact at the largest possible id SQLite picks ids at random, and they
    # are looked up by key instead.
    if largest_id is not None:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO contact (id, email, fields, tags, status, deleted, ref) "
                    "VALUES (:id, 'top@example.com', '{}', '[]', 'active', 0, 'r')"
                ),
                {"id": largest_id},
            )
    lists = ["a", "b", "a,b", "", "c", "b", "", "a"]
    path = tmp_path / "new.csv"
    path.write_text(
        "email,phone,lists\n"
        + "".join(
            f'p{i}@example.com,,"{names}"\n' if i % 3 else f',+37529100000{i},"{names}"\n'
            for i, names in enumerate(lists)
        ),
        encoding="utf-8",
    )
    report = apply_stream(engine, checked(read_rows(path), CONFIG), chunk_size=3)
    assert report.created == len(lists)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT coalesce(c.email, c.phone), m.list_name FROM membership m "
                "JOIN contact c ON c.id = m.contact_id"
            )
        ).all()
    found: dict[str, set[str]] = {}
    for key, name in rows:
        found.setdefault(key, set()).add(name)
    keys = [f"p{i}@example.com" if i % 3 else f"+37529100000{i}" for i in range(len(lists))]
    assert found == {k: set(n.split(",")) for k, n in zip(keys, lists, strict=True) if n}


def test_young_collections_are_rarer_while_a_file_applies_then_as_before(
    engine: Engine, tmp_path: Path
) -> None:
    import gc

    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    path = big_csv(tmp_path / "a.csv", 2_500)
    rows = checked(read_rows(path), CONFIG)
    apply_stream(engine, rows, after_chunk=lambda *_: seen.append(gc.get_threshold()))
    assert len(seen) == 3 and all(t[0] >= GC_YOUNG_THRESHOLD for t in seen)
    assert seen[0][1:] == before[1:]
    assert gc.get_threshold() == before
    late = big_csv(tmp_path / "late.csv", 1_500)
    with late.open("ab") as out:
        out.write(b"caf\xe9@example.com,Latin-1,Minsk,news\n")
    with pytest.raises(IngestError):
        ingest_file(engine, late, CONFIG)
    assert gc.get_threshold() == before


def test_the_triggers_come_back_when_a_file_fails(engine: Engine, tmp_path: Path) -> None:
    triggers = forget_triggers(engine)
    with pytest.raises(IngestError):
        ingest_file(engine, tmp_path.joinpath("x.csv"), CONFIG)  # no such file
    path = big_csv(tmp_path / "late.csv", 1_500)
    with path.open("ab") as out:
        out.write(b"caf\xe9@example.com,Latin-1,Minsk,news\n")
    with pytest.raises(IngestError):
        ingest_file(engine, path, CONFIG)
    assert forget_triggers(engine) == triggers


def test_history_steps_are_the_rows_history_row_makes(engine: Engine, tmp_path: Path) -> None:
    from syncd.store import history

    path = tmp_path / "mixed.ndjson"
    records = [
        {"email": "a@example.com", 'fi"eld': "x", "tags": ["t"], "status": "active"},
        {"email": "b@example.com", "lists": ["news"], "unsubscribed_lists": ["news"]},
        {"email": "a@example.com"},  # a duplicate: rejected, no step
        {"phone": "+375291234567", "имя": "Аня"},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    source = 'inbox file "mixed" — ü'
    apply_stream(engine, checked(read_rows(path), CONFIG), source=source)
    with engine.connect() as conn:
        rows = conn.execute(
            text('SELECT at, run_id, target, key, "case", sent, outcome FROM history ORDER BY id')
        ).all()
    carried = [['fi"eld', "tags", "status"], ["lists", "unsubscribed_lists"], ["имя"]]
    keys = ["a@example.com", "b@example.com", "+375291234567"]
    expected = [
        history.row(
            None,
            None,
            key,
            "local_created",
            {"result": "applied", "source": source, "line": line, "carried": names},
            at=rows[0][0],
        )
        for key, line, names in zip(keys, [1, 2, 4], carried, strict=True)
    ]
    assert [dict(zip(expected[0], r, strict=True)) for r in rows] == expected


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        {"b": "1", "a": "2", "B": "3"},
        {'é"\\\n\u2028': "x\ty\x01", "Z": "", "a": "😀"},
        ["a", 'b"', "ü", "\ud7ff"],
        {"a": None, "b": "x"},
        {"n": 1},
        ["x", 1],
    ],
)
def test_canonical_json_is_the_encoders_text(value: Any) -> None:
    encoder = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert ingest_write.canonical_json(value) == encoder.encode(value)
