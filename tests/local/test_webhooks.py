"""Signed webhooks: signatures a Standard Webhooks library accepts, the queue's order, retries,
dead letters, 410 Gone, replay, and one delivery across two processes claiming on one store.

The receivers are real loopback HTTP servers whose answers are scripted per request.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, get_args

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from syncd.config import WebhookConfig
from syncd.core.projection import Projection, RemoteChange
from syncd.emulators.kit.server import LoopbackServer
from syncd.local import outbox, webhook_queue
from syncd.local.change_event import ChangeEvent, Kind
from syncd.local.webhook_send import Sender, backoff, sign
from syncd.store import open_engine
from syncd.store.models import OutboxEvent, WebhookDelivery

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()


@dataclass
class Receiver:
    """A loopback endpoint: answers with ``script`` in turn (then 200), keeps what it got."""

    script: list[int] = field(default_factory=list)
    by_event: dict[str, list[int]] = field(default_factory=dict)  # scripts of single events
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.got.append((dict(request.headers), request.read()))
            script = self.by_event.get(request.headers["webhook-id"], self.script)
            status = script.pop(0) if script else 200
        return httpx.Response(status)

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _h, body in self.got]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with LoopbackServer(r, "127.0.0.1", 0) as server:
        yield r, server.url + "/hooks"


@pytest.fixture
def db(store_url: str) -> Iterator[Engine]:
    engine = open_engine(store_url)
    yield engine
    engine.dispose()


def hook(url: str, **settings: Any) -> WebhookConfig:
    return WebhookConfig.model_validate({"name": "app", "url": url, "secret": SECRET, **settings})


def proj(key: str, status: str = "active", **fields: str) -> Projection:
    return Projection.build(key, fields, (), status)


def change(key: str, before: Projection | None, after: Projection | None) -> ChangeEvent:
    return ChangeEvent.from_remote_change(
        RemoteChange("news", key, "pull", before, after), "unisender", "c1"
    )


def record(
    db: Engine, webhooks: list[WebhookConfig], *events: ChangeEvent, now: float = 1000.0
) -> None:
    with Session(db) as session:
        for e in events:
            outbox.record(session, e)
            webhook_queue.enqueue(session, e, webhooks, now=now)
        session.commit()


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows(db: Engine) -> list[WebhookDelivery]:
    with Session(db) as session:
        return list(session.execute(select(WebhookDelivery).order_by(WebhookDelivery.id)).scalars())  # type: ignore[arg-type]


# -- signatures -----------------------------------------------------------------------------


def test_a_standard_webhooks_library_accepts_each_signature_and_the_old_secret_during_rotation(
    receiver: tuple[Receiver, str], db: Engine
) -> None:
    r, url = receiver
    webhook = hook(url, previous_secret=OLD_SECRET)
    e = change("ann@example.com", None, proj("ann@example.com", Name="Ann"))
    record(db, [webhook], e)
    sender = Sender(db, "p1")  # the real clock: the library checks the timestamp is recent
    try:
        assert sender.deliver_due([webhook]) == {"delivered": 1}
    finally:
        sender.close()
    ((headers, body),) = r.got
    assert headers["webhook-id"] == e.id
    for secret in (SECRET, OLD_SECRET):  # a consumer holding either secret accepts it
        assert Webhook(secret).verify(body, headers) == json.loads(e.model_dump_json())
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"Ann", b"Bob"), headers)
    assert rows(db) == []  # delivered: the row is gone


def test_the_signature_is_hmac_sha256_of_id_timestamp_and_body_as_the_library_computes_it() -> None:
    body = b'{"a":1}'
    assert sign(SECRET, "msg_1", 1_700_000_000, body) == Webhook(SECRET).sign(
        "msg_1", _utc(1_700_000_000), body.decode()
    )


def _utc(ts: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC)


# -- queue, order, retries ------------------------------------------------------------------


def test_only_the_event_types_a_webhook_asks_for_are_queued_and_outbox_files_still_get_all(
    db: Engine,
) -> None:
    only_unsubscribes = hook("https://app.example/h", events=["contact.unsubscribed"])
    signup = change("a@example.com", None, proj("a@example.com"))
    leaving = change("b@example.com", proj("b@example.com"), proj("b@example.com", "unsubscribed"))
    blocked = change("c@example.com", proj("c@example.com"), proj("c@example.com", "blocked"))
    record(db, [only_unsubscribes], signup, leaving, blocked)
    assert [(r.event_type, r.key) for r in rows(db)] == [
        ("contact.unsubscribed", "b@example.com"),
        ("contact.unsubscribed", "c@example.com"),
    ]
    with Session(db) as session:
        assert len(session.execute(select(OutboxEvent)).all()) == 3


def test_one_contacts_events_arrive_in_order_even_when_the_first_needs_retries(
    receiver: tuple[Receiver, str], db: Engine
) -> None:
    r, url = receiver
    webhook = hook(url, backoff_first=10)
    ann = "ann@example.com"
    first = change(ann, None, proj(ann, Name="Ann"))
    r.by_event[first.id] = [503, 500]  # the first event's first two attempts fail
    second = change(ann, proj(ann, Name="Ann"), proj(ann, Name="Anna"))
    other = change("bob@example.com", None, proj("bob@example.com"))
    record(db, [webhook], first, second, other)
    clock = Clock()
    sender = Sender(db, "p1", clock=clock)
    try:
        # ann's first fails; bob's goes; ann's second waits behind her first
        assert sender.deliver_due([webhook]) == {"retried": 1, "delivered": 1}
        assert sender.deliver_due([webhook]) == {}  # not due yet, and nothing else may pass
        retry_at = rows(db)[0].next_attempt_at
        assert 1005.0 <= retry_at <= 1010.0  # first retry: half to all of backoff_first
        clock.now = retry_at
        assert sender.deliver_due([webhook]) == {"retried": 1}
        second_wait = rows(db)[0].next_attempt_at - clock.now
        assert 10.0 <= second_wait <= 20.0  # doubled
        clock.now += second_wait
        assert sender.deliver_due([webhook]) == {"delivered": 1}
        assert sender.deliver_due([webhook]) == {"delivered": 1}
    finally:
        sender.close()
    ids = [e["id"] for e in r.events()]
    assert sorted(ids[:2]) == sorted([first.id, other.id])
    assert ids[2:] == [first.id, first.id, second.id]
    assert rows(db) == []


def test_backoff_doubles_from_the_first_wait_within_jitter_and_stops_at_the_cap() -> None:
    assert backoff(1, 20, 3600, rand=lambda: 1.0) == 20
    assert backoff(1, 20, 3600, rand=lambda: 0.0) == 10
    assert backoff(3, 20, 3600, rand=lambda: 1.0) == 80
    assert backoff(30, 20, 3600, rand=lambda: 1.0) == 3600


def test_an_event_failing_past_max_age_is_dead_lettered_kept_and_replayed_once_asked(
    receiver: tuple[Receiver, str], db: Engine
) -> None:
    r, url = receiver
    r.script = [500] * 50
    webhook = hook(url, max_age="1h", backoff_first=600, backoff_max=600)
    e = change("ann@example.com", None, proj("ann@example.com"))
    record(db, [webhook], e)
    clock = Clock()
    sender = Sender(db, "p1", clock=clock)
    try:
        outcomes = []
        while True:
            got = sender.deliver_due([webhook])
            outcomes += list(got.elements())
            if "dead" in got:
                break
            clock.now = rows(db)[0].next_attempt_at
        assert outcomes[-1] == "dead" and set(outcomes[:-1]) == {"retried"}
        assert clock.now - 1000.0 <= 3600  # never retried past max_age
        (row,) = rows(db)
        assert row.state == "dead" and row.last_error == "gave up after max_age: HTTP 500"
        assert webhook_queue.queue_state(db).dead == {"app": 1}
        assert sender.deliver_due([webhook]) == {}  # the dead stay dead
        r.script = []
        assert webhook_queue.replay(db, event_id="f" * 32, now=clock.now) == 0
        assert webhook_queue.replay(db, event_id=e.id, now=clock.now) == 1
        assert sender.deliver_due([webhook]) == {"delivered": 1}
    finally:
        sender.close()
    assert rows(db) == []


def test_410_gone_turns_the_endpoint_off_until_a_replay_and_kills_its_pending_events(
    receiver: tuple[Receiver, str], db: Engine
) -> None:
    r, url = receiver
    r.script = [410]
    webhook = hook(url)
    a = change("a@example.com", None, proj("a@example.com"))
    b = change("a@example.com", proj("a@example.com"), proj("a@example.com", Name="A"))
    record(db, [webhook], a, b)
    clock = Clock()
    sender = Sender(db, "p1", clock=clock)
    try:
        assert sender.deliver_due([webhook]) == {"gone": 1}
        assert [x.state for x in rows(db)] == ["dead", "dead"]
        later = change("z@example.com", None, proj("z@example.com"))
        record(db, [webhook], later)
        clock.now += 100
        assert sender.deliver_due([webhook]) == {}  # off: not called, the new event dies too
        assert len(r.got) == 1
        assert [x.state for x in rows(db)] == ["dead"] * 3
        assert webhook_queue.disabled(db, [webhook]) != {}
        assert webhook_queue.replay(db, now=clock.now) == 3
        assert webhook_queue.disabled(db, [webhook]) == {}
        assert sender.deliver_due([webhook]) == {"delivered": 2}  # a, and z; b waits for a
        assert sender.deliver_due([webhook]) == {"delivered": 1}
    finally:
        sender.close()
    ids = [e["id"] for e in r.events()[1:]]
    assert sorted(ids[:2]) == sorted([a.id, later.id]) and ids[2] == b.id


def test_a_timeout_is_a_failed_attempt_and_a_redirect_is_not_followed(db: Engine) -> None:
    release = threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        release.wait(5)
        return httpx.Response(200)

    with LoopbackServer(slow, "127.0.0.1", 0) as server:
        webhook = hook(server.url, timeout=0.3)
        record(db, [webhook], change("a@example.com", None, proj("a@example.com")))
        sender = Sender(db, "p1", clock=Clock())
        try:
            assert sender.deliver_due([webhook]) == {"retried": 1}
            assert rows(db)[0].last_error == "no answer within 0.3 s"
        finally:
            release.set()
            sender.close()

    def moved(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"location": "http://127.0.0.1:9/elsewhere"})

    with LoopbackServer(moved, "127.0.0.1", 0) as server:
        webhook = hook(server.url)
        clock = Clock(5000.0)
        sender = Sender(db, "p1", clock=clock)
        try:
            assert sender.deliver_due([webhook]) == {"retried": 1}
            assert rows(db)[0].last_error == "HTTP 307"
        finally:
            sender.close()


# -- replicas -------------------------------------------------------------------------------


def test_two_senders_on_one_store_never_send_an_event_twice(
    receiver: tuple[Receiver, str], store_url: str
) -> None:
    r, url = receiver
    webhook = hook(url)
    engines = [open_engine(store_url), open_engine(store_url)]
    events = [change(f"p{i}@example.com", None, proj(f"p{i}@example.com")) for i in range(60)]
    # a contact with several events: its order must hold across the two senders too
    ann = "ann@example.com"
    events += [change(ann, proj(ann, Name=str(i)), proj(ann, Name=str(i + 1))) for i in range(10)]
    record(engines[0], [webhook], *events, now=0.0)
    senders = [Sender(e, f"p{i}") for i, e in enumerate(engines)]
    done = threading.Event()
    errors: list[BaseException] = []

    def work(sender: Sender) -> None:
        try:
            while not done.is_set():
                sender.deliver_due([webhook], limit=5)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in senders]
    for t in threads:
        t.start()
    try:
        _wait(lambda: len(r.got) >= len(events) and not rows(engines[0]))
    finally:
        done.set()
        for t in threads:
            t.join(10)
        for s in senders:
            s.close()
        for e in engines:
            e.dispose()
    assert not errors
    ids = [e["id"] for e in r.events()]
    assert sorted(ids) == sorted(e.id for e in events)  # each once, none twice
    ann_ids = [e.id for e in events if e.key == ann]
    assert [i for i in ids if i in set(ann_ids)] == ann_ids


def _wait(check: Callable[[], bool], timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_claim_left_by_a_dead_process_is_taken_over_after_it_lapses(
    receiver: tuple[Receiver, str], db: Engine
) -> None:
    r, url = receiver
    webhook = hook(url, timeout=5)
    record(db, [webhook], change("a@example.com", None, proj("a@example.com")))
    taken = webhook_queue.claim(db, "dead-process", [webhook], now=1000.0)
    assert len(taken) == 1  # ... and that process is SIGKILLed before it answers
    clock = Clock(1001.0)
    sender = Sender(db, "p2", clock=clock)
    try:
        assert sender.deliver_due([webhook]) == {}
        clock.now = 1000.0 + 5 + webhook_queue.CLAIM_MARGIN + 1
        assert sender.deliver_due([webhook]) == {"delivered": 1}
    finally:
        sender.close()
    assert len(r.got) == 1


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"url": "http://hooks.example.com/x"}, "unencrypted"),
        ({"url": "ftp://127.0.0.1/x"}, "https://"),
        ({"secret": "not base64!"}, "whsec_ followed by base64"),
        ({"secret": "whsec_" + base64.b64encode(b"short").decode()}, "at least 24 random bytes"),
        ({"previous_secret": "whsec_!!"}, "previous_secret must be whsec_"),
        ({"events": ["contact.exploded"]}, "contact.created"),
        ({"events": []}, "at least 1"),
        ({"max_age": "0 0 * * *"}, "a duration"),
        ({"max_age": "soon"}, "max_age 'soon' must be a duration"),
        ({"name": "has space"}, "pattern"),
    ],
)
def test_a_bad_webhook_setting_is_refused_by_name(settings: dict[str, Any], problem: str) -> None:
    base = {"name": "app", "url": "https://app.example/hooks", "secret": SECRET}
    with pytest.raises(ValueError, match=problem):
        WebhookConfig.model_validate(base | settings)


def test_webhook_defaults_loopback_http_and_duplicate_names() -> None:
    from syncd.config import Config

    w = hook("http://127.0.0.1:8800/h")
    assert w.events == [
        "contact.created",
        "contact.updated",
        "contact.unsubscribed",
        "contact.deleted",
    ]
    assert (w.timeout, w.max_age_seconds, w.backoff_first) == (10.0, 3 * 86400, 20.0)
    assert SECRET not in repr(w)  # a secret never shows in a repr or a log line
    twice = {"name": "app", "url": "https://a.example/h", "secret": SECRET}
    with pytest.raises(ValueError, match="duplicate webhook name"):
        Config.model_validate({"webhook": [twice, twice]})


def test_every_kind_of_change_event_has_a_webhook_event_type() -> None:
    """A kind without one would fail the cycle that records it (a KeyError in the recorder)."""
    assert set(webhook_queue.EVENT_TYPES) == set(get_args(Kind))
    assert webhook_queue.EVENT_TYPES["list_unsubscribe"] == "contact.unsubscribed"
