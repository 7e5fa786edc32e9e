"""The Octopush adapter against its emulator (in-process and over loopback HTTP), and the emulator.

Wire facts: shared/providers/octopush.md (cited by row name) and seeds/003_* ("seed 003").
What every adapter promises is ``contract.py``'s, run here by ``TestOctopushContract``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, ClassVar

import httpx
import pytest
from conftest import emulator_process
from contract import ProviderContract
from provider_helpers import Recorder, admin, answering, row

from syncd.emulators.kit import Faults
from syncd.emulators.kit.server import EmulatorServer
from syncd.emulators.octopush import OctopushEmulator
from syncd.errors import AuthError, ProviderError
from syncd.providers import make_provider
from syncd.providers.octopush import REMOTE_FIELDS, OctopushProvider

LOGIN, KEY = "ops@example.com", "octo-key-77aa"
ROOT = "https://api.octopush.test/v1/public"
LIST = "Newsletter"
ANN, BOB = "+33612345678", "+33612345679"


class TestOctopushContract(ProviderContract[OctopushProvider]):
    adapter_class = OctopushProvider
    provider = "octopush"
    api_key = KEY
    settings: ClassVar[dict[str, Any]] = {
        "name": "sms",
        "list_id": LIST,
        "key": "phone",
        "api_login": LOGIN,
        "base_url": ROOT,
        "fields": {"first_name": "name", "param1": "city"},
    }
    keys = (BOB, ANN, "+33612345670")
    columns = ("first_name", "param1")
    prepare_settings: ClassVar[dict[str, Any]] = {"list_id": "l", "create_missing_list": True}
    answer_names: ClassVar[list[str]] = ["code", "message", "error", "errors"]

    def emulator(self) -> OctopushEmulator:
        emulator = OctopushEmulator(api_login=LOGIN, api_key=KEY)
        emulator.add_list(LIST)
        return emulator

    def sent_rows(self, request: httpx.Request) -> list[dict[str, str]]:
        sent = body(request)
        if "contacts" in sent:
            return list(sent["contacts"])
        return [{"phone_number": n} for n in sent["phone_numbers"]]

    def column_names(self, n: int) -> tuple[str, ...]:
        return REMOTE_FIELDS[:n]


target = TestOctopushContract.target
adapter = TestOctopushContract.adapter
call = TestOctopushContract.call


def phones(n: int, start: int = 0) -> list[str]:
    return [f"+336{10000000 + i:08d}" for i in range(start, start + n)]


@pytest.fixture
def emu() -> OctopushEmulator:
    return TestOctopushContract().emulator()


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


# --------------------------------------------------------------------------- capabilities


def test_capabilities_follow_the_settings() -> None:
    caps = adapter(transport=answering(b"", 201)).capabilities
    assert (caps.export, caps.delete, caps.exclude, caps.tags) == (False, True, False, False)
    assert caps.rows_per_call == 500 and caps.fields_per_call == 7
    assert caps.statuses == frozenset({"active"})
    small = adapter(transport=answering(b"", 201), max_rows_per_call=3)
    assert small.capabilities.rows_per_call == 3


# --------------------------------------------------------------------------- push


def test_create_is_a_json_upsert_with_headers_and_e164_numbers(emu: OctopushEmulator) -> None:
    recorder = Recorder(emu.handle)
    provider = adapter(transport=recorder)
    out = provider.push(
        call(
            "create",
            row("create", ANN, {"first_name": "Ann", "param1": "Paris"}),
            row("create", BOB),
        )
    )
    assert [(o.key, o.ok) for o in out] == [(ANN, True), (BOB, True)]
    (request,) = recorder.requests
    assert (request.method, request.url.path) == ("POST", "/v1/public/contact/create")
    assert request.headers["api-login"] == LOGIN and request.headers["api-key"] == KEY  # "Auth"
    assert request.headers["content-type"] == "application/json"
    assert KEY not in request.content.decode()
    assert body(request) == {
        "contacts": [
            {"phone_number": ANN, "first_name": "Ann", "param1": "Paris"},
            {"phone_number": BOB, "first_name": "", "param1": ""},
        ],
        "list_name": LIST,
        "do_not_overwrite": False,
    }
    assert emu.get(ANN)["lists"] == [LIST] and emu.get(ANN)["param1"] == "Paris"

    assert provider.push(call("update", row("update", ANN, {"first_name": "Anne"})))[0].ok
    assert emu.get(ANN)["first_name"] == "Anne" and emu.get(ANN)["param1"] == ""  # overwritten


def test_delete_is_list_scoped_json_on_delete_in_calls_of_200(emu: OctopushEmulator) -> None:
    numbers = phones(450)
    provider = adapter(emu)
    assert all(o.ok for o in provider.push(call("create", *(row("create", n) for n in numbers))))
    emu.add_list("Other")
    emu.contacts[numbers[0]].lists.add("Other")
    recorder = Recorder(emu.handle)
    provider = adapter(transport=recorder)
    out = provider.push(call("delete", *(row("delete", n) for n in numbers)))
    assert all(o.ok for o in out) and len(out) == 450
    assert [(r.method, len(body(r)["phone_numbers"])) for r in recorder.requests] == [
        ("DELETE", 200),
        ("DELETE", 200),
        ("DELETE", 50),
    ]  # "Delete contacts": 1 to 200 numbers, JSON body on DELETE
    assert {body(r)["list_name"] for r in recorder.requests} == {LIST}
    assert emu.contacts_in_list(LIST) == []
    assert emu.get(numbers[0])["lists"] == ["Other"]  # the account keeps it (DESIGN §8)
    # a retried delete of numbers already gone succeeds
    assert provider.push(call("delete", row("delete", numbers[1])))[0].ok


def test_a_refused_number_is_isolated_and_gets_the_providers_message(
    emu: OctopushEmulator,
) -> None:
    numbers = phones(8)
    emu.refuse_number(numbers[5])
    recorder = Recorder(emu.handle)
    out = adapter(transport=recorder).push(call("create", *(row("create", n) for n in numbers)))
    assert [o.ok for o in out] == [True] * 5 + [False] + [True] * 2
    assert (out[5].code, out[5].message) == ("117", f"Invalid phone number: {numbers[5]}")
    assert not out[5].retryable
    assert len(recorder.requests) == 7  # 8 -> 4+4 -> 2+2 -> 1+1
    assert len(emu.contacts_in_list(LIST)) == 7


def test_a_batch_refused_as_too_large_is_split_and_remembered(emu: OctopushEmulator) -> None:
    emu.max_contacts = 3  # the real limit is [UNCONFIRMED]
    recorder = Recorder(emu.handle)
    provider = adapter(transport=recorder, max_rows_per_call=10)
    out = provider.push(call("create", *(row("create", n) for n in phones(10))))
    assert all(o.ok for o in out)
    sizes = [len(body(r)["contacts"]) for r in recorder.requests]
    assert sizes == [10, 5, 3, 2, 3, 2]  # 10 refused (305), 5 refused, then halves of at most 3
    recorder.requests.clear()
    assert all(
        o.ok for o in provider.push(call("create", *(row("create", n) for n in phones(6, 10))))
    )
    assert [len(body(r)["contacts"]) for r in recorder.requests] == [3, 3]  # learned


def test_a_refusal_of_every_part_alike_is_about_the_call() -> None:
    refused = {"code": 999, "message": "List name invalid"}
    provider = adapter(transport=answering(refused, 400))
    with pytest.raises(ProviderError, match=r"concerns the call.*List name invalid"):
        provider.push(call("create", row("create", ANN), row("create", BOB)))
    out = provider.push(call("create", row("create", ANN)))  # one row: the row is refused
    assert (out[0].ok, out[0].code, out[0].message) == (False, "999", "List name invalid")


def test_the_split_budget_bounds_the_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    import syncd.providers.octopush as octopush

    monkeypatch.setattr(octopush, "SPLIT_CALLS", 2)
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        contacts = body(request)["contacts"]
        seen.append(len(contacts))
        bad = [c["phone_number"] for c in contacts if c["phone_number"] in (ANN, BOB)]
        if bad:
            return httpx.Response(400, json={"code": 117, "message": f"Invalid {bad[0]}"})
        return httpx.Response(201)

    rows = [row("create", n) for n in [ANN, *phones(2), BOB]]
    out = adapter(transport=httpx.MockTransport(handler)).push(call("create", *rows))
    assert seen == [4, 2, 2]
    assert [(o.ok, o.retryable) for o in out] == [(False, True)] * 4
    assert out[0].message.startswith("not sent: contact/create refused its batch")


def test_auth_rate_limits_and_unexpected_answers() -> None:
    unauthorized = {"code": 401, "message": "unauthorized"}
    with pytest.raises(AuthError, match=r"unauthorized.*api_login"):
        adapter(transport=answering(unauthorized, 401)).push(call("create", row("create", ANN)))
    answers = [httpx.Response(429, json={"code": 429, "message": "Too many"}), httpx.Response(201)]
    provider = adapter(transport=httpx.MockTransport(lambda r: answers.pop(0)))
    assert provider.push(call("create", row("create", ANN)))[0].ok
    assert provider.stats.by_method[("contact/create", "retry")] == 1
    gone = {"code": 404, "message": "Not found"}
    with pytest.raises(ProviderError, match=r"Not found \(HTTP 404\)"):
        adapter(transport=answering(gone, 404)).push(call("create", row("create", ANN)))


# --------------------------------------------------------------------------- prepare


def test_prepare_refuses_unmapped_fields_email_keys_and_long_list_names(
    emu: OctopushEmulator,
) -> None:
    with pytest.raises(ProviderError, match=r"only first_name, .*param5.*\(not City\)"):
        adapter(emu).prepare(["first_name", "City"], create_missing=True)
    with pytest.raises(ProviderError, match='set key = "phone"'):
        adapter(emu, key="email").prepare([], create_missing=True)
    with pytest.raises(ProviderError, match="at most 30 characters"):
        adapter(emu, list_id="x" * 31).prepare([], create_missing=True)


def test_create_missing_list_creates_it_once_and_accepts_an_existing_one(
    emu: OctopushEmulator,
) -> None:
    name = f"L{uuid.uuid4().hex[:8]}"
    recorder = Recorder(emu.handle)
    for _ in range(2):
        adapter(transport=recorder, list_id=name, create_missing_list=True).prepare(
            ["first_name"], create_missing=True
        )
    assert [(r.url.path, body(r)) for r in recorder.requests] == [
        ("/v1/public/contact-list/create", {"list_name": name})  # "Create list"
    ]
    assert name in emu.lists
    adapter(emu, list_id=LIST, create_missing_list=True).prepare([], create_missing=True)
    adapter(emu, list_id="NotDuringPlan", create_missing_list=True).prepare(
        [], create_missing=False
    )
    assert "NotDuringPlan" not in emu.lists


# --------------------------------------------------------------------------- the emulator


def request(
    emu: OctopushEmulator, verb: str, path: str, payload: Any, **headers: str
) -> httpx.Response:
    auth = {"api-login": LOGIN, "api-key": KEY} | headers
    return emu.handle(
        httpx.Request(verb, f"http://emu.test/v1/public/{path}", json=payload, headers=auth)
    )


def test_emulator_is_lenient_as_documented(emu: OctopushEmulator) -> None:
    answer = request(
        emu,
        "POST",
        "contact/create",
        {
            "contacts": [
                {"phone_number": "0033 6 12-34.56.78", "first_name": 42, "unknown": "x"},
                {"phone_number": "+33 (6) 12345679", "param5": True},
            ],
            "list_name": "Fresh",  # seed 003: "the list name you want to create"
            "tag_name": "vip",
            "do_not_overwrite": "false",
            "mystery": 1,
        },
    )
    assert answer.status_code == 201 and answer.json() == {"number_of_contacts": 2}
    assert emu.get(ANN)["first_name"] == "42" and emu.get(BOB)["param5"] == "true"
    assert emu.get(ANN)["lists"] == ["Fresh"] and emu.get(ANN)["tags"] == ["vip"]


def test_emulator_do_not_overwrite_un_list_and_the_blacklist(emu: OctopushEmulator) -> None:
    request(
        emu,
        "POST",
        "contact/create",
        {"contacts": [{"phone_number": ANN, "first_name": "A"}], "list_name": LIST},
    )
    request(
        emu,
        "POST",
        "contact/create",
        {"contacts": [{"phone_number": ANN, "first_name": "B"}], "do_not_overwrite": True},
    )
    assert emu.get(ANN)["first_name"] == "A"  # dev.octopush.com wording: true skips existing
    request(
        emu,
        "POST",
        "contact/create",
        {"contacts": [{"phone_number": ANN}], "list_name": "Other", "un_list": 1},
    )
    assert emu.get(ANN)["lists"] == ["Other"]
    emu.add_to_blacklist(BOB)
    request(
        emu,
        "POST",
        "contact/create",
        {"contacts": [{"phone_number": BOB}], "auto_remove_blacklisted_numbers": True},
    )
    assert emu.get(BOB) is None


def test_emulator_errors_and_limits(emu: OctopushEmulator) -> None:
    bad = request(emu, "POST", "contact/create", {"contacts": [{"phone_number": "12"}]})
    assert (bad.status_code, bad.json()["code"]) == (400, 117)
    too_many = request(emu, "DELETE", "contact/delete", {"phone_numbers": phones(201)})
    assert (too_many.status_code, too_many.json()["code"]) == (400, 305)  # "Delete contacts"
    assert request(emu, "DELETE", "contact/delete", {"phone_numbers": []}).status_code == 400
    assert request(emu, "POST", "contact/create", {}, **{"api-key": "wrong"}).json() == {
        "code": 401,
        "message": "unauthorized",
    }
    assert request(emu, "POST", "contact/delete", {"phone_numbers": [ANN]}).status_code == 405
    assert request(emu, "POST", "contact/nope", {}).status_code == 404
    not_json = emu.handle(
        httpx.Request(
            "POST",
            "http://emu.test/v1/public/contact/create",
            content=b"phone=1",
            headers={"api-login": LOGIN, "api-key": KEY},
        )
    )
    assert not_json.status_code == 400
    assert request(emu, "POST", "contact-list/create", {"list_name": "VIP"}).status_code == 201
    again = request(emu, "POST", "contact-list/create", {"list_name": "VIP"})
    assert again.status_code == 400 and "already exists" in again.json()["message"]
    request(emu, "POST", "contact/create", {"contacts": [{"phone_number": ANN}], "list_name": LIST})
    deleted = request(emu, "DELETE", "contact/delete", {"phone_numbers": [ANN]})
    assert deleted.status_code == 204 and emu.get(ANN) is None  # no list_name: the account


def test_emulator_admin_routes_and_faults(emu: OctopushEmulator) -> None:
    admin(emu, "POST", "refuse", {"phone_number": BOB, "message": "Unroutable"})
    admin(emu, "POST", "blacklist", {"phone_number": ANN})
    admin(emu, "POST", "list", {"name": "VIP"})
    state = admin(emu, "GET", "state").json()
    assert state["lists"] == [LIST, "VIP"] and state["blacklist"] == [ANN]
    refused = request(emu, "POST", "contact/create", {"contacts": [{"phone_number": BOB}]})
    assert refused.json()["message"] == "Unroutable"
    admin(emu, "POST", "faults", {"error_code_rate": 1.0, "error_code": "api_call_limit_exceeded"})
    assert request(emu, "POST", "contact/create", {}).status_code == 429
    admin(emu, "POST", "faults", {"error_code_rate": 1.0, "error_code": "boom"})
    assert request(emu, "POST", "contact/create", {}).json()["message"] == "Injected fault: boom"
    assert admin(emu, "GET", "calls").json() == {"calls": {"contact/create": 3}, "write_calls": 3}


def test_over_loopback_http(emu: OctopushEmulator) -> None:
    emu.refuse_number(BOB)
    emu.faults = Faults(http_5xx_rate=1.0, methods={"contact-list/create"}, seed=1)
    with EmulatorServer(emu.handle) as server:
        provider = make_provider(target(base_url=f"{server.url}/v1/public"), sleep=lambda _s: None)
        try:
            provider.prepare(["first_name", "param1"], create_missing=True)
            out = provider.push(
                call("create", row("create", ANN, {"first_name": "Ann"}), row("create", BOB))
            )
            gone = provider.push(call("delete", row("delete", ANN)))
        finally:
            provider.close()
    assert [o.ok for o in out] == [True, False] and out[1].message == f"Invalid phone number: {BOB}"
    assert gone[0].ok and emu.contacts_in_list(LIST) == [] and emu.get(ANN) is not None


def test_syncd_emulate_octopush_serves_the_seeded_list_and_its_fault_flags() -> None:
    with emulator_process("octopush", KEY, "--5xx-rate", "1") as url:
        auth = {"api-login": LOGIN, "api-key": KEY}
        failing = httpx.post(f"{url}/v1/public/contact/create", json={}, headers=auth)
        assert failing.status_code == 503
        httpx.post(f"{url}/_emulator/faults", json={})  # switched off live
        provider = make_provider(target(base_url=f"{url}/v1/public"), sleep=lambda _s: None)
        try:
            out = provider.push(call("create", row("create", ANN, {"first_name": "Ann"})))
        finally:
            provider.close()
        assert out[0].ok
        state = httpx.get(f"{url}/_emulator/state", params={"list_name": LIST}).json()
    assert state["lists"] == [LIST] and state["contacts"][0]["first_name"] == "Ann"
