"""Emulators that really notify: Unisender's ``setHook`` handlers and Octopush's STOP callback,
delivered over loopback HTTP with the providers' retry rules and switches that lose or repeat a
delivery."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from syncd.emulators.kit.server import EmulatorServer
from syncd.emulators.octopush import OctopushEmulator
from syncd.emulators.unisender import UnisenderEmulator

KEY = "hooks-key-19c4"


class Receiver:
    """A handler on loopback that records each POST and answers with the next scripted status."""

    def __init__(self, statuses: Callable[[int], int] = lambda _n: 200) -> None:
        self.got: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.statuses = statuses
        self.arrived = threading.Condition()

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.arrived:
            self.got.append(request)
            self.bodies.append(request.content)
            self.arrived.notify_all()
            return httpx.Response(self.statuses(len(self.got)))

    def wait_for(self, n: int, timeout: float = 5.0) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.got) >= n, timeout), len(self.got)


@pytest.fixture
def emu() -> UnisenderEmulator:
    emulator = UnisenderEmulator(api_key=KEY)
    emulator.add_list("Newsletter")
    emulator.add_list("Offers")
    emulator.add_field("Name")
    emulator.sign_up("ann@example.com", 1)
    emulator.sign_up("ann@example.com", 2)
    return emulator


@pytest.fixture
def api(emu: UnisenderEmulator) -> Iterator[httpx.Client]:
    with EmulatorServer(emu.handle) as server, httpx.Client(base_url=server.url) as client:
        yield client


def call(client: httpx.Client, method: str, **params: Any) -> Any:
    body = client.post(f"/en/api/{method}", data={"api_key": KEY, **params}).json()
    assert "error" not in body, body
    return body["result"]


def admin(client: httpx.Client, op: str, body: dict[str, Any]) -> Any:
    return client.post(f"/_emulator/{op}", json=body).json()


def set_hook(client: httpx.Client, url: str, *events: str, **extra: str) -> Any:
    params = {f"events[{i}]": e for i, e in enumerate(events)}
    return call(client, "setHook", hook_url=url, **params, **extra)


def auth_holds(raw: bytes, key: str) -> bool:
    """Unisender's recipe: the MD5 of the body with its ``auth`` value replaced by the key."""
    body = json.loads(raw)
    given = body["auth"]
    expected = raw.replace(f'"auth":"{given}"'.encode(), f'"auth":"{key}"'.encode())
    return hashlib.md5(expected, usedforsecurity=False).hexdigest() == given


def test_a_list_unsubscribe_is_posted_to_the_hook_that_asked_for_it(
    emu: UnisenderEmulator, api: httpx.Client
) -> None:
    receiver = Receiver()
    with EmulatorServer(receiver.handle) as app:
        hooks = [f"{app.url}/hook", f"{app.url}/other"]
        set_hook(api, hooks[0], "unsubscribe")
        set_hook(api, hooks[1], "contact_delete")  # not asked: never called
        admin(api, "contact", {"action": "unsubscribe", "email": "ann@example.com", "list_id": 2})
        receiver.wait_for(1)
    (request,) = receiver.got
    assert request.url.path == "/hook"
    body = json.loads(request.content)
    assert body["events_by_user"][0]["events"] == [
        {"event_name": "unsubscribe", "event_data": {"email": "ann@example.com", "list_id": 2}}
    ]
    assert auth_holds(request.content, KEY) and not auth_holds(request.content, "other-key")
    assert [h["hook_url"] for h in call(api, "listHooks")] == hooks


def test_a_failing_handler_is_retried_with_a_growing_retry_count(
    emu: UnisenderEmulator, api: httpx.Client
) -> None:
    receiver = Receiver(lambda n: 500 if n < 3 else 200)
    admin(api, "hooks", {"retry_interval": 0.05})
    with EmulatorServer(receiver.handle) as app:
        set_hook(api, f"{app.url}/hook", "email_status")
        admin(api, "contact", {"action": "block", "email": "ann@example.com"})
        receiver.wait_for(3)
        # the handler has answered; the sender records that answer a moment later
        assert emu.hooks.sender.wait_idle()
    counts = [r.url.params.get("retry_count") for r in receiver.got]
    assert counts == [None, "1", "2"]
    assert len({r.content for r in receiver.got}) == 1  # the same event each time
    (delivery,) = admin(api, "hooks", {})["deliveries"]
    assert (delivery["outcome"], delivery["answers"]) == ("delivered", [500, 500, 200])


def test_a_handler_failing_for_the_whole_window_is_stopped_until_set_again(
    emu: UnisenderEmulator, api: httpx.Client
) -> None:
    failing = True
    receiver = Receiver(lambda _n: 503 if failing else 200)
    admin(api, "hooks", {"retry_interval": 0.05, "give_up_after": 0.2})
    with EmulatorServer(receiver.handle) as app:
        url = f"{app.url}/hook"
        set_hook(api, url, "unsubscribe", "contact_update")
        admin(api, "contact", {"action": "unsubscribe", "email": "ann@example.com", "list_id": 1})
        assert emu.hooks.sender.wait_idle()
        assert [h["status"] for h in call(api, "listHooks")] == ["stopped"]
        tried = len(receiver.got)
        admin(api, "contact", {"action": "edit", "email": "ann@example.com", "Name": "Ann"})
        assert emu.hooks.sender.wait_idle() and len(receiver.got) == tried  # kept back
        failing = False
        set_hook(api, url, "unsubscribe", "contact_update", status="active")  # re-activated
        receiver.wait_for(tried + 1)
    last = json.loads(receiver.got[-1].content)["events_by_user"][0]["events"][0]
    assert last["event_name"] == "contact_update"


@pytest.mark.parametrize(("switch", "posts"), [("drop_rate", 0), ("duplicate_rate", 2)])
def test_deliveries_can_be_lost_or_repeated_on_purpose(
    emu: UnisenderEmulator, api: httpx.Client, switch: str, posts: int
) -> None:
    receiver = Receiver()
    admin(api, "hooks", {switch: 1.0})
    with EmulatorServer(receiver.handle) as app:
        set_hook(api, f"{app.url}/hook", "subscribe")
        admin(api, "contact", {"action": "sign_up", "email": "bob@example.com", "list_id": 1})
        assert emu.hooks.sender.wait_idle()
    assert len(receiver.got) == posts


def test_set_hook_with_the_same_url_replaces_it_and_remove_hook_removes_it(
    api: httpx.Client,
) -> None:
    set_hook(api, "http://127.0.0.1:9/hook", "unsubscribe")
    set_hook(api, "http://127.0.0.1:9/hook", "subscribe", "unsubscribe")
    (hook,) = call(api, "listHooks")
    assert hook["events"] == ["subscribe", "unsubscribe"] and hook["status"] == "active"
    assert call(api, "removeHook", hook_url="http://127.0.0.1:9/hook") == {}
    assert call(api, "listHooks") == []


def test_octopush_posts_a_stop_to_its_callback_url() -> None:
    emu = OctopushEmulator(api_key=KEY)
    receiver = Receiver()
    with EmulatorServer(emu.handle) as server, EmulatorServer(receiver.handle) as app:
        httpx.post(f"{server.url}/_emulator/callbacks", json={"url": f"{app.url}/octo"})
        httpx.post(f"{server.url}/_emulator/stop", json={"number": "+33600000001"})
        receiver.wait_for(1)
    body = json.loads(receiver.got[0].content)
    assert set(body) == {"message_id", "number", "text", "stop_date"}
    assert (body["number"], body["text"]) == ("+33600000001", "STOP")
    assert "+33600000001" in emu.blacklist
