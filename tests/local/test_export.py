"""The mirror out to a file, and the guarantee that reading the file back changes nothing."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import config_toml, run_syncd, unisender_target
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import Engine

from syncd.config import IngestConfig
from syncd.core.contacts import is_role_address
from syncd.core.projection import STATUSES
from syncd.local import export
from syncd.local.export import export_contacts
from syncd.local.ingest import ingest_file
from syncd.local.ingest.read import RESERVED, neutralised, restored
from syncd.store.db import open_engine

CONFIG = IngestConfig()

SEED = (
    "email,phone,status,tags,lists,city,zip\n"
    'b@example.com,+375291111111,unsubscribed,"y,x","news,vip",Minsk,\n'
    ",+16502530000,active,,news,,220000\n"
    'c@example.com,,blocked,,,"quoted ""name"", with comma",\n'
    "gone@example.com,,active,t,news,Brest,\n"
)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = open_engine(f"sqlite:///{tmp_path}/s.db")
    ingest_file(engine, write(tmp_path, "seed.csv", SEED), CONFIG)
    ingest_file(engine, write(tmp_path, "del.csv", "email,delete\ngone@example.com,1\n"), CONFIG)
    return engine


def write(folder: Path, name: str, content: str) -> Path:
    path = folder / name
    path.write_text(content, encoding="utf-8")
    return path


def exported(
    engine: Engine, fmt: export.Format, list_name: str | None = None, *, raw: bool = False
) -> str:
    out = io.StringIO(newline="")
    export_contacts(engine, out, fmt, list_name, raw=raw)
    return out.getvalue()


def snapshot(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return [
            *conn.execute(text("SELECT * FROM contact ORDER BY id")).all(),
            *conn.execute(text("SELECT * FROM membership ORDER BY contact_id, list_name")).all(),
        ]


def test_ndjson_shape(engine: Engine) -> None:
    records = [json.loads(line) for line in exported(engine, "ndjson").splitlines()]
    assert records == [
        {
            "email": "b@example.com",
            "phone": "+375291111111",
            "status": "unsubscribed",
            "tags": ["x", "y"],
            "lists": ["news", "vip"],
            "unsubscribed_lists": [],
            "city": "Minsk",
        },
        {
            "email": None,
            "phone": "+16502530000",
            "status": "active",
            "tags": [],
            "lists": ["news"],
            "unsubscribed_lists": [],
            "zip": "220000",
        },
        {
            "email": "c@example.com",
            "phone": None,
            "status": "blocked",
            "tags": [],
            "lists": [],
            "unsubscribed_lists": [],
            "city": 'quoted "name", with comma',
        },
    ]


def test_csv_shape(engine: Engine) -> None:
    rows = list(csv.reader(io.StringIO(exported(engine, "csv", raw=True), newline="")))
    assert rows == [
        ["email", "phone", "status", "tags", "lists", "unsubscribed_lists", "city", "zip"],
        ["b@example.com", "+375291111111", "unsubscribed", "x,y", "news,vip", "", "Minsk", ""],
        ["", "+16502530000", "active", "", "news", "", "", "220000"],
        ["c@example.com", "", "blocked", "", "", "", 'quoted "name", with comma', ""],
    ]
    # by default a phone (a leading '+') is written as text for spreadsheets
    neutral = list(csv.reader(io.StringIO(exported(engine, "csv"), newline="")))
    assert [row[1] for row in neutral] == ["phone", "'+375291111111", "'+16502530000", ""]
    assert [row[:1] + row[2:] for row in neutral] == [row[:1] + row[2:] for row in rows]


def test_list_filter_keeps_all_lists_of_each_member(engine: Engine) -> None:
    records = [json.loads(line) for line in exported(engine, "ndjson", "vip").splitlines()]
    assert [(r["email"], r["lists"]) for r in records] == [("b@example.com", ["news", "vip"])]
    assert exported(engine, "ndjson", "nobody") == ""
    assert exported(engine, "csv", "nobody") == f"{','.join(export.HEADER)}\r\n"


def test_empty_mirror(tmp_path: Path) -> None:
    empty = open_engine(f"sqlite:///{tmp_path}/empty.db")
    assert exported(empty, "ndjson") == ""
    assert exported(empty, "csv") == "email,phone,status,tags,lists,unsubscribed_lists\r\n"


def test_reserved_names_never_come_out_as_fields(engine: Engine) -> None:
    # Ingest never stores these; another writer might. The column meaning wins: leave them out.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE contact SET fields = :f WHERE email = 'c@example.com'"),
            {"f": '{"Email":"x@example.com","status":"active","city":"Pinsk"}'},
        )
    (header, *_) = csv.reader(io.StringIO(exported(engine, "csv")))
    assert header == [*export.HEADER, "city", "zip"]
    last = json.loads(exported(engine, "ndjson").splitlines()[-1])
    assert (last["email"], last["status"], last["city"]) == ("c@example.com", "blocked", "Pinsk")
    assert "Email" not in last


def test_unknown_format_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        export_contacts(engine, io.StringIO(), "xml")  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "name"), [("csv", "out.csv"), ("ndjson", "out.ndjson")])
def test_round_trip_changes_nothing(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: export.Format, name: str
) -> None:
    monkeypatch.setattr(export, "CHUNK_SIZE", 2)  # exercise paging by id
    before = snapshot(engine)
    path = tmp_path / name
    with path.open("w", encoding="utf-8", newline="") as out:
        assert export_contacts(engine, out, fmt) == 3
    report = ingest_file(engine, path, CONFIG)
    assert (report.created, report.updated, report.deleted, report.unchanged) == (0, 0, 0, 3)
    assert report.rejected == []
    assert snapshot(engine) == before


# --------------------------------------------------------------------------------------------
# Property: export -> ingest is a fixed point for any contacts ingest can create

# Ingest refuses NUL in any value (a sign of a binary or mis-encoded file), so none is generated.
names = st.text(
    st.characters(codec="utf-8", exclude_characters=",\x00"), min_size=1, max_size=8
).map(str.strip)
field_values = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
)
# What a spreadsheet would run as a formula, and what already looks neutralised, is drawn often.
formula_starts = st.sampled_from(["=", "+", "-", "@", "\t", "\r", "'=", "''@", "'", "'x"])
field_values = field_values | st.builds(str.__add__, formula_starts, field_values)
names = names | st.builds(str.__add__, formula_starts, names).map(str.strip).filter(bool)
field_names = names.filter(lambda n: n != "" and n.lower() not in RESERVED)
emails = st.builds(
    "{}@{}".format,
    st.from_regex(r"[A-Za-z0-9]{1,8}([._+-][A-Za-z0-9]{1,4})?", fullmatch=True),
    st.sampled_from(["Example.COM", "example.org", "bücher.de"]),
).filter(lambda e: not is_role_address(e))
phones = st.integers(0, 9999).map(lambda n: f"+1 650 253 {n:04d}")


@st.composite
def contact_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 6))
    email_list = draw(st.lists(emails, min_size=count, max_size=count, unique_by=str.lower))
    phone_list = draw(st.lists(phones, min_size=count, max_size=count, unique=True))
    rows = []
    for email, phone in zip(email_list, phone_list, strict=True):
        keys = draw(st.sampled_from([("email",), ("phone",), ("email", "phone")]))
        row: dict[str, Any] = {"email": email if "email" in keys else None}
        row["phone"] = phone if "phone" in keys else None
        row.update(draw(st.dictionaries(field_names, field_values, max_size=3)))
        row["tags"] = draw(st.lists(names, max_size=3))
        row["lists"] = draw(st.lists(names, max_size=2))
        row["unsubscribed_lists"] = draw(st.lists(names, max_size=2))
        row["status"] = draw(st.sampled_from(STATUSES))
        rows.append(row)
    return rows


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(rows=contact_rows(), deleted=st.lists(st.booleans(), min_size=6, max_size=6))
def test_export_then_ingest_is_a_fixed_point(
    rows: list[dict[str, Any]], deleted: list[bool]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        engine = open_engine(f"sqlite:///{tmp}/s.db")
        try:
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            report = ingest_file(engine, write(tmp, "in.ndjson", lines), CONFIG)
            assert report.rejected == []
            assert report.created == len(rows)
            gone = [
                {"email": r["email"], "phone": r["phone"], "delete": 1}
                for r, d in zip(rows, deleted, strict=False)
                if d
            ]
            ingest_file(
                engine,
                write(tmp, "del.ndjson", "".join(json.dumps(g) + "\n" for g in gone)),
                CONFIG,
            )
            live = len(rows) - len(gone)
            before = snapshot(engine)
            for fmt in ("csv", "ndjson"):
                path = tmp / f"out.{fmt}"
                with path.open("w", encoding="utf-8", newline="") as out:
                    assert export_contacts(engine, out, fmt) == live
                again = ingest_file(engine, path, CONFIG)
                assert again.rejected == []
                assert again.unchanged == live
                assert snapshot(engine) == before
        finally:
            engine.dispose()


# --------------------------------------------------------------------------------------------
# Consent per list: the list states travel through the file


def states(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT c.email, c.phone, m.list_name, m.state FROM membership m "
                    "JOIN contact c ON c.id = m.contact_id ORDER BY c.id, m.list_name"
                )
            ).all()
        )


CONSENT = (
    '{"email": "a@example.com", "lists": ["news", "promo"], "unsubscribed_lists": ["promo"]}\n'
    '{"email": "b@example.com", "lists": ["news"], "unsubscribed_lists": ["news", "sms"]}\n'
    '{"phone": "+375291111111", "lists": ["news", "sms"], "City": "=1+2"}\n'
    '{"email": "d@example.com", "status": "unsubscribed", "unsubscribed_lists": ["news"]}\n'
)


@pytest.fixture
def consent_db(store_url: str, tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(store_url)
    report = ingest_file(engine, write(tmp_path, "seed.ndjson", CONSENT), CONFIG)
    assert report.rejected == [] and report.created == 4
    yield engine
    engine.dispose()


def test_export_carries_the_lists_left(consent_db: Engine) -> None:
    records = [json.loads(line) for line in exported(consent_db, "ndjson").splitlines()]
    assert [(r["lists"], r["unsubscribed_lists"]) for r in records] == [
        (["news", "promo"], ["promo"]),
        (["news", "sms"], ["news", "sms"]),
        (["news", "sms"], []),
        (["news"], ["news"]),
    ]
    rows = list(csv.DictReader(io.StringIO(exported(consent_db, "csv"), newline="")))
    assert [(r["lists"], r["unsubscribed_lists"]) for r in rows] == [
        ("news,promo", "promo"),
        ("news,sms", "news,sms"),
        ("news,sms", ""),
        ("news", "news"),
    ]
    # --list takes the members in either state
    members = [
        json.loads(line)["email"] for line in exported(consent_db, "ndjson", "sms").splitlines()
    ]
    assert members == ["b@example.com", None]


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_export_then_ingest_keeps_every_state(
    consent_db: Engine, store_url: str, tmp_path: Path, fmt: export.Format
) -> None:
    before = snapshot(consent_db)
    path = tmp_path / f"out.{fmt}"
    with path.open("w", encoding="utf-8", newline="") as out:
        assert export_contacts(consent_db, out, fmt) == 4

    again = ingest_file(consent_db, path, CONFIG)  # the same store: nothing changes
    assert (again.unchanged, again.created, again.updated, again.rejected) == (4, 0, 0, [])
    assert snapshot(consent_db) == before

    fresh = open_engine(f"sqlite:///{tmp_path / 'fresh.db'}")  # a fresh store: the same states
    try:
        assert ingest_file(fresh, path, CONFIG).created == 4
        assert states(fresh) == states(consent_db)
    finally:
        fresh.dispose()


# --------------------------------------------------------------------------------------------
# Spreadsheet formulas: neutralised by default, restored by ingest


@given(
    st.text(st.characters(codec="utf-8"), max_size=6)
    | st.builds(str.__add__, formula_starts, field_values)
)
def test_restored_undoes_neutralised_for_any_cell(cell: str) -> None:
    safe = neutralised(cell)
    assert restored(safe) == cell
    assert not safe.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert safe == cell or safe == f"'{cell}"


def test_a_cell_is_neutralised_only_where_a_spreadsheet_would_run_it() -> None:
    cases = {
        "=SUM(A1)": "'=SUM(A1)",
        "+375291234567": "'+375291234567",
        "-1": "'-1",
        "@cmd": "'@cmd",
        "\tx": "'\tx",
        "\rx": "'\rx",
        "'=x": "''=x",  # a value that looks neutralised already keeps its apostrophe
        "'x": "'x",
        "x=1": "x=1",
        "": "",
    }
    assert {cell: neutralised(cell) for cell in cases} == cases
    # ingest reads a hand-written "'=x" as the spreadsheet's text "=x", as a spreadsheet does
    assert restored("'=x") == "=x" and restored("'x") == "'x"


def test_the_command_neutralises_csv_unless_raw_and_refuses_an_unknown_list(
    tmp_path: Path,
) -> None:
    target = unisender_target("http://127.0.0.1:9", "news", api_key="k", local_list="news")
    (tmp_path / "syncd.toml").write_text(config_toml(tmp_path, target), encoding="utf-8")
    write(
        tmp_path,
        "in.ndjson",
        '{"email": "a@example.com", "phone": "+375291111111", "lists": ["news", "promo"], '
        '"unsubscribed_lists": ["promo"], "=HYPERLINK": "-2+3", "Note": "@SUM(1)"}\n',
    )
    assert run_syncd("ingest", "in.ndjson", cwd=tmp_path).returncode == 0

    safe = run_syncd("export", "--format", "csv", cwd=tmp_path)
    assert safe.returncode == 0, safe.stderr
    assert list(csv.reader(io.StringIO(safe.stdout, newline=""))) == [
        [*export.HEADER, "'=HYPERLINK", "Note"],
        [
            "a@example.com",
            "'+375291111111",
            "active",
            "",
            "news,promo",
            "promo",
            "'-2+3",
            "'@SUM(1)",
        ],
    ]
    raw = run_syncd("export", "--format", "csv", "--raw", cwd=tmp_path)
    assert list(csv.reader(io.StringIO(raw.stdout, newline="")))[1][1::5] == [
        "+375291111111",
        "-2+3",
    ]
    for name, text_ in (("safe.csv", safe.stdout), ("raw.csv", raw.stdout)):
        (tmp_path / name).write_text(text_, encoding="utf-8", newline="")
        again = run_syncd("ingest", "--json", name, cwd=tmp_path)
        assert json.loads(again.stdout)["unchanged"] == 1, again.stdout + again.stderr

    nosuch = run_syncd("export", "--list", "nosuch", cwd=tmp_path)
    assert (nosuch.returncode, nosuch.stdout) == (2, "")
    assert nosuch.stderr.splitlines() == [
        "syncd export: no list 'nosuch': no contact is on it and no target names it "
        "(lists: news, promo)"
    ]
    # a list a contact is on, and one a target names, are no error even when nobody is on it
    assert run_syncd("export", "--list", "promo", cwd=tmp_path).stdout.count("\n") == 1
    run_syncd("ingest", "in.ndjson", cwd=tmp_path)
    write(tmp_path, "off.csv", "email,lists\na@example.com,promo\n")
    assert run_syncd("ingest", "off.csv", cwd=tmp_path).returncode == 0
    news = run_syncd("export", "--list", "news", cwd=tmp_path)
    assert (news.returncode, news.stdout) == (0, "")
