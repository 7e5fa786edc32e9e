"""``POST /hooks/{target}/{token}`` without a socket: what is checked, what is queued.

The route is an ``httpx.Request -> httpx.Response`` handler; these tests call it directly with
a real store. Bodies are signed as the Unisender emulator signs them (``unisender_hooks``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from syncd.commands import hook_routes
from syncd.config import Config, parse_config
from syncd.emulators.unisender_hooks import Hooks
from syncd.providers import PROVIDERS
from syncd.store import hooks as store_hooks
from syncd.store import open_engine

KEY = "route-key-1f0e"


def config(tmp_path: Path, **news: Any) -> Config:
    def target(name: str, provider: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "provider": provider,
            "list_id": "1",
            "api_key": KEY,
            "base_url": "http://127.0.0.1:9/api",
            "hooks": True,
            **extra,
        }

    return parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'syncd.db'}"},
            "http": {"listen": "127.0.0.1:0", "public_url": "https://sync.example.com/"},
            "target": [
                target("news", "unisender", **news),
                target("sms", "octopush", key="phone", api_login="ops@example.com"),
                {**target("quiet", "unisender"), "hooks": False},
            ],
        },
        "test",
        providers=PROVIDERS,
    )


class Route:
    def __init__(self, tmp_path: Path, **news: Any) -> None:
        self.config = config(tmp_path, **news)
        self.db: Engine = open_engine(self.config.store.url)
        self.prompts: list[tuple[str, bool]] = []
        self.seen: list[tuple[str, str]] = []
        self.handle = hook_routes.routes(
            self.db,
            lambda: self.config,
            lambda t, full: self.prompts.append((t, full)),
            lambda t, o: self.seen.append((t, o)),
        )
        self.tokens = {t: store_hooks.token_for(self.db, t) for t in ("news", "sms", "quiet")}

    def post(self, target: str, content: bytes, token: str | None = None) -> httpx.Response:
        path = f"/hooks/{target}/{token or self.tokens[target]}"
        return self.handle(httpx.Request("POST", f"http://127.0.0.1{path}", content=content))

    def queued(self) -> list[tuple[str, str]]:
        return store_hooks.take(self.db, "news") + store_hooks.take(self.db, "sms")


@pytest.fixture
def route(tmp_path: Path) -> Route:
    return Route(tmp_path)


def event(email: str, name: str = "unsubscribe") -> dict[str, Any]:
    data = {"email": email, "list_id": 1}
    return {"auth": "", "events_by_user": [{"user_id": 1, "events": [
        {"event_name": name, "event_data": data}]}]}  # fmt: skip


def signed(body: dict[str, Any], key: str = KEY) -> bytes:
    return Hooks(key).signed(body)


def test_a_signed_event_queues_its_normalised_key_and_wakes_the_worker(route: Route) -> None:
    answer = route.post("news", signed(event("Ann@Example.COM")))
    assert answer.status_code == 200
    assert route.queued() == [("ann@example.com", store_hooks.REREAD)]
    assert route.prompts == [("news", False)] and route.seen == [("news", "queued")]


@pytest.mark.parametrize(
    ("target", "token", "body"),
    [
        ("news", None, signed(event("ann@example.com"), "another-key")),  # forged auth
        ("news", "not-the-token", signed(event("ann@example.com"))),  # wrong token
        ("sms", "not-the-token", b'{"number": "+33600000001", "stop_date": "x"}'),
        ("quiet", None, signed(event("ann@example.com"))),  # hooks not on
        ("nowhere", "x", signed(event("ann@example.com"))),  # no such target
    ],
)
def test_what_fails_verification_is_403_and_queues_nothing(
    route: Route, target: str, token: str | None, body: bytes
) -> None:
    answer = route.post(target, body, token or route.tokens.get(target))
    assert answer.status_code == 403
    assert route.queued() == [] and route.prompts == []
    assert route.seen[0][1] == "forbidden"


def test_a_repeated_body_or_key_queues_once(route: Route) -> None:
    body = signed(event("ann@example.com"))
    assert route.post("news", body).status_code == 200
    assert route.post("news", body).status_code == 200  # the same delivery again
    assert route.post("news", signed(event("ann@example.com", "email_status"))).status_code == 200
    assert route.queued() == [("ann@example.com", store_hooks.REREAD)]
    assert [o for _, o in route.seen] == ["queued", "duplicate", "duplicate"]


def test_auth_off_takes_an_unsigned_event(tmp_path: Path) -> None:
    route = Route(tmp_path, hook_auth="off")
    body = json.dumps(event("bob@example.com")).encode()
    assert route.post("news", body).status_code == 200
    assert route.queued() == [("bob@example.com", store_hooks.REREAD)]


def test_the_recipe_is_read_both_ways() -> None:
    body = event("ann@example.com")
    compact = signed(body)
    spaced = json.dumps({**body, "auth": "KEYHOLE"}).replace("KEYHOLE", KEY).encode()
    digest = hashlib.md5(spaced, usedforsecurity=False).hexdigest()
    spaced = spaced.replace(KEY.encode(), digest.encode())
    for raw in (compact, spaced):
        assert hook_routes.auth_holds(raw, json.loads(raw), KEY)
        assert not hook_routes.auth_holds(raw, json.loads(raw), KEY + "x")


def test_an_octopush_stop_queues_an_opt_out_and_a_receipt_is_ignored(route: Route) -> None:
    stop = {"message_id": "m1", "number": "+33600000001", "text": "STOP", "stop_date": "x"}
    receipt = {"message_id": "m2", "number": "+33600000002", "status": "DELIVERED",
               "delivery_date": "x"}  # fmt: skip
    assert route.post("sms", json.dumps(stop).encode()).status_code == 200
    assert route.post("sms", json.dumps(receipt).encode()).status_code == 200
    assert route.queued() == [("+33600000001", store_hooks.OPT_OUT)]
    assert route.post("sms", b"not json").status_code == 400


def test_a_phone_keyed_target_asks_for_a_full_cycle(tmp_path: Path) -> None:
    route = Route(tmp_path, key="phone")
    assert route.post("news", signed(event("ann@example.com"))).status_code == 200
    assert route.queued() == [] and route.prompts == [("news", True)]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"http": {"listen": "127.0.0.1:0"}}, "set [http] listen and [http] public_url"),
        ({"http": {"listen": "off", "public_url": "https://a.example"}}, "[http] listen"),
        ({"http": {"listen": "127.0.0.1:0", "public_url": "ftp://a"}}, "public_url must be"),
        ({"provider": "smsby"}, "sends no event notifications"),
    ],
)
def test_hooks_need_a_listener_a_public_url_and_a_provider_that_notifies(
    tmp_path: Path, change: dict[str, Any], says: str
) -> None:
    from syncd.errors import ConfigError

    target = {"name": "news", "provider": change.get("provider", "unisender"), "list_id": "1",
              "api_key": KEY, "hooks": True}  # fmt: skip
    data = {"store": {"url": f"sqlite:///{tmp_path / 'x.db'}"}, "target": [target]}
    data["http"] = change.get("http", {"listen": "127.0.0.1:0", "public_url": "https://a.ex"})
    with pytest.raises(ConfigError, match=re.escape(says)):
        parse_config(data, "test", providers=PROVIDERS)
