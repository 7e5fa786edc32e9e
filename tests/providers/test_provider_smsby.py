"""The sms.by adapter against its emulator (in-process and over loopback HTTP), and the emulator.

Wire facts: shared/providers/smsby.md (cited by row name) and seeds/000_* ("seed 000"). What
every adapter promises is ``contract.py``'s, run here by ``TestSmsbyContract``.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar
from urllib.parse import urlencode

import httpx
import pytest
from conftest import emulator_process
from contract import ProviderContract
from provider_helpers import Recorder, admin, answering, form, header_and_rows, imported_rows, row

from syncd.emulators.kit import Faults
from syncd.emulators.kit.server import EmulatorServer
from syncd.emulators.smsby import SmsbyEmulator
from syncd.errors import AuthError, ProviderError
from syncd.providers import make_provider
from syncd.providers.smsby import SmsbyProvider

TOKEN = "smsby-token-5e1c"
ROOT = "https://app.smsby.test/api/v2"
ANN, BOB = "+375291111111", "+375291111112"


class TestSmsbyContract(ProviderContract[SmsbyProvider]):
    adapter_class = SmsbyProvider
    provider = "smsby"
    api_key = TOKEN
    settings: ClassVar[dict[str, Any]] = {
        "name": "sms",
        "key": "phone",
        "base_url": ROOT,
        "fields": {"name": "name", "email": "email"},
    }
    keys = (BOB, ANN, "+375291111113")
    columns = ("name", "email")
    prepare_settings: ClassVar[dict[str, Any]] = {
        "list_id": "fuzz list",
        "create_missing_list": True,
    }
    answer_names: ClassVar[list[str]] = [
        "status", "result", "error", "message", "inserted", "updated", "invalid", "log",
        "index", "error_message", "list_id",
    ]  # fmt: skip

    def emulator(self) -> SmsbyEmulator:
        emulator = SmsbyEmulator(token=TOKEN)
        emulator.add_list("Newsletter")
        return emulator

    def sent_rows(self, request: httpx.Request) -> list[dict[str, str]]:
        return imported_rows(request)

    def value(self, column: str, i: int) -> str:
        return f"p{i}@example.com" if column == "email" else f"{column} {i}"

    @staticmethod
    def envelope(value: Any) -> Any:
        if isinstance(value, dict) and "status" in value:
            return value
        return {"status": "OK", "result": value}


target = TestSmsbyContract.target
adapter = TestSmsbyContract.adapter
call = TestSmsbyContract.call


@pytest.fixture
def emu() -> SmsbyEmulator:
    return TestSmsbyContract().emulator()


# --------------------------------------------------------------------------- capabilities


def test_capabilities_declare_a_push_only_provider() -> None:
    caps = SmsbyProvider.capabilities
    assert (caps.export, caps.delete, caps.exclude, caps.tags) == (False, False, False, False)
    assert caps.rows_per_call == 500  # "Import limits"
    assert caps.fields_per_call == 29  # 30 field names, the key column among them (seed 000)
    assert caps.statuses == frozenset({"active"})


# --------------------------------------------------------------------------- push


def test_import_sends_token_in_the_body_phones_without_plus_and_reads_counts(
    emu: SmsbyEmulator,
) -> None:
    recorder = Recorder(emu.handle)
    provider = adapter(transport=recorder)
    outcomes = provider.push(
        call("create", row("create", ANN, {"name": "Ann"}), row("create", BOB, {"name": "Bob"}))
    )
    assert [(o.key, o.ok) for o in outcomes] == [(ANN, True), (BOB, True)]
    (request,) = recorder.requests
    assert request.method == "POST" and request.url.path == "/api/v2/importContacts"
    assert ("token", TOKEN) in form(request) and ("list_id", "1") in form(request)
    header, rows = header_and_rows(request)
    assert header == ["phone", "name", "email"]  # seed 000: the key column first
    assert rows == [["375291111111", "Ann", ""], ["375291111112", "Bob", ""]]  # "Phone format"
    assert emu.get(1, ANN) == {"phone": "375291111111", "email": "", "fields": {"name": "Ann"}}

    again = provider.push(call("update", row("update", ANN, {"name": "Anna"})))
    assert again[0].ok and emu.get(1, ANN)["fields"] == {"name": "Anna"}  # "Import semantics"
    assert len(emu.contacts_in_list(1)) == 2


def test_invalid_rows_come_back_one_by_one_with_the_providers_message(emu: SmsbyEmulator) -> None:
    provider = adapter(emu)
    outcomes = provider.push(
        call(
            "create",
            row("create", ANN, {"name": "Ann"}),
            row("create", BOB, {"name": "Bob", "email": "not-an-email"}),
        )
    )
    assert outcomes[0].ok
    assert (outcomes[1].ok, outcomes[1].code, outcomes[1].message) == (
        False,
        "invalid",
        "Incorrect email",
    )
    assert not outcomes[1].retryable
    assert emu.get(1, BOB) is None


def test_a_bad_mapped_phone_gets_the_documented_message(emu: SmsbyEmulator) -> None:
    provider = adapter(emu, key="email", fields={"phone": "mobile"})
    outcomes = provider.push(
        call(
            "create",
            row("create", "ann@example.com", {"phone": "+375 29 111"}),
            row("create", "bob@example.com", {"phone": "+375291111112"}),
            columns=("phone",),
        )
    )
    assert [(o.ok, o.message) for o in outcomes] == [
        (False, "Incorrect phone number"),  # seed 000
        (True, ""),
    ]
    assert emu.get(1, "bob@example.com")["phone"] == "375291111112"


def test_opted_out_rows_and_deletes_are_refused_without_a_call(emu: SmsbyEmulator) -> None:
    recorder = Recorder(emu.handle)
    provider = adapter(transport=recorder)
    out = provider.push(call("create", row("create", ANN, {"name": "A"}, status="unsubscribed")))
    assert (out[0].ok, out[0].code) == (False, "opt_out_unsupported")
    out = provider.push(call("delete", row("delete", ANN), columns=()))
    assert (out[0].ok, out[0].code) == (False, "unsupported")
    assert recorder.requests == [] and provider.stats.writes == 0


def test_thirty_field_names_fit_in_one_call(emu: SmsbyEmulator) -> None:
    columns = tuple(f"f{i}" for i in range(29))
    provider = adapter(emu, fields={c: c for c in columns})
    out = provider.push(
        call("create", row("create", ANN, {c: "x" for c in columns}), columns=columns)
    )
    assert out[0].ok and len(emu.get(1, ANN)["fields"]) == 29


# --------------------------------------------------------------------------- reading answers


def test_counters_may_add_up_to_fewer_rows_than_sent() -> None:
    # "updated" counts rows changed: a row resent unchanged counts nowhere, yet went in
    body = {"status": "OK", "result": {"inserted": 0, "updated": 1, "invalid": 0}}
    out = adapter(transport=answering(body)).push(
        call("update", row("update", ANN), row("update", BOB))
    )
    assert all(o.ok for o in out)


@pytest.mark.parametrize(
    ("result", "match"),
    [
        ({"inserted": 2}, "lacks inserted, updated or invalid"),
        ({"inserted": 2, "updated": 1, "invalid": 0}, "counts 3 rows but 2"),
        ({"inserted": 1, "updated": 0, "invalid": 1}, "names 0"),
        ({"inserted": 1, "updated": 0, "invalid": 1, "log": [{"index": 7}]}, "names no row"),
        ("done", "not an object"),
    ],
)
def test_an_answer_that_does_not_add_up_confirms_nothing(result: Any, match: str) -> None:
    provider = adapter(transport=answering({"status": "OK", "result": result}))
    with pytest.raises(ProviderError, match=match):
        provider.push(call("create", row("create", ANN), row("create", BOB)))


def test_a_log_naming_more_rows_than_invalid_confirms_none_of_them() -> None:
    result = {
        "inserted": 1,
        "updated": 0,
        "invalid": 1,
        "log": [
            {"index": 0, "error_message": "Incorrect phone number"},
            {"index": 1, "error_message": "probably a warning"},
        ],
    }
    out = adapter(transport=answering({"status": "OK", "result": result})).push(
        call("create", row("create", ANN), row("create", BOB), row("create", "+375291111113"))
    )
    assert [(o.ok, o.retryable) for o in out] == [(False, True), (False, True), (True, False)]


def test_errors_access_denied_and_rate_limits() -> None:
    with pytest.raises(AuthError, match="access denied"):
        adapter(transport=answering({"error": "Access denied"}, 403)).push(
            call("create", row("create", ANN))
        )
    with pytest.raises(ProviderError, match="List 9 not found"):
        adapter(transport=answering({"error": "List 9 not found"})).push(
            call("create", row("create", ANN))
        )

    limited = {"status": "error", "message": "Превышен лимит запросов"}
    done = {"status": "OK", "result": {"inserted": 1, "updated": 0, "invalid": 0}}
    answers = [
        httpx.Response(429, json=limited),
        httpx.Response(200, json=limited),
        httpx.Response(200, json=done),
    ]
    provider = adapter(transport=httpx.MockTransport(lambda request: answers.pop(0)))
    assert provider.push(call("create", row("create", ANN)))[0].ok  # "Rate limits": retried
    assert provider.stats.by_method[("importContacts", "retry")] == 2


def test_an_unknown_list_is_the_providers_error(emu: SmsbyEmulator) -> None:
    with pytest.raises(ProviderError, match="List 42 not found"):
        adapter(emu, list_id="42").push(call("create", row("create", ANN)))


# --------------------------------------------------------------------------- prepare


def test_prepare_checks_the_fields_and_a_numeric_list_without_a_call(emu: SmsbyEmulator) -> None:
    recorder = Recorder(emu.handle)
    adapter(transport=recorder).prepare(["name", "email"], create_missing=True)
    assert recorder.requests == []
    with pytest.raises(ProviderError, match="`phone` is the key"):
        adapter(emu).prepare(["phone", "name"], create_missing=True)
    with pytest.raises(ProviderError, match="list's number"):
        adapter(emu, list_id="Newsletter").prepare([], create_missing=True)


def test_create_missing_list_creates_it_once_and_asks_for_its_number(emu: SmsbyEmulator) -> None:
    name = f"List {uuid.uuid4().hex[:8]}"
    recorder = Recorder(emu.handle)
    with pytest.raises(ProviderError, match=r'set list_id = "2"') as info:
        adapter(transport=recorder, list_id=name, create_missing_list=True).prepare(
            [], create_missing=True
        )
    assert info.value.code == "list_created"
    assert [(r.url.path, ("name", name) in form(r)) for r in recorder.requests] == [
        ("/api/v2/createSubscriberList", True)  # "Create list"
    ]
    assert emu.lists[2].name == name
    with pytest.raises(ProviderError, match=r'list_id = "2"'):  # the same process: no new list
        adapter(transport=recorder, list_id=name, create_missing_list=True).prepare(
            [], create_missing=True
        )
    assert len(recorder.requests) == 1 and len(emu.lists) == 2
    with pytest.raises(ProviderError, match="would be created"):  # never during a plan
        adapter(emu, list_id="Other", create_missing_list=True).prepare([], create_missing=False)


# --------------------------------------------------------------------------- the emulator


def emulator_call(emu: SmsbyEmulator, method: str, query: dict[str, str]) -> httpx.Response:
    url = f"http://emu.test/api/v2/{method}?{urlencode(query)}"
    return emu.handle(httpx.Request("POST", url))


def test_emulator_reads_the_documented_query_string_example(emu: SmsbyEmulator) -> None:
    # seed 000: everything in the query string
    params = {
        "token": TOKEN,
        "list_id": "1",
        "field_names[0]": "phone",
        "field_names[1]": "email",
        "field_names[2]": "name",
        "data[0][0]": "375291111111",
        "data[0][1]": "email1@example.by",
        "data[0][2]": "Alexey",
        "data[1][0]": "+375291111112",
        "data[1][1]": "email2@example.by",
        "data[1][2]": "Irina",
    }
    answer = emulator_call(emu, "importContacts", params).json()
    assert answer == {
        "status": "OK",
        "result": {
            "inserted": 1,
            "updated": 0,
            "invalid": 1,
            "log": [{"index": 1, "error_message": "Incorrect phone number"}],  # '+' refused
        },
    }
    params["data[1][0]"] = "375291111112"
    answer = emulator_call(emu, "importContacts", params).json()
    assert answer["result"] == {"inserted": 1, "updated": 1, "invalid": 0}  # no log when 0


@pytest.mark.parametrize(
    ("names", "rows", "message"),
    [
        (31, 1, "must not exceed 30"),
        (2, 501, "no more than 500 contacts"),
        (0, 1, "field_names is required"),
    ],
)
def test_emulator_enforces_the_documented_limits(
    emu: SmsbyEmulator, names: int, rows: int, message: str
) -> None:
    params = {"token": TOKEN, "list_id": "1"}
    columns = ["phone", *(f"f{j}" for j in range(names - 1))] if names else []
    for j, name in enumerate(columns):
        params[f"field_names[{j}]"] = name
    for i in range(rows):
        params[f"data[{i}][0]"] = f"37529{1000000 + i}"
    response = emu.handle(
        httpx.Request(
            "POST", "http://emu.test/api/v2/importContacts", data=params
        )  # the form body works as well as the query (checklist 19)
    )
    assert response.status_code == 200 and message in response.json()["error"]


def test_emulator_wants_phone_or_email_and_a_token(emu: SmsbyEmulator) -> None:
    params = {"token": TOKEN, "list_id": "1", "field_names[0]": "name", "data[0][0]": "x"}
    assert "phone or email" in emulator_call(emu, "importContacts", params).json()["error"]
    assert emulator_call(emu, "importContacts", {"list_id": "1"}).status_code == 403
    assert emulator_call(emu, "importContacts", {"token": "wrong"}).status_code == 403
    assert emulator_call(emu, "nope", {"token": TOKEN}).status_code == 404
    created = emulator_call(emu, "createSubscriberList", {"token": TOKEN, "name": "VIP"}).json()
    assert created == {"status": "OK", "result": {"list_id": 2}}  # "Create list"


def test_emulator_admin_routes_and_faults(emu: SmsbyEmulator) -> None:
    assert admin(emu, "POST", "list", {"name": "VIP"}).json() == {"id": 2}
    lists = admin(emu, "GET", "state").json()["lists"]
    assert [lst["name"] for lst in lists] == ["Newsletter", "VIP"]
    later = {"error_code_rate": 1.0, "error_code": "retry_later"}
    assert admin(emu, "POST", "faults", later).is_success
    limited = emulator_call(emu, "importContacts", {"token": TOKEN})
    assert limited.status_code == 429  # "Rate limits": the documented answer
    assert limited.json() == {"status": "error", "message": "Превышен лимит запросов"}
    admin(emu, "POST", "faults", {"error_code_rate": 1.0, "error_code": "invalid_arg"})
    assert emulator_call(emu, "importContacts", {}).json() == {
        "error": "Injected fault: invalid_arg"
    }
    admin(emu, "POST", "faults", {"http_5xx_rate": 1.0})
    assert emulator_call(emu, "importContacts", {}).status_code == 503
    assert admin(emu, "GET", "calls").json() == {"calls": {"importContacts": 3}, "write_calls": 3}
    assert admin(emu, "POST", "reset-calls").is_success
    assert admin(emu, "GET", "faults").json()["injected"] == {"http_503": 1}  # since the last POST
    assert admin(emu, "GET", "reset-calls").status_code == 405
    assert admin(emu, "POST", "nope").status_code == 404
    assert admin(emu, "POST", "faults", {"bogus": 1}).status_code == 400


def test_over_loopback_http(emu: SmsbyEmulator) -> None:
    emu.faults = Faults(http_5xx_rate=1.0, methods={"createSubscriberList"})
    with EmulatorServer(emu.handle) as server:
        provider = make_provider(target(base_url=f"{server.url}/api/v2"), sleep=lambda _s: None)
        try:
            provider.prepare(["name", "email"], create_missing=True)
            rows = [row("create", f"+37529{1000000 + i}", {"name": f"P{i}"}) for i in range(3)]
            rows.append(row("create", "+375291000009", {"email": "bad@"}))
            outcomes = provider.push(call("create", *rows))
        finally:
            provider.close()
    assert [o.ok for o in outcomes] == [True, True, True, False]
    assert outcomes[3].message == "Incorrect email"
    assert len(emu.contacts_in_list(1)) == 3


def test_syncd_emulate_smsby_serves_the_seeded_list_and_its_fault_flags() -> None:
    with emulator_process("smsby", TOKEN, "--rate-limit-rate", "1") as url:
        limited = httpx.post(f"{url}/api/v2/importContacts", data={"token": TOKEN})
        assert limited.status_code == 429  # --rate-limit-rate: the "Rate limits" answer
        httpx.post(f"{url}/_emulator/faults", json={})  # switched off live
        provider = make_provider(target(base_url=f"{url}/api/v2"), sleep=lambda _s: None)
        try:
            out = provider.push(call("create", row("create", ANN, {"name": "Ann"})))
        finally:
            provider.close()
        assert out[0].ok
        state = httpx.get(f"{url}/_emulator/state", params={"list_id": "1"}).json()
    assert state["lists"][0]["name"] == "Newsletter"
    assert state["lists"][0]["contacts"][0]["phone"] == "375291111111"
