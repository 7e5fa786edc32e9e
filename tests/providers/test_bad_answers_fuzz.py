"""Provider answers that are not JSON, are cut short, or have the wrong shape or types.

Every adapter reads its provider's answers through one public method per call (``prepare``,
``push``, ``export``). Whatever bytes come back, the adapter either reads a verdict for every row
it sent or raises a ``ProviderError`` (or one of its subclasses) whose message says what was
wrong: never a ``KeyError``, ``TypeError``, ``AttributeError`` or ``ValueError`` from deep inside.
The answers are generated around each provider's documented envelope, so most of them get past
the first check and exercise the readers behind it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from syncd.config import TargetConfig
from syncd.core.projection import Projection
from syncd.errors import ProviderError
from syncd.providers import make_provider
from syncd.providers.base import Provider, PushCall, RowChange

KEY = "fuzz-key-0d1e"
ROWS = (
    RowChange("create", Projection.build("a@example.com", {"Name": "A"}, {"x"})),
    RowChange("create", Projection.build("b@example.com", {"Name": "B"})),
)
PHONE_ROWS = (
    RowChange("create", Projection.build("+375291111111", {"first_name": "A"})),
    RowChange("create", Projection.build("+375292222222", {"first_name": "B"})),
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------- the answers

# Values of every JSON type, with the awkward ones over-represented: numbers as strings, Unicode
# digits int() refuses, huge numbers, negatives, empty containers.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "0", "1", "2", " 1 ", "²", "٣", "-1", "1e3", "9" * 5000, "ok", "OK"]),
    st.text(max_size=20),
)


def json_like(keys: list[str]) -> st.SearchStrategy[Any]:
    """JSON values whose objects mostly use the names the reader looks for."""
    names = st.one_of(st.sampled_from(keys), st.text(max_size=8))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=6)
        ),
        max_leaves=25,
    )


def answers(keys: list[str], envelope: Callable[[Any], Any]) -> st.SearchStrategy[bytes]:
    """Raw answer bodies: well-formed envelopes around odd values, cut or garbled JSON, HTML."""
    value = json_like(keys)
    shaped = st.builds(envelope, value).map(lambda v: json.dumps(v).encode())
    cut = st.tuples(shaped, st.integers(0, 200)).map(lambda t: t[0][: t[1]])
    deep = st.integers(1, 100_000).map(lambda n: b'{"result": ' + b"[" * n + b"]" * n + b"}")
    big = st.just(b'{"result": {"total": ' + b"7" * 5000 + b"}}")
    return st.one_of(
        shaped,
        shaped,
        shaped,
        value.map(lambda v: json.dumps(v).encode()),
        cut,
        deep,
        big,
        st.binary(max_size=64),
        st.just(b"<html><body>502 Bad Gateway</body></html>"),
        st.just(b'{"result": "\\ud800"}'),
    )


STATUSES = st.sampled_from([200, 200, 200, 201, 204, 301, 400, 401, 403, 404, 413, 422, 429, 500])
CONTENT_TYPES = st.sampled_from(["application/json", "text/html", "text/csv", ""])

UNISENDER_KEYS = [
    "result", "error", "code", "warnings", "total", "inserted", "updated", "deleted", "new_emails",
    "invalid", "log", "index", "message", "id", "name", "task_uuid", "status",
    "file_to_download", "field_names", "data",
]  # fmt: skip


def unisender_envelope(value: Any) -> Any:
    return value if not isinstance(value, dict) or "result" in value else {"result": value}


SMSBY_KEYS = ["status", "result", "error", "message", "inserted", "updated", "invalid", "log",
              "index", "error_message", "list_id"]  # fmt: skip


def smsby_envelope(value: Any) -> Any:
    if isinstance(value, dict) and "status" in value:
        return value
    return {"status": "OK", "result": value}


OCTOPUSH_KEYS = ["code", "message", "error", "errors"]


# ---------------------------------------------------------------------------- the harness


def target(provider: str, **extra: Any) -> TargetConfig:
    data: dict[str, Any] = {
        "name": "t",
        "provider": provider,
        "list_id": "1",
        "api_key": KEY,
        "base_url": "http://127.0.0.1:9/api",
        "retries": 0,
        "export_poll_interval": 0.001,
        "export_timeout": 0.01,
        **extra,
    }
    return TargetConfig.model_validate(data)


def serving(answer: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(answer)


def fixed(status: int, body: bytes, content_type: str) -> httpx.MockTransport:
    headers = {"content-type": content_type} if content_type else {}
    return serving(lambda request: httpx.Response(status, content=body, headers=headers))


def expect_verdict_or_provider_error(run: Callable[[], Any], rows: int | None = None) -> None:
    """The one rule: a complete answer, or a ProviderError that says something."""
    try:
        result = run()
    except ProviderError as exc:
        message = str(exc)
        assert message.strip(), "a ProviderError with no message"
        assert KEY not in message
        return
    if rows is not None:
        assert len(result) == rows
        assert all(outcome.ok or outcome.code for outcome in result)


def make(config: TargetConfig, transport: httpx.MockTransport) -> Provider:
    return make_provider(config, transport=transport, sleep=lambda _s: None)


# ---------------------------------------------------------------------------- Unisender / Selzy


@FUZZ
@given(answers(UNISENDER_KEYS, unisender_envelope), STATUSES, CONTENT_TYPES)
def test_unisender_import_answer(body: bytes, status: int, content_type: str) -> None:
    provider = make(target("unisender"), fixed(status, body, content_type))
    call = PushCall("create", ("Name",), ROWS, with_tags=True)
    expect_verdict_or_provider_error(lambda: provider.push(call), rows=len(ROWS))


@FUZZ
@given(answers(UNISENDER_KEYS, unisender_envelope), STATUSES)
def test_unisender_prepare_answer(body: bytes, status: int) -> None:
    provider = make(target("unisender", fields={"Name": "name"}), fixed(status, body, ""))
    expect_verdict_or_provider_error(lambda: provider.prepare(["Name"], create_missing=True))


@FUZZ
@given(answers(UNISENDER_KEYS, unisender_envelope), STATUSES)
def test_unisender_paged_export_answer(body: bytes, status: int) -> None:
    provider = make(target("unisender", export_mode="paged"), fixed(status, body, ""))
    expect_verdict_or_provider_error(lambda: list(provider.export()))


@FUZZ
@given(
    answers(UNISENDER_KEYS, unisender_envelope),
    answers(UNISENDER_KEYS, unisender_envelope),
    st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
)
def test_unisender_async_export_answers(task: bytes, result: bytes, file: bytes) -> None:
    """The task answer, the poll answer and the CSV file, each possibly wrong."""
    polls = [0]

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/async/exportContacts"):
            return httpx.Response(200, content=task)
        if path.endswith("/async/getTaskResult"):
            polls[0] += 1
            return httpx.Response(200, content=result)
        return httpx.Response(200, content=file)

    provider = make(target("unisender"), serving(answer))
    expect_verdict_or_provider_error(lambda: list(provider.export()))


@FUZZ
@given(st.text(max_size=60), st.binary(max_size=300))
@example("A:", b"")  # a scheme and nothing else: not a place a file can come from
def test_unisender_export_file_url_and_body(url: str, file: bytes) -> None:
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

    provider = make(target("unisender"), serving(answer))
    expect_verdict_or_provider_error(lambda: list(provider.export()))


# ---------------------------------------------------------------------------- sms.by


@FUZZ
@given(answers(SMSBY_KEYS, smsby_envelope), STATUSES, CONTENT_TYPES)
def test_smsby_import_answer(body: bytes, status: int, content_type: str) -> None:
    provider = make(target("smsby", key="phone"), fixed(status, body, content_type))
    call = PushCall("create", ("first_name",), PHONE_ROWS)
    expect_verdict_or_provider_error(lambda: provider.push(call), rows=len(PHONE_ROWS))


@FUZZ
@given(answers(SMSBY_KEYS, smsby_envelope), STATUSES)
def test_smsby_create_list_answer(body: bytes, status: int) -> None:
    config = target("smsby", key="phone", list_id="fuzz list", create_missing_list=True)
    provider = make(config, fixed(status, body, ""))
    expect_verdict_or_provider_error(lambda: provider.prepare([], create_missing=True))


# ---------------------------------------------------------------------------- Octopush


@FUZZ
@given(answers(OCTOPUSH_KEYS, lambda v: v), STATUSES, CONTENT_TYPES)
def test_octopush_answer(body: bytes, status: int, content_type: str) -> None:
    config = target("octopush", key="phone", api_login="me@example.com", list_id="fuzz")
    provider = make(config, fixed(status, body, content_type))
    call = PushCall("create", ("first_name",), PHONE_ROWS)
    expect_verdict_or_provider_error(lambda: provider.push(call), rows=len(PHONE_ROWS))


@FUZZ
@given(answers(OCTOPUSH_KEYS, lambda v: v), STATUSES)
def test_octopush_create_list_answer(body: bytes, status: int) -> None:
    config = target(
        "octopush", key="phone", api_login="me@example.com", list_id="l", create_missing_list=True
    )
    provider = make(config, fixed(status, body, ""))
    expect_verdict_or_provider_error(lambda: provider.prepare([], create_missing=True))


# ---------------------------------------------------------------------------- named cases


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
def test_unisender_named_bad_answers(body: bytes, says: str) -> None:
    provider = make(target("unisender"), fixed(200, body, "application/json"))
    with pytest.raises(ProviderError, match=says) as caught:
        provider.push(PushCall("create", ("Name",), ROWS))
    assert caught.value.code == "bad_answer"


def test_warnings_of_any_shape_are_only_logged() -> None:
    body = b'{"result": {"total": 2, "inserted": 2, "updated": 0, "deleted": 0}, "warnings": 5}'
    provider = make(target("unisender"), fixed(200, body, "application/json"))
    outcomes = provider.push(PushCall("create", ("Name",), ROWS))
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

    provider = make(target("unisender"), serving(answer))
    with pytest.raises(ProviderError, match="file_to_download"):
        list(provider.export())


# ---------------------------------------------------------------------------- Netcore

NETCORE_KEYS = ["result", "requestid", "message", "status", "errors"]


@FUZZ
@given(answers(NETCORE_KEYS, lambda v: v), STATUSES, CONTENT_TYPES)
def test_netcore_answer(body: bytes, status: int, content_type: str) -> None:
    provider = make(target("netcore"), fixed(status, body, content_type))
    call = PushCall("create", ("NAME",), ROWS)
    expect_verdict_or_provider_error(lambda: provider.push(call), rows=len(ROWS))
