"""The Unisender/Selzy adapter against its emulator (in-process and over loopback HTTP).

Wire facts: shared/providers/unisender-selzy.md (cited as §1.x). What every adapter promises
is ``contract.py``'s, run here by ``TestUnisenderContract`` and ``TestSelzyContract``.
"""

from __future__ import annotations

import gc
import gzip
import ssl
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import httpx
import pytest
from contract import ProviderContract
from hypothesis import example, given
from hypothesis import strategies as st
from provider_helpers import (
    FUZZ,
    Handler,
    Recorder,
    answering,
    answers,
    form,
    header_and_rows,
    imported_rows,
    row,
)

from syncd.core.projection import Projection
from syncd.emulators.kit import Faults
from syncd.emulators.kit.server import EmulatorServer
from syncd.emulators.unisender import UnisenderEmulator
from syncd.errors import AuthError, ExportIncomplete, ProviderError, ProviderUnreachable
from syncd.providers import make_provider
from syncd.providers.base import CallStats, PushCall, RemoteContact
from syncd.providers.http import (
    ProviderHttp,
    RateWindow,
    key_fingerprint,
    parse_retry_after,
    shared_bucket,
    tls_context,
)
from syncd.providers.unisender import UnisenderProvider

API_KEY = "sk-test-0123456789abcdef"
ROOT = "https://api.unisender.test/en/api"


class TestUnisenderContract(ProviderContract[UnisenderProvider]):
    adapter_class = UnisenderProvider
    provider = "unisender"
    api_key = API_KEY
    settings: ClassVar[dict[str, Any]] = {
        "name": "main",
        "base_url": ROOT,
        "fields": {"Name": "name", "City": "city"},
        "export_poll_interval": 0.5,
    }
    keys = ("bob@example.com", "ann@example.com", "carl@example.com")
    columns = ("Name", "City")
    answer_names: ClassVar[list[str]] = [
        "result", "error", "code", "warnings", "total", "inserted", "updated", "deleted",
        "new_emails", "invalid", "log", "index", "message", "id", "name", "task_uuid", "status",
        "file_to_download", "field_names", "data",
    ]  # fmt: skip
    brand = "unisender"

    def emulator(self) -> UnisenderEmulator:
        emulator = UnisenderEmulator(api_key=API_KEY, brand=self.brand, export_polls=3)
        assert emulator.add_list("Main") == 1
        emulator.add_list("Other")
        emulator.add_field("Name")
        emulator.add_field("City")
        return emulator

    def sent_rows(self, request: httpx.Request) -> list[dict[str, str]]:
        return imported_rows(request)

    def column_names(self, n: int) -> tuple[str, ...]:
        return ("Name", "City", *(f"F{i}" for i in range(n - 2)))

    @staticmethod
    def envelope(value: Any) -> Any:
        return value if not isinstance(value, dict) or "result" in value else {"result": value}


class TestSelzyContract(TestUnisenderContract):
    """Selzy is Unisender's adapter on another host; its export here reads pages."""

    provider = "selzy"
    brand = "selzy"
    settings: ClassVar[dict[str, Any]] = {
        **TestUnisenderContract.settings,
        "export_mode": "paged",
    }
    # a page cut short is an answer that is not JSON: the export is incomplete (DESIGN rule 1)
    cut_export_raises = ExportIncomplete


target = TestUnisenderContract.target
adapter = TestUnisenderContract.adapter


@pytest.fixture
def emu() -> UnisenderEmulator:
    return TestUnisenderContract().emulator()


class Setup:
    def __init__(self, handler: Handler, **overrides: Any) -> None:
        self.transport = Recorder(handler)
        self.sleeps: list[float] = []
        self.provider = adapter(transport=self.transport, sleep=self.sleeps.append, **overrides)


@pytest.fixture
def make(emu: UnisenderEmulator) -> Iterator[Callable[..., Setup]]:
    made: list[Setup] = []

    def _make(handler: Handler | None = None, **overrides: Any) -> Setup:
        setup = Setup(handler or emu.handle, **overrides)
        made.append(setup)
        return setup

    yield _make
    for setup in made:
        setup.provider.close()


def exported(provider: UnisenderProvider) -> dict[str, RemoteContact]:
    return {c.projection.key: c for c in provider.export()}


# --------------------------------------------------------------------------- push: wire shape


def test_create_sends_key_list_tags_then_fields(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    s = make()
    call = PushCall(
        "create",
        ("Name",),
        (
            row("create", "ann@example.com", {"Name": "Ann"}, tags={"vip", "b2b"}),
            row("create", "bob@example.com"),
        ),
        with_tags=True,
    )
    outcomes = s.provider.push(call)

    assert [(o.key, o.ok) for o in outcomes] == [
        ("ann@example.com", True),
        ("bob@example.com", True),
    ]
    (request,) = s.transport.calls("importContacts")
    header, rows = header_and_rows(request)
    assert header == ["email", "email_list_ids", "tags", "Name"]
    assert rows == [
        ["ann@example.com", "1", "b2b,vip", "Ann"],
        ["bob@example.com", "1", "", ""],  # every cell present: "" clears, absent means "not given"
    ]
    keys = {k for k, _ in form(request)}
    assert "overwrite_tags" not in keys and "overwrite_lists" not in keys
    assert ("format", "json") in form(request) and ("api_key", API_KEY) in form(request)
    assert s.provider.wire_rows(call, 1) == [
        {"email": "ann@example.com", "email_list_ids": "1", "tags": "b2b,vip", "Name": "Ann"}
    ]
    ann = emu.get("ann@example.com")
    assert (
        ann is not None
        and ann["fields"] == {"Name": "Ann"}
        and sorted(ann["tags"]) == ["b2b", "vip"]
    )
    assert {c["email"] for c in emu.contacts_in_list(1)} == {"ann@example.com", "bob@example.com"}
    assert (
        s.provider.stats.by_method[("importContacts", "ok")] == 1 and s.provider.stats.writes == 1
    )


def test_create_with_status_pushes_an_opt_out_for_the_list(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    s = make()
    call = PushCall(
        "create",
        ("City",),
        (row("create", "gone@example.com", {"City": "Minsk"}, status="blocked"),),
        with_status=True,
    )
    assert s.provider.push(call)[0].ok
    header, rows = header_and_rows(s.transport.calls("importContacts")[0])
    assert header == [
        "email",
        "email_list_ids",
        "email_status",
        "email_unsubscribed_list_ids",
        "City",
    ]
    assert rows == [["gone@example.com", "1", "unsubscribed", "1", "Minsk"]]
    gone = emu.get("gone@example.com")
    assert (
        gone is not None and gone["email_status"] == "unsubscribed" and gone["unsubscribed"] == [1]
    )


def test_update_sends_no_list_column_and_overwrite_flags_only_when_asked(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    emu.sign_up("ann@example.com", 1, fields={"Name": "Ann", "City": "Oslo"}, tags=["a", "b"])
    s = make()
    call = PushCall(
        "update",
        ("Name", "City"),
        (row("update", "ann@example.com", {"Name": "Anna"}, tags={"a"}),),
        with_tags=True,
        overwrite_tags=True,
    )
    assert s.provider.push(call)[0].ok
    request = s.transport.calls("importContacts")[0]
    header, rows = header_and_rows(request)
    assert header == ["email", "tags", "Name", "City"]
    assert rows == [["ann@example.com", "a", "Anna", ""]]
    assert ("overwrite_tags", "1") in form(request)
    assert "overwrite_lists" not in {k for k, _ in form(request)}
    ann = emu.get("ann@example.com")
    assert ann is not None and ann["tags"] == ["a"] and ann["fields"].get("City", "") == ""

    s.provider.push(
        PushCall(
            "update",
            ("Name",),
            (row("update", "ann@example.com", {"Name": "A"}),),
            overwrite_lists=True,
        )
    )
    request = s.transport.calls("importContacts")[1]
    assert ("overwrite_lists", "1") in form(request)
    assert "overwrite_tags" not in {k for k, _ in form(request)}


def test_delete_and_exclude_headers(make: Callable[..., Setup], emu: UnisenderEmulator) -> None:
    emu.sign_up("del@example.com", 1)
    emu.sign_up("out@example.com", 1)
    s = make()
    assert s.provider.push(PushCall("delete", (), (row("delete", "del@example.com"),)))[0].ok
    assert s.provider.push(PushCall("exclude", (), (row("exclude", "out@example.com"),)))[0].ok

    delete, exclude = s.transport.calls("importContacts")
    assert header_and_rows(delete) == (["email", "delete"], [["del@example.com", "1"]])
    assert header_and_rows(exclude) == (
        ["email", "email_excluded_list_ids"],
        [["out@example.com", "1"]],
    )
    assert emu.get("del@example.com") is None
    assert emu.get("out@example.com") is not None  # excluded, not deleted
    assert emu.contacts_in_list(1) == []
    assert s.provider.method_name(PushCall("delete", (), ())) == "importContacts"


def test_phone_key_uses_phone_system_columns(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    s = make(key="phone", fields={})
    call = PushCall(
        "create", (), (row("create", "+375291234567", status="unsubscribed"),), with_status=True
    )
    assert s.provider.push(call)[0].ok
    header, _ = header_and_rows(s.transport.calls("importContacts")[0])
    assert header == ["phone", "phone_list_ids", "phone_status", "phone_unsubscribed_list_ids"]


# --------------------------------------------------------------------------- push: the answer


def test_log_entries_map_back_to_their_rows(make: Callable[..., Setup]) -> None:
    s = make()
    rows = (
        row("create", "ok1@example.com"),
        row("create", "info@example.com"),  # role address: `w_` code, yet ignored (seed 002)
        row("create", "not-an-email"),
        row("create", "ok2@example.com"),
    )
    outcomes = s.provider.push(PushCall("create", (), rows))
    assert [o.key for o in outcomes] == [r.row.key for r in rows]
    assert [o.ok for o in outcomes] == [True, False, False, True]
    assert outcomes[1].code == "w_common_overlimit" and "ignored" in outcomes[1].message
    assert outcomes[2].code == "e_email_invalid" and not outcomes[2].retryable


def _import_answer(result: dict[str, Any]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"result": result})

    return handler


TWO_ROWS = (row("create", "a@example.com"), row("create", "b@example.com"))


def test_a_plain_warning_leaves_the_row_confirmed(make: Callable[..., Setup]) -> None:
    s = make(
        _import_answer(
            {
                "total": 2,
                "inserted": 2,
                "updated": 0,
                "deleted": 0,
                "log": [
                    {
                        "index": "1",  # a string index, as PHP clients see it
                        "code": "w_common_overlimit",
                        "message": "Contacts over the plan limit (but the string has been added)",
                    }
                ],
            }
        )
    )
    a, b = s.provider.push(PushCall("create", (), TWO_ROWS))
    assert a.ok and a.code == ""
    assert b.ok and b.code == "w_common_overlimit"


def test_an_answer_that_does_not_add_up_confirms_nothing(make: Callable[..., Setup]) -> None:
    with pytest.raises(ProviderError, match="counts 1 rows but 2 were sent"):
        make(_import_answer({"total": 1, "inserted": 1, "log": []})).provider.push(
            PushCall("create", (), TWO_ROWS)
        )
    with pytest.raises(ProviderError, match="names no row"):
        make(_import_answer({"total": 2, "log": [{"index": 7, "code": "x"}]})).provider.push(
            PushCall("create", (), TWO_ROWS)
        )
    # The counters say one row was left out, the log names none as an error: nothing is confirmed.
    with pytest.raises(ProviderError, match="not applied"):
        make(
            _import_answer({"total": 2, "inserted": 1, "updated": 0, "deleted": 0, "log": []})
        ).provider.push(PushCall("create", (), TWO_ROWS))
    # ... unless a warned row can take the blame.
    a, b = make(
        _import_answer(
            {
                "total": 2,
                "inserted": 1,
                "updated": 0,
                "deleted": 0,
                "log": [{"index": 0, "code": "w_new_code", "message": "something"}],
            }
        )
    ).provider.push(PushCall("create", (), TWO_ROWS))
    assert not a.ok and a.code == "w_new_code" and b.ok


def test_rows_the_wire_cannot_carry_are_refused_without_spoiling_the_call(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    s = make()
    rows = (
        row("create", "a@example.com", tags={"x,y"}),
        row("create", "b@example.com", tags={"z"}),
    )
    a, b = s.provider.push(PushCall("create", (), rows, with_tags=True))
    assert not a.ok and a.code == "invalid_tag" and b.ok
    _, sent = header_and_rows(s.transport.calls("importContacts")[0])
    assert [r[0] for r in sent] == ["b@example.com"]


# --------------------------------------------------------------------------- transport rules


def test_the_api_key_travels_in_post_bodies_only(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    s = make()
    s.provider.prepare(["Name", "City"], create_missing=False)
    s.provider.push(
        PushCall("create", ("Name",), (row("create", "ann@example.com", {"Name": "Ann"}),))
    )
    assert "ann@example.com" in exported(s.provider)
    assert {r.url.path.rsplit("/api/", 1)[-1] for r in s.transport.requests} >= {
        "getLists",
        "getFields",
        "importContacts",
        "async/exportContacts",
        "async/getTaskResult",
    }
    for request in s.transport.requests:
        assert not request.url.query
        if "/api/" in request.url.path:
            assert request.method == "POST"
            assert ("api_key", API_KEY) in form(request)
        else:  # the export file download carries no key at all
            assert request.method == "GET" and API_KEY.encode() not in request.content


def _faulty_first(emu: UnisenderEmulator, calls: int, **faults: Any) -> Handler:
    """The emulator with ``faults`` switched on for its first ``calls`` requests."""
    seen = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal seen
        seen += 1
        emu.faults = Faults(**faults) if seen <= calls else Faults()
        return emu.handle(request)

    return handler


@pytest.mark.parametrize(
    "faults",
    [
        {"http_5xx_rate": 1.0},
        {"error_code_rate": 1.0, "error_code": "retry_later"},
        {"error_code_rate": 1.0, "error_code": "api_call_limit_exceeded_for_api_key"},
        {"drop_rate": 1.0},
    ],
    ids=["5xx", "retry_later", "rate_limited", "dropped"],
)
def test_transient_failures_are_retried_then_succeed(
    make: Callable[..., Setup], emu: UnisenderEmulator, faults: dict[str, Any]
) -> None:
    s = make(_faulty_first(emu, 2, **faults), retries=2)
    assert s.provider.push(PushCall("create", (), (row("create", "ann@example.com"),)))[0].ok
    assert emu.calls["importContacts"] == 3
    assert emu.get("ann@example.com") is not None
    stats = s.provider.stats.by_method
    assert stats[("importContacts", "retry")] == 2 and stats[("importContacts", "ok")] == 1
    assert len(s.sleeps) == 2 and all(1.0 <= t <= 4.0 for t in s.sleeps)  # jittered, growing


def test_retry_after_is_honoured_and_capped(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    s = make(_faulty_first(emu, 1, http_5xx_rate=1.0, retry_after="7"))
    s.provider.prepare([], create_missing=False)
    assert s.sleeps == [7.0]
    s = make(_faulty_first(emu, 1, error_code_rate=1.0, retry_after="86400"))
    s.provider.prepare([], create_missing=False)
    assert s.sleeps == [60.0]
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert parse_retry_after("soon") is None


def test_unreachable_after_the_retries_run_out(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    emu.faults = Faults(http_5xx_rate=1.0)
    s = make(retries=2)
    with pytest.raises(ProviderUnreachable) as caught:
        s.provider.push(PushCall("create", (), (row("create", "ann@example.com"),)))
    message = str(caught.value)
    assert "importContacts" in message and "HTTP 503" in message and "3 tries" in message
    assert caught.value.retryable
    assert emu.calls["importContacts"] == 3
    stats = s.provider.stats
    assert stats.by_method[("importContacts", "retry")] == 2
    assert stats.by_method[("importContacts", "unreachable")] == 1
    assert stats.writes == 3  # every attempt may have reached the provider


def test_timeouts_are_retried(make: Callable[..., Setup]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    s = make(handler, retries=1)
    with pytest.raises(ProviderUnreachable, match=r"getLists.*ReadTimeout"):
        s.provider.prepare([], create_missing=False)
    assert len(s.transport.requests) == 2


def test_a_wrong_key_is_an_auth_error_not_retried(make: Callable[..., Setup]) -> None:
    s = make(api_key="sk-wrong-key-987654")
    with pytest.raises(AuthError) as caught:
        s.provider.prepare([], create_missing=False)
    assert caught.value.code == "invalid_api_key" and "sk-wrong-key" not in str(caught.value)
    assert len(s.transport.requests) == 1


def test_an_answer_that_is_not_json_is_a_provider_error(make: Callable[..., Setup]) -> None:
    s = make(lambda request: httpx.Response(200, html="<html>maintenance</html>"))
    with pytest.raises(ProviderError, match="not JSON"):
        s.provider.prepare([], create_missing=False)
    s = make(lambda request: httpx.Response(200, json={"something": "else"}))
    with pytest.raises(ProviderError, match="no `result`"):
        s.provider.prepare([], create_missing=False)


def test_other_error_codes_keep_their_code(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    s = make()
    # A column the account does not have: the whole call is refused (§1.4, item 9).
    with pytest.raises(ProviderError) as caught:
        s.provider.push(PushCall("create", ("Nope",), (row("create", "ann@example.com"),)))
    assert caught.value.code == "invalid_arg" and not caught.value.retryable
    assert s.provider.stats.by_method[("importContacts", "error")] == 1


def _refusing(emu: UnisenderEmulator, bad: set[str]) -> Handler:
    """The emulator, except that an import holding a key of ``bad`` is refused whole (§1.2's
    untyped error naming the contact)."""

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        if request.url.path.endswith("/importContacts"):
            _, rows = header_and_rows(request)
            named = [r[0] for r in rows if r[0] in bad]
            if named:
                text = (
                    f"Contacts {named[0]} and +375291234567 already exist "
                    "but owned by different subscribers"
                )
                return httpx.Response(
                    200, json={"error": text, "code": "unspecified", "result": ""}
                )
        return emu.handle(request)

    return handle


def test_an_import_refused_for_one_row_is_split_until_that_row_stands_alone(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    keys = [f"p{i}@example.com" for i in range(8)]
    s = make(_refusing(emu, {"p5@example.com"}))
    outcomes = s.provider.push(PushCall("create", (), tuple(row("create", k) for k in keys)))
    assert [o.key for o in outcomes] == keys
    refused = [o for o in outcomes if not o.ok]
    assert [o.key for o in refused] == ["p5@example.com"]
    assert refused[0].code == "unspecified" and "owned by different" in refused[0].message
    assert not refused[0].retryable  # held until the local record changes (DESIGN §4)
    assert {c["email"] for c in emu.contacts_in_list(1)} == set(keys) - {"p5@example.com"}
    assert len(s.transport.calls("importContacts")) == 1 + 2 * 3  # 8 -> 4 -> 2 -> 1


def test_a_refusal_both_halves_repeat_is_about_the_call(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    s = make()
    rows = tuple(row("create", f"p{i}@example.com") for i in range(6))
    # A column the account does not have: every part gets the same answer.
    with pytest.raises(ProviderError, match="concerns the call") as caught:
        s.provider.push(PushCall("create", ("Nope",), rows))
    assert caught.value.code == "invalid_arg"
    assert len(s.transport.calls("importContacts")) == 3 and not emu.contacts


def test_an_import_refused_with_http_400_for_one_row_applies_the_rest(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    """A 400 carrying §1.2's envelope about a row is a refused batch, as under HTTP 200: 499
    rows go in, the one at fault is rejected with the provider's message, held (not retried)."""
    keys = [f"p{i:03d}@example.com" for i in range(500)]
    emu.refuse_import("p321@example.com", message='Invalid value of field "email": p321')
    s = make()
    outcomes = s.provider.push(PushCall("create", (), tuple(row("create", k) for k in keys)))
    assert [o.key for o in outcomes] == keys
    refused = [o for o in outcomes if not o.ok]
    assert [(o.key, o.code, o.message) for o in refused] == [
        ("p321@example.com", "invalid_arg", 'Invalid value of field "email": p321')
    ]
    assert not refused[0].retryable  # held until the local record changes (DESIGN §4)
    assert {c["email"] for c in emu.contacts_in_list(1)} == set(keys) - {"p321@example.com"}
    assert len(s.transport.calls("importContacts")) <= 1 + 2 * 9  # 500 -> ... -> 1: 9 levels


@pytest.mark.parametrize("status", [400, 422])
def test_a_4xx_refusal_is_read_by_its_envelope(
    make: Callable[..., Setup], emu: UnisenderEmulator, status: int
) -> None:
    rows = tuple(row("create", f"p{i}@example.com") for i in range(6))
    # About a row: split, the rest applied.
    emu.refuse_import("p2@example.com", status=status, code="unspecified")
    outcomes = make().provider.push(PushCall("create", (), rows))
    assert [o.key for o in outcomes if not o.ok] == ["p2@example.com"]
    assert "p2@example.com" in outcomes[2].message
    assert len(emu.contacts_in_list(1)) == 5

    def answer(body: dict[str, str], code: int = status) -> Handler:
        return lambda request: httpx.Response(code, json={**body, "result": ""})

    # Alone, the row is rejected when the answer names it, and fails the call when not.
    (alone,) = make().provider.push(PushCall("create", (), rows[2:3]))
    assert not alone.ok and alone.code == "unspecified" and not alone.retryable
    emu.refuse_import("p3@example.com", status=status, message="Invalid value")
    with pytest.raises(ProviderError, match="Invalid value"):
        make().provider.push(PushCall("create", (), rows[3:4]))
    # The auth and rate-limit codes mean what they mean under HTTP 200.
    s = make(answer({"error": "Invalid API key", "code": "invalid_api_key"}))
    with pytest.raises(AuthError):
        s.provider.push(PushCall("create", (), rows))
    assert len(s.transport.requests) == 1
    s = make(answer({"error": "limit", "code": "api_call_limit_exceeded_for_api_key"}), retries=1)
    with pytest.raises(ProviderUnreachable):
        s.provider.push(PushCall("create", (), rows))
    assert len(s.transport.requests) == 2
    # A 401/403, any other code or a body that is no envelope: the call fails, not split.
    for handler in (
        answer({"error": "Unauthorized", "code": "invalid_arg"}, 401),
        answer({"error": "Forbidden", "code": "unspecified"}, 403),
        answer({"error": "Not enough money", "code": "not_enough_money"}),
        lambda request: httpx.Response(status, text="Bad Request"),
    ):
        s = make(handler)
        with pytest.raises(ProviderError, match="unexpected HTTP") as caught:
            s.provider.push(PushCall("create", (), rows))
        assert caught.value.code.startswith("http_") and type(caught.value) is ProviderError
        assert len(s.transport.requests) == 1
    # A 400 about the call (both halves get it word for word) still fails the cycle.
    s = make(answer({"error": 'Unknown field "Nope"', "code": "invalid_arg"}))
    with pytest.raises(ProviderError, match="concerns the call"):
        s.provider.push(PushCall("create", (), rows))
    # Outside importContacts a 4xx is never a row's.
    s = make(answer({"error": "bad list", "code": "invalid_arg"}))
    with pytest.raises(ProviderError, match="unexpected HTTP") as caught:
        s.provider.prepare([], create_missing=False)
    assert caught.value.code == f"http_{status}"


def test_a_row_told_to_retry_later_is_retried_not_held(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    emu.faults = Faults(row_reject_rate=1.0, row_reject_code="retry_later", seed=1)
    s = make()
    (outcome,) = s.provider.push(PushCall("create", (), (row("create", "ann@example.com"),)))
    assert not outcome.ok and outcome.code == "retry_later" and outcome.retryable
    emu.faults = Faults(row_reject_rate=1.0, row_reject_code="e_email_invalid", seed=1)
    (outcome,) = s.provider.push(PushCall("create", (), (row("create", "ann@example.com"),)))
    assert not outcome.ok and not outcome.retryable


# --------------------------------------------------------------------------- prepare


def test_prepare_creates_missing_fields(make: Callable[..., Setup], emu: UnisenderEmulator) -> None:
    s = make()
    s.provider.prepare(["Name", "Phone2", "email_status"], create_missing=True)
    assert emu.calls["createField"] == 1
    names = {name for name, _ in emu.user_fields.values()}
    assert "Phone2" in names and "email_status" not in names

    with pytest.raises(ProviderError, match="Extra"):
        s.provider.prepare(["Extra"], create_missing=False)
    with pytest.raises(ProviderError, match="start"):
        s.provider.prepare(["2bad"], create_missing=True)


def test_prepare_needs_the_list(make: Callable[..., Setup]) -> None:
    with pytest.raises(
        ProviderError, match="list 123 not found at unisender: create it or fix list_id"
    ):
        make(list_id="123").provider.prepare([], create_missing=True)


# --------------------------------------------------------------------------- export


def _seed(emu: UnisenderEmulator) -> None:
    emu.sign_up("ann@example.com", 1, fields={"Name": "Ann", "City": "Oslo"}, tags=["vip", "b2b"])
    emu.sign_up("bob@example.com", 1)
    emu.unsubscribe("bob@example.com", 1)  # per-list: account status stays active
    emu.sign_up("carl@example.com", 1)
    emu.block("carl@example.com")
    emu.sign_up("dave@example.com", 1)
    emu.unsubscribe("dave@example.com")  # account-level
    emu.sign_up("not an address", 1)  # cannot be normalised: skipped, never a deletion
    emu.sign_up("elsewhere@example.com", 2)


def _check_seeded(got: dict[str, RemoteContact]) -> None:
    assert set(got) == {
        "ann@example.com",
        "bob@example.com",
        "carl@example.com",
        "dave@example.com",
    }
    ann = got["ann@example.com"]
    assert ann.projection == Projection.build(
        "ann@example.com", {"Name": "Ann", "City": "Oslo"}, {"vip", "b2b"}, "active"
    )
    assert ann.raw_status == "active"
    bob = got["bob@example.com"]
    # unsubscribed from this list only: the list's consent, not the address's (DESIGN §9)
    assert (bob.projection.status, bob.projection.list_status) == ("active", "unsubscribed")
    assert not bob.projection.mailable
    assert (got["carl@example.com"].projection.status, got["carl@example.com"].raw_status) == (
        "unsubscribed",  # blocked folds onto unsubscribed (Capabilities.statuses)
        "blocked",
    )
    assert got["dave@example.com"].projection.status == "unsubscribed"


def test_async_export_round_trip(make: Callable[..., Setup], emu: UnisenderEmulator) -> None:
    _seed(emu)
    s = make()
    got = exported(s.provider)
    _check_seeded(got)
    assert s.provider.skipped_rows == 1
    assert emu.calls["async/getTaskResult"] == 3  # export_polls=3
    polls = [t for t in s.sleeps if t < 1]  # (the others: the export rate window's waits)
    assert polls == [0.25, 0.5]  # waits grow to the poll interval (0.5 here)
    start = s.transport.calls("async/exportContacts")[0]
    assert [v for k, v in form(start) if k == "field_names[]"] == [
        "email",
        "email_status",
        "email_unsubscribed_list_ids",
        "tags",
        "Name",
        "City",
    ]
    assert ("list_id", "1") in form(start)


def test_paged_export_matches_async(make: Callable[..., Setup], emu: UnisenderEmulator) -> None:
    _seed(emu)
    for i in range(2100):
        emu.sign_up(f"user{i}@example.com", 1)
    paged = make(export_mode="paged")
    got = exported(paged.provider)
    assert len(got) == 2104
    _check_seeded({k: v for k, v in got.items() if not k.startswith("user")})
    assert paged.provider.skipped_rows == 1
    assert emu.calls["exportContacts"] == 3  # 1000 + 1000 + a short page
    assert got == exported(make().provider)


def test_paged_export_notices_a_list_that_shifts(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    for i in range(1500):
        emu.sign_up(f"user{i:04d}@example.com", 1)

    def handler(request: httpx.Request) -> httpx.Response:
        response = emu.handle(request)
        if request.url.path.endswith("/exportContacts") and emu.get("user0000@example.com"):
            emu.delete("user0000@example.com")  # a deletion in front of the page boundary
        return response

    with pytest.raises(ExportIncomplete, match="changed while it was read"):
        exported(make(handler, export_mode="paged").provider)


def test_a_paged_export_cut_short_is_incomplete(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    for i in range(1500):
        emu.sign_up(f"user{i:04d}@example.com", 1)
    for cut in (0, 1):  # the first page, or the second after a good one

        def handler(request: httpx.Request, cut: int = cut) -> httpx.Response:
            response = emu.handle(request)
            if request.url.path.endswith("/exportContacts") and emu.calls["exportContacts"] > cut:
                body = response.read()
                return httpx.Response(200, content=body[: len(body) // 2])
            return response

        emu.calls.clear()
        with pytest.raises(ExportIncomplete, match="cut short"):
            exported(make(handler, export_mode="paged").provider)
    # an error envelope on a page is the provider's refusal, not a cut page
    emu.faults = Faults(error_code_rate=1.0, error_code="invalid_arg")
    with pytest.raises(ProviderError) as caught:
        exported(make(export_mode="paged").provider)
    assert not isinstance(caught.value, ExportIncomplete) and caught.value.code == "invalid_arg"


def test_a_truncated_export_file_is_incomplete(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    _seed(emu)
    emu.faults = Faults(export_truncate=True)
    with pytest.raises(ExportIncomplete):
        exported(make().provider)


def test_an_export_that_never_completes_times_out(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    emu.faults = Faults(export_never_completes=True)
    s = make(export_timeout=2.0)
    with pytest.raises(ExportIncomplete, match="not completed after 2 s"):
        exported(s.provider)
    assert emu.calls["async/getTaskResult"] == 6  # after 0, 0.25, 0.75, 1.25, 1.75, 2.25 s


def _rewrite_file(emu: UnisenderEmulator, rewrite: Callable[[bytes], httpx.Response]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        response = emu.handle(request)
        if request.url.path.startswith("/_files/"):
            return rewrite(response.read())
        return response

    return handler


def test_a_gzipped_export_file_is_read(make: Callable[..., Setup], emu: UnisenderEmulator) -> None:
    _seed(emu)
    s = make(_rewrite_file(emu, lambda body: httpx.Response(200, content=gzip.compress(body))))
    _check_seeded(exported(s.provider))

    cut = make(
        _rewrite_file(emu, lambda body: httpx.Response(200, content=gzip.compress(body)[:-12]))
    )
    with pytest.raises(ExportIncomplete):
        exported(cut.provider)


def test_a_download_that_breaks_off_is_incomplete(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    _seed(emu)

    class Broken(httpx.SyncByteStream):
        def __init__(self, body: bytes) -> None:
            self.body = body

        def __iter__(self) -> Iterator[bytes]:
            yield self.body[:40]
            raise httpx.ReadError("connection reset")

    s = make(_rewrite_file(emu, lambda body: httpx.Response(200, stream=Broken(body))))
    with pytest.raises(ExportIncomplete, match="broke off"):
        exported(s.provider)


def test_an_export_without_a_requested_column_is_incomplete(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    _seed(emu)
    s = make(
        _rewrite_file(
            emu, lambda body: httpx.Response(200, content=body.replace(b"tags", b"tagz", 1))
        )
    )
    with pytest.raises(ExportIncomplete, match="lacks tags"):
        exported(s.provider)


def test_phone_export_normalises_like_local_keys(
    make: Callable[..., Setup], emu: UnisenderEmulator
) -> None:
    s = make(key="phone", fields={})
    s.provider.default_region = "BY"
    call = PushCall("create", (), (row("create", "+375291234567"), row("create", "+375297654321")))
    assert all(o.ok for o in s.provider.push(call))
    assert set(exported(s.provider)) == {"+375291234567", "+375297654321"}


# --------------------------------------------------------------------------- answers of any shape
# (the contract feeds any answer to every call; these feed the export's steps one by one)

FUZZ_ROWS = (
    row("create", "a@example.com", {"Name": "A"}, tags={"x"}),
    row("create", "b@example.com", {"Name": "B"}),
)


def answered(answer: Handler | httpx.MockTransport) -> UnisenderProvider:
    """The adapter over ``answer``, without retries, its export timing out at once."""
    transport = answer if isinstance(answer, httpx.MockTransport) else httpx.MockTransport(answer)
    return adapter(transport=transport, retries=0, export_timeout=0.01)


@FUZZ
@given(
    answers(TestUnisenderContract.answer_names, TestUnisenderContract.envelope),
    answers(TestUnisenderContract.answer_names, TestUnisenderContract.envelope),
    st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
)
def test_any_answers_to_the_steps_of_an_async_export(
    task: bytes, result: bytes, file: bytes
) -> None:
    """The task answer, the poll answer and the CSV file, each possibly wrong."""

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/async/exportContacts"):
            return httpx.Response(200, content=task)
        if path.endswith("/async/getTaskResult"):
            return httpx.Response(200, content=result)
        return httpx.Response(200, content=file)

    TestUnisenderContract().expect_verdict_or_provider_error(
        lambda: list(answered(answer).export()), None
    )


@FUZZ
@given(st.text(max_size=60), st.binary(max_size=300))
@example("A:", b"")  # a scheme and nothing else: not a place a file can come from
def test_any_export_file_url_and_body(url: str, file: bytes) -> None:
    """A completed task names any text as its file; the file holds any bytes."""
    envelopes = {
        "async/exportContacts": {"result": {"task_uuid": "u1", "status": "new"}},
        "async/getTaskResult": {"result": {"status": "completed", "file_to_download": url}},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        for method, envelope in envelopes.items():
            if request.url.path.endswith("/" + method):
                return httpx.Response(200, json=envelope)
        return httpx.Response(200, content=file)

    TestUnisenderContract().expect_verdict_or_provider_error(
        lambda: list(answered(answer).export()), None
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"result": {"total": "\xc2\xb2"}}', "total"),
        (b'{"result": {"total": ' + b"7" * 5000 + b"}}", "not JSON"),
        (b'{"result": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "not JSON"),
        (b'{"result": {"total": 2, "inserted"', "not JSON"),
        (b"<html>oops</html>", "not JSON"),
    ],
)
def test_named_bad_answers(body: bytes, says: str) -> None:
    provider = answered(answering(body, 200, "application/json"))
    with pytest.raises(ProviderError, match=says) as caught:
        provider.push(PushCall("create", ("Name",), FUZZ_ROWS))
    assert caught.value.code == "bad_answer"


def test_warnings_of_any_shape_are_only_logged() -> None:
    body = b'{"result": {"total": 2, "inserted": 2, "updated": 0, "deleted": 0}, "warnings": 5}'
    outcomes = answered(answering(body, 200, "application/json")).push(
        PushCall("create", ("Name",), FUZZ_ROWS)
    )
    assert [o.ok for o in outcomes] == [True, True]


def test_an_export_file_url_that_is_not_a_url_is_an_incomplete_export() -> None:
    envelopes = {
        "async/exportContacts": {"result": {"task_uuid": "u1"}},
        "async/getTaskResult": {
            "result": {"status": "completed", "file_to_download": "http://a:b/"}
        },
    }

    def answer(request: httpx.Request) -> httpx.Response:
        method = request.url.path.split("/api/", 1)[1]
        return httpx.Response(200, json=envelopes[method])

    with pytest.raises(ProviderError, match="file_to_download"):
        list(answered(answer).export())


# --------------------------------------------------------------------------- over real HTTP


def test_round_trip_over_loopback_http(emu: UnisenderEmulator) -> None:
    with EmulatorServer(emu.handle) as server:
        sleeps: list[float] = []
        provider = make_provider(
            target(provider="selzy", base_url=f"{server.url}/en/api"),
            sleep=sleeps.append,
        )
        try:
            assert isinstance(provider, UnisenderProvider) and provider.name == "selzy"
            provider.prepare(["Name", "City", "Source"], create_missing=True)
            rows = (
                row("create", "ann@example.com", {"Name": "Ann", "Source": "web"}, tags={"t1"}),
                row("create", "info@example.com"),
            )
            outcomes = provider.push(PushCall("create", ("Name", "Source"), rows, with_tags=True))
            assert [o.ok for o in outcomes] == [True, False]
            emu.unsubscribe("ann@example.com", 1)
            (ann,) = provider.export()
            assert ann.projection == Projection.build(
                "ann@example.com", {"Name": "Ann"}, {"t1"}, "active", "unsubscribed"
            )
        finally:
            provider.close()


def test_a_hanging_server_times_out(emu: UnisenderEmulator) -> None:
    emu.faults = Faults(timeout_rate=1.0, hang_seconds=1.0)
    with EmulatorServer(emu.handle) as server:
        provider = UnisenderProvider(
            target(base_url=f"{server.url}/en/api", timeout=0.2, retries=1), sleep=lambda s: None
        )
        with pytest.raises(ProviderUnreachable, match=r"getLists.*Timeout"):
            provider.prepare([], create_missing=False)
        provider.close()


# --------------------------------------------------------------------------- plumbing


def test_rate_window_allows_n_per_minute_and_books_the_next_free_moment() -> None:
    now = [0.0]
    window = RateWindow(3, clock=lambda: now[0])
    assert [window.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 60.0, 60.0]
    now[0] = 90.0  # the first three calls left the window; the two booked at 60 s have not
    assert window.reserve() == 0.0
    assert window.reserve() == 30.0


def test_rate_windows_are_shared_per_key_and_keyed_by_a_hash() -> None:
    a = shared_bucket("sk-shared-secret", 1200)
    assert shared_bucket("sk-shared-secret", 600) is a and a.per_minute == 600  # stricter wins
    assert shared_bucket("sk-other-secret", 1200) is not a
    from syncd.providers import http

    assert all("sk-shared-secret" not in name for name, _ in http._buckets)
    assert (key_fingerprint("sk-shared-secret"), "") in http._buckets


def test_a_wait_for_the_rate_limit_is_told_before_it_starts_and_counted() -> None:
    """Progress shows such a wait as what it is (``CallStats.on_wait``), not as a stall."""
    slept: list[float] = []
    told: list[float] = []
    stats = CallStats(on_wait=told.append)
    http = ProviderHttp(
        provider="unisender",
        api_key="sk-rate-limit-wait-test",  # its own process-wide window
        timeout=5,
        retries=0,
        rate_limit_per_minute=1,
        stats=stats,
        transport=httpx.MockTransport(lambda _request: httpx.Response(200, json={})),
        sleep=slept.append,
    )
    for _ in range(2):
        http.post_form("getLists", "http://127.0.0.1:9/x", {}, write=False, parse=lambda r: r)
    http.close()
    assert len(slept) == 1 and 59 < slept[0] <= 60
    assert told == slept and stats.waited == slept[0]


def test_an_answer_read_lets_go_of_its_request_without_the_garbage_collector() -> None:
    """A bulk import's body is freed as soon as its answer is read: bulk work runs the
    collector rarely (``syncd.collector``), and httpx's answer-stream cycle would keep every
    call's body until then."""
    answers: list[weakref.ref[httpx.Response]] = []
    requests: list[weakref.ref[httpx.Request]] = []

    def parse(response: httpx.Response) -> int:
        answers.append(weakref.ref(response))
        requests.append(weakref.ref(response.request))
        return int(response.json()["n"])

    http = ProviderHttp(
        provider="unisender",
        api_key="sk-answer-cycle-test",
        timeout=5,
        retries=0,
        rate_limit_per_minute=600,
        stats=CallStats(),
        transport=httpx.MockTransport(lambda _request: httpx.Response(200, json={"n": 1})),
    )
    gc.disable()
    try:
        got = http.post_form("importContacts", "http://127.0.0.1:9/x", {"data": "x" * 100_000},
                             write=True, parse=parse)  # fmt: skip
        assert got == 1
        assert answers[0]() is None and requests[0]() is None
    finally:
        gc.enable()
        http.close()


def test_every_client_shares_one_tls_context_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon makes a provider client every cycle; loading the CA bundle for each was
    40 ms of CPU a cycle. The context is made once and every client's connections use it."""
    made: list[ssl.SSLContext] = []

    def create() -> ssl.SSLContext:
        made.append(ssl.create_default_context())
        return made[-1]

    monkeypatch.setattr(httpx, "create_ssl_context", create)
    tls_context.cache_clear()
    try:
        clients = [make_provider(target(base_url="https://api.example.test")) for _ in range(3)]
        assert len(made) == 1
        for provider in clients:
            pool = provider._http.client._transport._pool  # type: ignore[attr-defined]
            assert pool._ssl_context is made[0]
            provider.close()
    finally:
        tls_context.cache_clear()


def test_make_provider_dispatches_on_the_provider_name() -> None:
    provider = make_provider(target(provider="selzy", base_url=None))
    assert isinstance(provider, UnisenderProvider)
    assert provider.target.api_root == "https://api.selzy.com/en/api"
    assert provider.capabilities.rows_per_call == 500 and provider.capabilities.max_tags == 10
    provider.close()
