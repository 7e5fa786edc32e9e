"""Contact files into the mirror: reading, checking, applying, and the rules on consent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from syncd.config import IngestConfig
from syncd.errors import IngestError
from syncd.local.ingest import ingest_file
from syncd.local.ingest.check import ContactChange, validate
from syncd.local.ingest.read import RawRow, read_rows
from syncd.local.ingest.write import IngestReport, _Chunk, apply
from syncd.store.db import open_engine

CONFIG = IngestConfig()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_engine(f"sqlite:///{tmp_path}/s.db")


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def read(folder: Path, name: str, content: str) -> list[RawRow]:
    """The rows read from a file ``name`` written with ``content``."""
    return list(read_rows(write(folder, name, content)))


def ndjson(*records: dict[str, Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def contacts(engine: Engine) -> list[dict[str, Any]]:
    """The contact table as plain dicts, with each contact's lists, ordered by id."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM contact ORDER BY id")).mappings().all()
        members = conn.execute(
            text("SELECT contact_id, list_name FROM membership ORDER BY list_name")
        ).all()
    out = []
    for row in rows:
        item = dict(row)
        item["lists"] = [name for cid, name in members if cid == row["id"]]
        out.append(item)
    return out


def by_email(engine: Engine, email: str) -> dict[str, Any]:
    (found,) = [c for c in contacts(engine) if c["email"] == email]
    return found


def counts(report: IngestReport) -> dict[str, int]:
    return {k: report.to_dict()[k] for k in ("created", "updated", "deleted", "unchanged")}


# --------------------------------------------------------------------------------------------
# Reading


def test_csv_rows_keep_the_line_they_start_on(tmp_path: Path) -> None:
    rows = read(
        tmp_path,
        "in.csv",
        "\ufeffEmail, Phone ,City\n"  # BOM, reserved names in any case and padded
        "a@example.com,,Minsk\n"
        "\n"  # blank lines are skipped but still counted
        'b@example.com,,"two\nlines"\n'
        "c@example.com,,Brest\n",
    )
    assert [r.line for r in rows] == [2, 4, 6]
    assert rows[0].values == {"email": "a@example.com", "phone": "", "City": "Minsk"}
    assert rows[1].values["City"] == "two\nlines"


def test_csv_accepts_crlf_and_trailing_empty_cells(tmp_path: Path) -> None:
    (row,) = read(tmp_path, "in.csv", "email,city\r\na@example.com,Minsk,,\r\n")
    assert row.problem is None
    assert row.values == {"email": "a@example.com", "city": "Minsk"}


def test_ndjson_rows(tmp_path: Path) -> None:
    rows = read(
        tmp_path,
        "in.ndjson",
        '{"email": "a@example.com", "age": 41, "tags": ["x"]}\n\n{"phone": "+16502530000"}\n',
    )
    assert [(r.line, dict(r.values)) for r in rows] == [
        (1, {"email": "a@example.com", "age": 41, "tags": ["x"]}),
        (3, {"phone": "+16502530000"}),
    ]


def test_json_array_rows_know_their_lines(tmp_path: Path) -> None:
    rows = read(
        tmp_path,
        "in.json",
        '[\n  {"email": "a@example.com"},\n  {\n    "email": "b@example.com"\n  },\n  7\n]\n',
    )
    assert [(r.line, r.problem) for r in rows] == [
        (2, None),
        (3, None),
        (6, "record is not a JSON object"),
    ]
    assert rows[1].values == {"email": "b@example.com"}
    assert read(tmp_path, "empty.json", " [ ] ") == []


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        (
            "bad.csv",
            b"email,city\na@example.com,Minsk\nb@example.com,\xff\n",
            "line 3 is not valid UTF-8",
        ),
        (
            "bom.csv",  # the byte named as the file holds it, its byte order mark counted
            b"\xef\xbb\xbfemail,c\xffity\na@example.com,Minsk\n",
            r"line 1 is not valid UTF-8 \(byte 0xff at byte 11 of the line\)",
        ),
        ("empty.csv", "", "the file is empty"),
        ("blank.csv", "\n \n", "the file is empty"),
        ("nokey.csv", "name;city\nAnn;Minsk\n", "no email or phone column"),
        ("twice.csv", "email,Email\n", "column 'email' appears twice"),
        ("unnamed.csv", "email,,city\n", "header column 2 has no name"),
        ("quote.csv", 'email,city\na@example.com,"Minsk\n', "not valid CSV"),
        ("junk.csv", 'email,city\n"a@example.com"x,Minsk\n', "line 2: not valid CSV"),
        ("csv.ndjson", "email,city\na@example.com,Minsk\n", "line 1 is not JSON"),
        ("bad.json", '[{"email": "a@example.com"},\n {"email": }]\n', "line 2: not a valid JSON"),
        ("open.json", '[{"email": "a@example.com"}', "not a valid JSON array"),
        ("tail.json", '[{"email": "a@example.com"}] {}', "text after the closing"),
        ("notes.txt", "email\n", "unknown file type '.txt'"),
    ],
)
def test_unreadable_file_raises_and_changes_nothing(
    engine: Engine, tmp_path: Path, name: str, content: str | bytes, reason: str
) -> None:
    ingest_file(engine, write(tmp_path, "seed.csv", "email,city\na@example.com,Gomel\n"), CONFIG)
    before = contacts(engine)
    path = write(tmp_path, name, content)
    with pytest.raises(IngestError, match=reason) as caught:
        ingest_file(engine, path, CONFIG)
    assert str(path) in str(caught.value)
    assert contacts(engine) == before


def test_missing_file_raises(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="cannot be read"):
        ingest_file(engine, tmp_path / "gone.csv", CONFIG)


# --------------------------------------------------------------------------------------------
# Rejections: every reason, with exact line numbers


def test_every_csv_rejection_reason(engine: Engine, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "in.csv",
        "email,phone,status,delete,tags,city\n"
        "good@example.com,+375291234567,,,,Minsk\n"  # 2: fine, claims its email and phone
        ",,,,,Minsk\n"  # 3
        "not-an-email,,,,,\n"  # 4
        "ann@example.com,+375 12,,,,\n"  # 5
        "ann@example.com,80291234567,,,,\n"  # 6: no '+' and no default region
        "info@example.com,,,,,\n"  # 7
        "bob@example.com,,subscribed,,,\n"  # 8
        "Good@EXAMPLE.com,,,,,\n"  # 9: duplicate email once normalised (any case)
        "hal@Example.COM,,,,,\n"  # 10: fine
        "carl@example.com,+375 29 123 45 67,,,,\n"  # 11: duplicate phone
        '"multi\nline@example.com",,,,,\n'  # 12-13: invalid, reported at its first line
        "dan@example.com,,,maybe,,\n"  # 14
        "eve@example.com,,\n"  # 15: too few values
        "fay@example.com,,,,,,extra\n",  # 16: too many values
    )
    report = ingest_file(engine, path, CONFIG)
    got = [(r.line, r.key, r.reason) for r in report.rejected]
    assert got == [
        (3, "", "row has neither email nor phone"),
        (4, "not-an-email", got[1][2]),
        (5, "ann@example.com", "invalid phone '+375 12': not a valid number"),
        (6, "ann@example.com", "phone must be in international format (+...)"),
        (7, "info@example.com", got[4][2]),
        (8, "bob@example.com", got[5][2]),
        (9, "good@example.com", "duplicate email good@example.com: already on line 2"),
        (11, "carl@example.com", "duplicate phone +375291234567: already on line 2"),
        (12, "multi\nline@example.com", got[8][2]),
        (14, "dan@example.com", "delete must be 1/true or 0/empty, not 'maybe'"),
        (15, "eve@example.com", "row has 3 values but the header has 6 columns"),
        (16, "fay@example.com", "row has 7 values but the header has 6 columns"),
    ]
    assert got[1][2].startswith("invalid email 'not-an-email'")
    assert got[4][2].startswith("role address info@example.com")
    assert got[5][2].startswith("unknown status 'subscribed'")
    assert got[8][2].startswith("invalid email")
    assert counts(report) == {"created": 2, "updated": 0, "deleted": 0, "unchanged": 0}
    assert report.rows == 14
    assert {c["email"] for c in contacts(engine)} == {"good@example.com", "hal@example.com"}


def test_every_json_rejection_reason(engine: Engine, tmp_path: Path) -> None:
    lines = [
        '{"email": "ok@example.com", "age": 41, "vip": true, "score": 1.5, "note": null}',
        '{"email": "a@example.com", "city": {"name": "Minsk"}}',
        '{"email": "b@example.com", "city": ["Minsk"]}',
        '{"email": "c@example.com", "tags": "x,y", "lists": [1]}',
        '{"email": "d@example.com", "tags": ["a,b"]}',
        '{"email": "e@example.com", "tags": {"a": 1}}',
        '{"email": "f@example.com", "Email": "g@example.com"}',
        '{"email": 5}',
        '{"email": "h@example.com"',
        '["i@example.com"]',
        '{"email": "j@example.com", "score": NaN}',
        '{"email": "k@example.com", "status": true}',
        '{"email": "l@example.com", " ": 1}',
    ]
    report = ingest_file(engine, write(tmp_path, "in.ndjson", "\n".join(lines) + "\n"), CONFIG)
    got = [(r.line, r.key, r.reason) for r in report.rejected]
    assert got == [
        (2, "a@example.com", "field 'city' holds a nested object; custom fields take one value"),
        (3, "b@example.com", "field 'city' holds a list; custom fields take one value"),
        (4, "c@example.com", "lists must be a list of names, found 1"),
        (5, "d@example.com", "tag 'a,b' contains a comma"),
        (6, "e@example.com", "tags must be a list of names"),
        (7, "f@example.com", "key 'Email' appears more than once"),
        (8, "5", "email must be text"),
        (9, "", got[7][2]),
        (10, "", "record is not a JSON object"),
        (11, "j@example.com", "field 'score': nan is not a usable number"),
        (12, "k@example.com", "unknown status True (expected active, unsubscribed or blocked)"),
        (13, "l@example.com", "a key is empty"),
    ]
    assert got[7][2].startswith("not valid JSON:")
    (stored,) = contacts(engine)
    # JSON scalars are stored as text; null removes (here: never sets) the field.
    assert stored["fields"] == '{"age":"41","score":"1.5","vip":"true"}'


def test_email_and_phone_of_different_contacts_is_rejected(engine: Engine, tmp_path: Path) -> None:
    seed = "email,phone\na@example.com,+375291234567\nb@example.com,+375297654321\n"
    ingest_file(engine, write(tmp_path, "seed.csv", seed), CONFIG)
    before = contacts(engine)
    report = ingest_file(
        engine, write(tmp_path, "in.csv", "email,phone\na@example.com,+375297654321\n"), CONFIG
    )
    assert [(r.line, r.key, r.reason) for r in report.rejected] == [
        (2, "a@example.com", "email and phone belong to different contacts")
    ]
    assert contacts(engine) == before


def test_role_addresses_pass_when_allowed(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", "email\ninfo@example.com\n")
    report = ingest_file(engine, path, IngestConfig(reject_role_addresses=False))
    assert report.created == 1


def test_default_region_reads_national_numbers(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", "phone\n8 029 123-45-67\n")
    ingest_file(engine, path, IngestConfig(default_region="BY"))
    assert [c["phone"] for c in contacts(engine)] == ["+375291234567"]


def test_report_dict_shape(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", "email\na@example.com\nbad\n")
    report = ingest_file(engine, path, CONFIG)
    data = report.to_dict()
    assert data == {
        "file": str(path),
        "rows": 2,
        "created": 1,
        "updated": 0,
        "deleted": 0,
        "unchanged": 0,
        "rejected": [{"line": 3, "key": "bad", "reason": data["rejected"][0]["reason"]}],
    }
    assert data["rejected"][0]["reason"].startswith("invalid email 'bad'")
    json.dumps(data)  # serialisable as is


# --------------------------------------------------------------------------------------------
# What a row does


def test_rows_change_only_the_columns_they_carry(engine: Engine, tmp_path: Path) -> None:
    def ingest(name: str, csv: str) -> tuple[IngestReport, dict[str, Any]]:
        """Ingest ``csv`` as the file ``name``: its report, and the contact a@example.com after."""
        report = ingest_file(engine, write(tmp_path, name, csv), CONFIG)
        return report, by_email(engine, "a@example.com")

    report, stored = ingest(
        "1.csv",
        'email,phone,city,age,tags,lists\na@example.com,+375291234567,Minsk,41,"b, a",news\n',
    )
    assert report.created == 1
    # Canonical text: sorted keys, sorted tags, no spaces.
    assert stored["fields"] == '{"age":"41","city":"Minsk"}'
    assert (stored["tags"], stored["lists"]) == ('["a","b"]', ["news"])

    # No tags/lists/age column: those stay; an empty city removes that field.
    report, stored = ingest("2.csv", "email,city,zip\na@example.com,,220000\n")
    assert report.updated == 1
    assert stored["fields"] == '{"age":"41","zip":"220000"}'
    assert (stored["tags"], stored["lists"]) == ('["a","b"]', ["news"])
    assert stored["phone"] == "+375291234567"

    # Present tags/lists columns replace the sets; an empty cell empties them.
    _, stored = ingest("3.csv", 'email,tags,lists\na@example.com,c,"vip,news"\n')
    assert (stored["tags"], stored["lists"]) == ('["c"]', ["news", "vip"])
    fourth = "email,tags,lists\na@example.com,,\n"
    _, stored = ingest("4.csv", fourth)
    assert (stored["tags"], stored["lists"]) == ("[]", [])

    # The same content again changes nothing.
    assert counts(ingest("5.csv", fourth)[0])["unchanged"] == 1


def test_json_null_removes_a_field(engine: Engine, tmp_path: Path) -> None:
    ingest_file(
        engine, write(tmp_path, "1.ndjson", ndjson({"email": "a@example.com", "x": "1"})), CONFIG
    )
    ingest_file(
        engine, write(tmp_path, "2.ndjson", ndjson({"email": "a@example.com", "x": None})), CONFIG
    )
    assert by_email(engine, "a@example.com")["fields"] == "{}"


def test_new_email_on_a_contact_found_by_phone_keeps_its_consent(
    engine: Engine, tmp_path: Path
) -> None:
    seed = "email,phone,status\nold@example.com,+375291234567,unsubscribed\n"
    ingest_file(engine, write(tmp_path, "1.csv", seed), CONFIG)
    move = "email,phone\nnew@example.com,+375291234567\n"
    assert ingest_file(engine, write(tmp_path, "2.csv", move), CONFIG).updated == 1
    (stored,) = contacts(engine)
    assert (stored["email"], stored["status"]) == ("new@example.com", "unsubscribed")


def test_delete_leaves_a_tombstone_that_keeps_the_opt_out(engine: Engine, tmp_path: Path) -> None:
    seed = (
        'email,phone,status,tags,lists,city\na@example.com,+375291234567,unsubscribed,x,"n,v",M\n'
    )
    ingest_file(engine, write(tmp_path, "1.csv", seed), CONFIG)
    gone = "email,delete\na@example.com,1\nnobody@example.com,true\n"
    report = ingest_file(engine, write(tmp_path, "2.csv", gone), CONFIG)
    assert counts(report) == {"created": 0, "updated": 0, "deleted": 1, "unchanged": 1}
    (stored,) = contacts(engine)
    assert stored["deleted"] == 1
    assert (stored["email"], stored["phone"], stored["status"]) == (
        "a@example.com",
        "+375291234567",
        "unsubscribed",
    )
    assert (stored["fields"], stored["tags"], stored["lists"]) == ("{}", "[]", [])
    # Deleting it again is not an error, and changes nothing.
    assert ingest_file(engine, write(tmp_path, "3.csv", gone), CONFIG).unchanged == 2


def test_revival_keeps_an_opt_out(engine: Engine, tmp_path: Path) -> None:
    seed = "email,status\na@example.com,unsubscribed\nb@example.com,active\n"
    ingest_file(engine, write(tmp_path, "1.csv", seed), CONFIG)
    ingest_file(
        engine, write(tmp_path, "2.csv", "email,delete\na@example.com,1\nb@example.com,1\n"), CONFIG
    )
    # Re-created later, by a file that says everybody is active.
    again = "email,status,city\na@example.com,active,Minsk\nb@example.com,blocked,Brest\n"
    report = ingest_file(engine, write(tmp_path, "3.csv", again), CONFIG)
    assert report.created == 2
    a, b = by_email(engine, "a@example.com"), by_email(engine, "b@example.com")
    assert (a["deleted"], a["status"], a["fields"]) == (0, "unsubscribed", '{"city":"Minsk"}')
    # Towards opted-out is always allowed.
    assert (b["deleted"], b["status"]) == (0, "blocked")


def test_explicit_status_on_a_live_contact_is_a_local_decision(
    engine: Engine, tmp_path: Path
) -> None:
    ingest_file(
        engine, write(tmp_path, "1.csv", "email,status\na@example.com,unsubscribed\n"), CONFIG
    )
    # No status given: unchanged.
    report = ingest_file(engine, write(tmp_path, "2.csv", "email,status\na@example.com,\n"), CONFIG)
    assert report.unchanged == 1
    report = ingest_file(
        engine, write(tmp_path, "3.csv", "email,status\na@example.com,Active\n"), CONFIG
    )
    assert report.updated == 1
    assert by_email(engine, "a@example.com")["status"] == "active"


def test_rows_apply_in_file_order_across_chunks(engine: Engine, tmp_path: Path) -> None:
    seed = "email,phone\na@example.com,+375291111111\nc@example.com,+375293333333\n"
    ingest_file(engine, write(tmp_path, "1.csv", seed), CONFIG)
    # Row 2 moves a's phone away; row 3 gives the freed number to c; row 4 creates d with c's
    # old number. With chunk_size=1000 this all happens in one chunk (keys change hands within
    # one bulk write); with chunk_size=1 each row sees the previous one committed to the session.
    moves = (
        "email,phone\n"
        "a@example.com,+375292222222\n"
        "c@example.com,+375291111111\n"
        "d@example.com,+375293333333\n"
    )
    path = write(tmp_path, "2.csv", moves)
    changes, rejected = validate(read_rows(path), CONFIG)
    assert rejected == []
    reports = []
    for chunk_size in (1000, 1):
        fresh = open_engine(f"sqlite:///{tmp_path}/{chunk_size}.db")
        ingest_file(fresh, write(tmp_path, "seed.csv", seed), CONFIG)
        reports.append(counts(apply(fresh, changes, chunk_size=chunk_size)))
        phones = {c["email"]: c["phone"] for c in contacts(fresh)}
        assert phones == {
            "a@example.com": "+375292222222",
            "c@example.com": "+375291111111",
            "d@example.com": "+375293333333",
        }
    assert reports[0] == reports[1] == {"created": 1, "updated": 2, "deleted": 0, "unchanged": 0}


def test_a_later_row_sees_an_earlier_one(engine: Engine, tmp_path: Path) -> None:
    # Two rows reach the same contact through different keys: both apply, in order.
    seed = "email,phone\na@example.com,+375291111111\n"
    ingest_file(engine, write(tmp_path, "1.csv", seed), CONFIG)
    rows = ndjson(
        {"email": "a@example.com", "city": "Minsk"},
        {"phone": "+375291111111", "zip": "220000"},
    )
    report = ingest_file(engine, write(tmp_path, "2.ndjson", rows), CONFIG)
    assert report.updated == 2
    assert by_email(engine, "a@example.com")["fields"] == '{"city":"Minsk","zip":"220000"}'


# --------------------------------------------------------------------------------------------
# All or nothing


def test_a_failure_mid_apply_writes_nothing(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_file(engine, write(tmp_path, "1.csv", "email,city\nseed@example.com,Gomel\n"), CONFIG)
    before = contacts(engine)
    rows = "email,city\nseed@example.com,Minsk\n" + "".join(
        f"p{i}@example.com,Brest\n" for i in range(5)
    )
    changes, _ = validate(read_rows(write(tmp_path, "2.csv", rows)), CONFIG)

    real_write = _Chunk.write
    calls = []

    def failing_write(self: _Chunk, session: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        real_write(self, session)

    monkeypatch.setattr(_Chunk, "write", failing_write)
    with pytest.raises(RuntimeError, match="disk on fire"):
        apply(engine, changes, chunk_size=2)
    assert len(calls) == 2  # the first chunk was written to the session, then rolled back
    assert contacts(engine) == before


def test_apply_takes_changes_built_in_code(engine: Engine) -> None:
    change = ContactChange(line=1, email="a@example.com", tags=frozenset({"x"}), status="blocked")
    report = apply(engine, [change])
    assert report.created == 1
    assert by_email(engine, "a@example.com")["status"] == "blocked"
