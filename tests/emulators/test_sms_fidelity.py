"""sms.by, Octopush and Netcore emulators where their documents decide: what an import of an
ambiguous or half-readable row does, what authenticates, and what an asynchronous add answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from syncd.emulators.netcore import NetcoreEmulator
from syncd.emulators.octopush import OctopushEmulator
from syncd.emulators.smsby import TWO_SUBSCRIBERS, SmsbyEmulator

KEY = "fidelity-key"


def client_of(handle: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handle), base_url="http://emu")


# ---- sms.by


@pytest.fixture
def smsby() -> Iterator[tuple[SmsbyEmulator, httpx.Client]]:
    emu = SmsbyEmulator(token=KEY)
    emu.add_list("Newsletter")
    with client_of(emu.handle) as client:
        yield emu, client


def smsby_import(client: httpx.Client, rows: list[tuple[str, str]]) -> dict[str, Any]:
    params = {"token": KEY, "list_id": "1", "field_names[0]": "phone", "field_names[1]": "email"}
    for i, (phone, email) in enumerate(rows):
        params |= {f"data[{i}][0]": phone, f"data[{i}][1]": email}
    body: dict[str, Any] = client.post("/api/v2/importContacts", params=params).json()
    return body["result"]


def test_smsby_refuses_a_row_whose_phone_and_email_are_two_subscribers(
    smsby: tuple[SmsbyEmulator, httpx.Client],
) -> None:
    emu, client = smsby
    smsby_import(client, [("375291111111", "ann@example.com"), ("375292222222", "bob@example.com")])
    result = smsby_import(client, [("375291111111", "bob@example.com")])
    assert result == {
        "inserted": 0,
        "updated": 0,
        "invalid": 1,
        "log": [{"index": 0, "error_message": TWO_SUBSCRIBERS}],
    }
    emails = [c["email"] for c in emu.contacts_in_list(1)]
    assert sorted(emails) == ["ann@example.com", "bob@example.com"]  # one subscriber each


def test_smsby_lists_its_mailing_lists(smsby: tuple[SmsbyEmulator, httpx.Client]) -> None:
    emu, client = smsby
    emu.add_list("Promo")
    answer = client.post("/api/v2/getSubscriberLists", data={"token": KEY}).json()
    assert answer == {
        "status": "OK",
        "result": {
            "lists": [{"list_id": 1, "name": "Newsletter"}, {"list_id": 2, "name": "Promo"}]
        },
    }


# ---- Octopush


@pytest.fixture
def octopush() -> Iterator[tuple[OctopushEmulator, httpx.Client]]:
    emu = OctopushEmulator(api_key=KEY)  # no login set: any account address is taken
    emu.add_list("Newsletter")
    with client_of(emu.handle) as client:
        yield emu, client


def octo_create(client: httpx.Client, login: str, numbers: list[str]) -> httpx.Response:
    body = {"contacts": [{"phone_number": n} for n in numbers], "list_name": "Newsletter"}
    headers = {"api-login": login, "api-key": KEY}
    return client.post("/v1/public/contact/create", json=body, headers=headers)


def test_octopush_takes_only_an_address_as_its_login(
    octopush: tuple[OctopushEmulator, httpx.Client],
) -> None:
    _emu, client = octopush
    assert octo_create(client, "me", ["+33600000001"]).status_code == 401
    assert octo_create(client, "me@example.com", ["+33600000001"]).status_code == 201


def test_octopush_reads_a_number_without_its_plus(
    octopush: tuple[OctopushEmulator, httpx.Client],
) -> None:
    emu, client = octopush
    assert octo_create(client, "me@example.com", ["33600000002"]).status_code == 201
    assert emu.get("+33600000002") is not None  # "Lenient input": fixed, not refused


# ---- Netcore


def test_netcore_add_answers_success_and_drops_a_row_without_a_key_later() -> None:
    emu = NetcoreEmulator(api_key=KEY)
    with client_of(emu.handle) as client:
        data = {"type": "contact", "activity": "add", "apikey": KEY}
        bad = client.post("/apiv2", data=data | {"data": json.dumps({"NAME": "Ann"})}).json()
        good = client.post("/apiv2", data=data | {"data": json.dumps({"EMAIL": "a@x.io"})}).json()
        sync = client.post(
            "/apiv2", data=data | {"activity": "addsync", "data": json.dumps({"NAME": "Ann"})}
        ).json()
    assert bad["result"] == good["result"] == "Success"  # "4.1": add checks only the key
    assert sync["result"] != "Success"  # addsync answers what is wrong
    state = emu.state_json(httpx.QueryParams())
    assert [d["data"] for d in state["dropped"]] == [{"NAME": "Ann"}]
    assert [c["EMAIL"] for c in state["contacts"]] == ["a@x.io"]
