"""The ingest API's routes, called without a socket (and one real listener for the size bound).

Each store test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from syncd.commands import api_routes
from syncd.commands.listener import listen
from syncd.config import Config, HttpConfig
from syncd.local import intake
from syncd.store import open_engine
from syncd.store.models import Contact, IngestRequest

TOKEN = "t0ken-for-the-ingest-api"
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "ingest-answer.schema.json").read_text()
)


@pytest.fixture
def db(store_url: str) -> Iterator[Engine]:
    engine = open_engine(store_url)
    yield engine
    engine.dispose()


class Api:
    def __init__(self, db: Engine, **http: Any) -> None:
        self.db = db
        self.config = Config.model_validate(
            {"http": {"ingest_token": TOKEN, **http}, "ingest": {"default_region": "BY"}}
        )
        self.changed: list[set[str]] = []
        handler = api_routes.routes(db, lambda: self.config, self.changed.append)
        self.client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://t")

    def post(self, body: bytes, token: str = TOKEN, **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {token}"}
        return self.client.post("/v1/contacts", content=body, headers={**auth, **headers})

    def get(self, key: str, token: str = TOKEN) -> httpx.Response:
        return self.client.get(f"/v1/contacts/{key}", headers={"Authorization": f"Bearer {token}"})


def lines(*records: Any) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def contacts(db: Engine) -> int:
    with Session(db) as session:
        return int(session.execute(select(func.count()).select_from(Contact)).scalar_one())


def test_a_missing_or_wrong_token_is_401_and_no_token_configured_turns_the_api_off(
    db: Engine,
) -> None:
    api = Api(db)
    body = lines({"email": "ann@example.com"})
    for token in ("", "wrong-token-of-some-length", TOKEN[:-1], TOKEN + "x"):
        refused = api.post(body, token=token)
        assert refused.status_code == 401 and "Bearer" in refused.headers["www-authenticate"]
        assert api.get("ann@example.com", token=token).status_code == 401
    assert api.client.post("/v1/contacts", content=body).status_code == 401
    assert contacts(db) == 0
    assert not HttpConfig(ingest_token="").ingest_enabled  # type: ignore[arg-type]
    assert not HttpConfig().ingest_enabled
    assert not HttpConfig(listen="off", ingest_token=TOKEN).ingest_enabled  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at least 16 characters"):
        HttpConfig(ingest_token="short")  # type: ignore[arg-type]


def test_good_lines_apply_bad_ones_are_named_by_line_and_the_changed_lists_are_told(
    db: Engine,
) -> None:
    api = Api(db)
    answer = api.post(
        lines(
            {"email": "Ann@Example.com", "name": "Ann", "lists": ["news"]},
            {"email": "info@example.com", "lists": ["news"]},
            {"phone": "+375291234567", "lists": ["sms"]},
            {"email": "ann@example.com", "name": "again"},
            {"email": "bob@example.com", "colour": "x" * 200_000},
        ),
        **{"Content-Type": "application/x-ndjson"},
    )
    assert answer.status_code == 200
    got = answer.json()
    jsonschema.validate(got, SCHEMA)
    assert (got["applied"], got["created"]) == (2, 2)
    assert [(r["line"], r["key"]) for r in got["rejected"]] == [
        (2, "info@example.com"),
        (4, "ann@example.com"),
        (5, "bob@example.com"),
    ]
    assert "role address" in got["rejected"][0]["reason"]
    assert "already on line 1" in got["rejected"][1]["reason"]
    assert api.changed == [{"news", "sms"}]
    assert api.get("ANN@example.com").json() == {
        "email": "ann@example.com",
        "phone": None,
        "status": "active",
        "fields": {"name": "Ann"},
        "tags": [],
        "lists": ["news"],
        "unsubscribed_lists": [],
    }
    assert api.get("375291234567").json()["phone"] == "+375291234567"  # the default region
    assert api.get("nobody@example.com").status_code == 404


def test_a_json_array_is_taken_too_and_an_unreadable_body_changes_nothing(db: Engine) -> None:
    api = Api(db)
    array = b'[\n {"email": "a@example.com"},\n {"email": "b@example.com", "status": "gone"}\n]'
    got = api.post(array, **{"Content-Type": "application/json"}).json()
    assert got["applied"] == 1 and [r["line"] for r in got["rejected"]] == [3]
    for bad in (b'[{"email": "c@example.com"}, {]', b"\xff\xfe{}", b'{"email": "c@example.com"'):
        refused = api.post(bad)
        assert refused.status_code == 400, bad
        assert refused.json()["reason"].startswith("body: ")
    assert contacts(db) == 1
    assert api.post(b"email\nx@example.com\n", **{"Content-Type": "text/csv"}).status_code == 415
    assert api.post(b"").json()["applied"] == 0


def test_an_idempotency_key_applies_once_refuses_another_body_and_expires(db: Engine) -> None:
    api = Api(db)
    body = lines({"email": "ann@example.com", "lists": ["news"]})
    first = api.post(body, **{"Idempotency-Key": "k-1"})
    api.post(lines({"email": "ann@example.com", "name": "edited"}))
    again = api.post(body, **{"Idempotency-Key": "k-1"})
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert api.get("ann@example.com").json()["fields"] == {"name": "edited"}  # not re-applied
    assert api.changed == [{"news"}, {"news"}]  # the replay syncs nothing
    other = api.post(lines({"email": "zed@example.com"}), **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422
    assert api.post(body, **{"Idempotency-Key": "k\x7f"}).status_code == 400
    assert api.post(body, **{"Idempotency-Key": "x" * 256}).status_code == 400
    later = intake.apply_body(
        db, api.config.ingest, body, "k-1", now=_created(db, "k-1") + intake.IDEMPOTENCY_SECONDS + 1
    )
    assert not later.replayed and later.body["applied"] == 1


def _created(db: Engine, key: str) -> float:
    with Session(db) as session:
        row = session.get(IngestRequest, key)
        assert row is not None
        return row.created_at


def test_two_retries_racing_with_one_key_apply_once(db: Engine) -> None:
    api = Api(db)
    body = lines(*({"email": f"p{i}@example.com", "lists": ["news"]} for i in range(300)))
    answers: list[httpx.Response] = []
    start = threading.Barrier(4)

    def send() -> None:
        start.wait()
        answers.append(api.post(body, **{"Idempotency-Key": "race"}))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [a.status_code for a in answers] == [200] * 4
    replayed = [a.headers.get("idempotent-replayed") == "true" for a in answers]
    assert sorted(replayed) == [False, True, True, True]
    assert {a.json()["created"] for a in answers} == {300}
    assert len(api.changed) == 1


def test_a_revived_contact_keeps_its_opt_out(db: Engine) -> None:
    api = Api(db)
    api.post(lines({"email": "ann@example.com", "status": "unsubscribed"}))
    api.post(lines({"email": "ann@example.com", "delete": True}))
    assert api.get("ann@example.com").status_code == 404  # a tombstone is no contact
    api.post(lines({"email": "ann@example.com", "status": "active", "lists": ["news"]}))
    assert api.get("ann@example.com").json()["status"] == "unsubscribed"


def test_a_body_over_max_body_is_413_before_it_is_read(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'syncd.db'}")
    api = Api(engine, listen="127.0.0.1:0", max_body=2048)
    server = listen(api.config.http, api_routes.routes(engine, lambda: api.config, print))
    try:
        url = f"{server.url}/v1/contacts"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        big = lines(*({"email": f"p{i}@example.com"} for i in range(100)))
        assert len(big) > 2048
        assert httpx.post(url, content=big, headers=auth).status_code == 413
        small = lines({"email": "ann@example.com"})
        assert httpx.post(url, content=small, headers=auth).json()["applied"] == 1
    finally:
        server.stop()
        engine.dispose()
