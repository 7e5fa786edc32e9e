"""The emulator kit: every emulator is built by its ``make_emulator``, answers the shared
``/_emulator/`` controls, and words an injected error the way its provider does."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from syncd.emulators.kit import EmulatorControls, EmulatorOptions, Faults

KEY = "secret-key"
PROVIDERS = ("unisender", "selzy", "smsby", "octopush", "netcore")
MODULES = {"unisender": "unisender", "selzy": "unisender"}  # the rest: a module per name


def build(provider: str, *, seed: bool = True, primary_key: str = "EMAIL") -> EmulatorControls:
    module = importlib.import_module(f"syncd.emulators.{MODULES.get(provider, provider)}")
    make: Callable[[EmulatorOptions], EmulatorControls] = module.make_emulator
    return make(EmulatorOptions(provider, KEY, seed=seed, primary_key=primary_key))


def one_call(provider: str, client: httpx.Client) -> httpx.Response:
    """One ordinary write call of each provider, with the right key."""
    if provider in ("unisender", "selzy"):
        return client.post("/en/api/createList", data={"api_key": KEY, "title": "Other"})
    if provider == "smsby":
        return client.post("/api/v2/createSubscriberList", data={"token": KEY, "name": "Other"})
    if provider == "octopush":
        headers = {"api-login": "me@example.com", "api-key": KEY}
        return client.post(
            "/v1/public/contact-list/create", json={"list_name": "Other"}, headers=headers
        )
    data = {"type": "contact", "activity": "add", "apikey": KEY, "data": '{"EMAIL": "a@x.io"}'}
    return client.post("/apiv2", data=data)


def client_for(emulator: EmulatorControls) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(emulator.handle), base_url="http://emu")


def list_names(provider: str, state: dict[str, Any]) -> list[str]:
    lists = state["lists"]
    if provider == "octopush":
        return list(lists)
    return [entry["title" if provider in ("unisender", "selzy") else "name"] for entry in lists]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_make_emulator_seeds_the_sample_list_only_when_asked(provider: str) -> None:
    with client_for(build(provider)) as seeded, client_for(build(provider, seed=False)) as empty:
        assert list_names(provider, seeded.get("/_emulator/state").json()) == ["Newsletter"]
        assert list_names(provider, empty.get("/_emulator/state").json()) == []


def test_make_emulator_serves_the_brand_and_primary_key_it_is_given() -> None:
    selzy = build("selzy")
    assert getattr(selzy, "brand", None) == "selzy"
    with client_for(build("netcore", primary_key="MOBILE")) as client:
        assert client.get("/_emulator/state").json()["primary_key"] == "MOBILE"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_emulator_answers_the_shared_controls(provider: str) -> None:
    emulator = build(provider)
    with client_for(emulator) as client:
        assert one_call(provider, client).status_code < 300
        calls = client.get("/_emulator/calls").json()
        assert calls["write_calls"] == 1 and sum(calls["calls"].values()) == 1
        assert client.get("/_emulator/reset-calls").status_code == 405
        assert client.post("/_emulator/reset-calls").json() == {}
        assert client.get("/_emulator/calls").json() == {"calls": {}, "write_calls": 0}
        posted = client.post("/_emulator/faults", json={"latency": 0.0, "seed": 7}).json()
        assert posted == Faults(seed=7).to_json()
        assert client.get("/_emulator/faults").json() == posted | {"injected": {}}
        assert client.post("/_emulator/faults", json={"no_such": 1}).status_code == 400
        assert client.post("/_emulator/nothing-here").status_code == 404


LIMIT = "api_call_limit_exceeded_for_api_key"
WORDED = {
    "unisender": (200, {"error": f"Injected fault: {LIMIT}", "code": LIMIT, "result": ""}),
    "selzy": (200, {"error": f"Injected fault: {LIMIT}", "code": LIMIT, "result": ""}),
    "smsby": (429, {"status": "error", "message": "Превышен лимит запросов"}),
    "octopush": (429, {"code": 429, "message": "Too many requests"}),
    "netcore": (429, {"result": "Rate limit exceeded"}),
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_injected_error_code_is_worded_by_each_provider(provider: str) -> None:
    emulator = build(provider)
    emulator.faults = Faults(error_code_rate=1.0, error_code=LIMIT, retry_after="3")
    with client_for(emulator) as client:
        answer = one_call(provider, client)
        assert (answer.status_code, json.loads(answer.content)) == WORDED[provider]
        assert answer.headers["Retry-After"] == "3"
        injected = client.get("/_emulator/faults").json()["injected"]
        assert injected == {f"{LIMIT} +Retry-After": 1}
