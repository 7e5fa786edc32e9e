"""The promises every provider adapter keeps (``syncd.providers.base.Provider``), as one suite.

A provider's test file subclasses ``ProviderContract`` once: it names the adapter class, the
target settings, an emulator of the provider and how a write request carries its rows
(``sent_rows``; ``file_rows`` for the file of a call the provider confirms later), and inherits
one test per promise:

- ``prepare`` can run again, and a second run creates nothing;
- ``push`` gives one outcome per row, in the call's order, and a refused row says why;
- a contact that opted out goes out as one, or is refused without being sent (an import would
  make it an active contact of a provider that cannot hold the opt-out);
- ``push`` sends what ``wire_rows`` shows (in its requests, or in the call's file), to the
  method ``method_name`` names;
- no request carries more rows than ``rows_per_call`` or more fields than ``fields_per_call``,
  no tags when ``tags`` is False, and no export request is made when ``export`` is False;
- an export is complete, or raises a ``ProviderError`` (``ExportIncomplete`` when the list was
  cut short): never a part of the list taken for the whole;
- any answer bytes give a verdict for every row or a ``ProviderError`` that says something,
  never another exception;
- the API key is in no URL, exception message or log record, even when the provider quotes the
  request it refuses;
- ``close`` releases the transport.

The subclass's own file keeps only the wire details: how calls look on the wire, what the
provider's answers mean, and its emulator. The operations a capability rules out (a delete
when ``delete`` is False) are the planner's to withhold (``syncd.core.batching``); the suite
never sends them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import quote, quote_plus

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from provider_helpers import (
    CONTENT_TYPES,
    FUZZ,
    STATUSES,
    Handler,
    Recorder,
    answering,
    answers,
    build_target,
    row,
)

from syncd.config import TargetConfig
from syncd.errors import ExportIncomplete, ProviderError
from syncd.providers.base import JobTicket, Op, Provider, PushCall, RowChange, RowOutcome

P = TypeVar("P", bound=Provider)
Wire = dict[str, str]  # one row as ``wire_rows`` shows it

COMMON: dict[str, Any] = {
    "name": "contract",
    "list_id": "1",
    "rate_limit_per_minute": 600_000,
    "export_poll_interval": 0.001,
}


class Emulator(Protocol):
    def handle(self, request: httpx.Request) -> httpx.Response: ...


class ProviderContract(Generic[P]):
    """The suite; a ``Test…`` subclass per provider sets the class attributes and the hooks."""

    adapter_class: Callable[..., P]  # called as (target, transport=..., sleep=...)
    provider: ClassVar[str]  # the target's ``provider`` setting
    api_key: ClassVar[str]  # the key the emulator accepts
    settings: ClassVar[dict[str, Any]]  # base_url, key, fields and the provider's own settings
    keys: ClassVar[tuple[str, ...]]  # three keys or more the provider accepts, unsorted
    columns: ClassVar[tuple[str, ...]]  # the mapped remote fields a call carries by default
    # settings under which ``prepare`` asks the provider something (for the answer fuzz)
    prepare_settings: ClassVar[dict[str, Any]] = {}
    answer_names: ClassVar[list[str]]  # the names the adapter's answer readers look for
    # What an export answer cut short raises. ExportIncomplete lets the cycle push its local
    # changes only; another ProviderError fails the cycle. Neither infers anything from the part
    # that was read.
    cut_export_raises: ClassVar[type[ProviderError]] = ExportIncomplete

    # ------------------------------------------------------------------ hooks

    def emulator(self) -> Emulator:
        """A fresh emulated account holding the target's list."""
        raise NotImplementedError

    def sent_rows(self, request: httpx.Request) -> list[dict[str, str]]:
        """The rows a write request carries, each as ``wire_rows`` shows a row."""
        raise NotImplementedError

    @staticmethod
    def envelope(value: Any) -> Any:
        """A generated answer value wrapped as the provider wraps its answers."""
        return value

    def column_names(self, n: int) -> tuple[str, ...]:
        """``n`` remote field names the provider accepts."""
        return tuple(f"F{i}" for i in range(n))

    def file_rows(self, body: bytes) -> list[dict[str, str]]:
        """The rows of a file the provider fetches (``hosted_file``), as ``wire_rows`` shows
        them; only for a provider that confirms calls later."""
        raise NotImplementedError

    def value(self, column: str, i: int) -> str:
        """A value of ``column`` the provider accepts, for the ``i``-th row."""
        return f"{column.lower()} {i}"

    # ------------------------------------------------------------------ building

    @classmethod
    def target(cls, **overrides: Any) -> TargetConfig:
        values = {**COMMON, "provider": cls.provider, "api_key": cls.api_key, **cls.settings}
        values.update(overrides)
        return build_target(values)

    @classmethod
    def adapter(
        cls,
        emulator: Emulator | Handler | None = None,
        transport: httpx.BaseTransport | None = None,
        *,
        sleep: Callable[[float], None] | None = None,
        **overrides: Any,
    ) -> P:
        """The adapter for ``target(**overrides)``, over ``transport`` or else ``emulator``
        served in-process; its retries never sleep unless ``sleep`` says otherwise."""
        if transport is None:
            assert emulator is not None
            handler = emulator if callable(emulator) else emulator.handle
            transport = httpx.MockTransport(handler)
        return cls.adapter_class(
            cls.target(**overrides), transport=transport, sleep=sleep or (lambda _s: None)
        )

    @classmethod
    def call(
        cls, op: Op, *rows: RowChange, columns: tuple[str, ...] | None = None, **flags: Any
    ) -> PushCall:
        """One write call; creates and updates carry ``columns`` (the class's by default)."""
        if columns is None:
            columns = cls.columns if op in ("create", "update") else ()
        return PushCall(op, columns, rows, **flags)

    def ops(self, provider: Provider) -> list[Op]:
        """The operations the provider's capabilities allow, in an order one list can take."""
        caps = provider.capabilities
        ops: list[Op] = ["create", "update"]
        return ops + ["exclude"] * caps.exclude + ["delete"] * caps.delete

    def pushed(
        self, op: Op, keys: tuple[str, ...], columns: tuple[str, ...], *, tags: bool = False
    ) -> PushCall:
        """A call of ``op`` over ``keys``, with a value for each of ``columns`` (and a tag on
        each row when ``tags``)."""
        writes = op in ("create", "update")
        rows = (
            row(
                op,
                k,
                {c: self.value(c, i) for c in columns} if writes else {},
                tags={f"tag{i}"} if writes and tags else (),
            )
            for i, k in enumerate(keys)
        )
        return self.call(op, *rows, columns=columns if writes else (), with_tags=writes and tags)

    def many_keys(self, n: int) -> tuple[str, ...]:
        """``n`` distinct keys the provider accepts."""
        if self.target().key == "email":
            return tuple(f"p{i}@example.com" for i in range(n))
        return tuple(f"+3752910{i:05d}" for i in range(n))

    def send(self, provider: Provider, call: PushCall) -> tuple[list[RowOutcome], list[Wire]]:
        """``provider.push(call)`` as the engine makes it (a call whose rows go in a file the
        provider fetches carries a job ticket); its outcomes and the rows of that file."""
        body = provider.hosted_file(call)
        if body is None:
            return provider.push(call), []
        ticket = JobTicket(uuid.uuid4().hex, 0, "f" * 32, "c" * 32)
        return provider.push(replace(call, job=ticket)), self.file_rows(body)

    def sent(self, requests: list[httpx.Request], filed: list[Wire]) -> list[Wire]:
        """Every row that went out: in the write requests, then in the call's file."""
        return [d for r in requests for d in self.sent_rows(r)] + filed

    @pytest.fixture
    def emu(self) -> Emulator:
        return self.emulator()

    @pytest.fixture
    def recorder(self, emu: Emulator) -> Recorder:
        return Recorder(emu.handle)

    @pytest.fixture
    def subject(self, recorder: Recorder) -> Iterator[P]:
        """The adapter under test, over the emulator through ``recorder``."""
        subject = self.adapter(transport=recorder)
        yield subject
        subject.close()

    # ------------------------------------------------------------------ prepare

    def test_prepare_can_run_again_and_creates_nothing_the_second_time(
        self, subject: P, recorder: Recorder
    ) -> None:
        columns = self.column_names(len(self.columns) + 1)  # one the account may lack
        subject.prepare(columns, create_missing=True)
        writes = subject.stats.writes
        subject.prepare(columns, create_missing=True)
        assert subject.stats.writes == writes
        again = self.adapter(transport=recorder)  # another process, the same account
        again.prepare(columns, create_missing=True)
        assert again.stats.writes == 0
        again.close()

    # ------------------------------------------------------------------ push

    def test_push_gives_one_outcome_per_row_in_the_calls_order(self, subject: P) -> None:
        subject.prepare(self.columns, create_missing=True)
        opted_out = row("create", self.keys[1], status="unsubscribed")
        for op in self.ops(subject):
            call = self.pushed(op, self.keys, self.columns)
            if op in ("create", "update"):  # one the provider may refuse locally, mid-call
                call = self.call(op, call.rows[0], RowChange(op, opted_out.row), *call.rows[2:])
            outcomes, _ = self.send(subject, call)
            assert [o.key for o in outcomes] == [rc.row.key for rc in call.rows], op
            assert all(isinstance(o, RowOutcome) and (o.ok or o.code) for o in outcomes), op

    def test_push_sends_what_wire_rows_shows_to_the_method_method_name_names(
        self, subject: P, recorder: Recorder
    ) -> None:
        subject.prepare(self.columns, create_missing=True)
        for op in self.ops(subject):
            call = self.pushed(op, self.keys, self.columns)
            recorder.requests.clear()
            shown = subject.wire_rows(call, 2)
            method = subject.method_name(call)
            assert recorder.requests == []  # neither asks the provider
            assert isinstance(method, str) and method, op
            assert len(shown) == 2 and all(isinstance(v, str) for d in shown for v in d.values())
            outcomes, filed = self.send(subject, call)
            assert all(o.ok for o in outcomes), op
            assert recorder.requests and all(method in str(r.url) for r in recorder.requests)
            sent = self.sent(recorder.requests, filed)
            assert sent == subject.wire_rows(call, len(call.rows)), (op, sent)

    def test_an_opt_out_the_provider_cannot_hold_is_refused_and_never_sent(
        self, subject: P, recorder: Recorder
    ) -> None:
        if "unsubscribed" in subject.capabilities.statuses:
            pytest.skip("the provider holds opt-outs: it is sent as one")
        subject.prepare(self.columns, create_missing=True)
        cases: tuple[tuple[Op, str], ...] = (("create", "unsubscribed"), ("update", "blocked"))
        for op, status in cases:
            recorder.requests.clear()
            call = self.pushed(op, self.keys, self.columns)
            opted_out = RowChange(op, row(op, self.keys[1], status=status).row)
            call = self.call(op, call.rows[0], opted_out, *call.rows[2:])
            outcomes, filed = self.send(subject, call)
            assert [o.ok for o in outcomes] == [True, False, *(True for _ in call.rows[2:])]
            assert outcomes[1].code == "opt_out_unsupported" and not outcomes[1].retryable
            sent = self.sent(recorder.requests, filed)
            (withheld,) = subject.wire_rows(self.call(op, opted_out), 1)
            assert withheld not in sent and len(sent) == len(call.rows) - 1

    def test_no_call_carries_more_rows_or_fields_than_the_capabilities_allow(
        self, emu: Emulator, recorder: Recorder
    ) -> None:
        provider = self.adapter(transport=recorder)
        caps = provider.capabilities
        columns = self.column_names(caps.fields_per_call)
        provider.prepare(columns, create_missing=True)
        keys = self.many_keys(caps.rows_per_call)
        recorder.requests.clear()
        call = self.pushed("create", keys, columns)
        outcomes, filed = self.send(provider, call)
        assert all(o.ok for o in outcomes)
        for sent in [*(self.sent_rows(r) for r in recorder.requests), filed]:
            assert len(sent) <= caps.rows_per_call
            assert all(len(set(d) & set(columns)) <= caps.fields_per_call for d in sent)
        assert len(self.sent(recorder.requests, filed)) == len(keys)
        provider.close()

    def test_tags_go_out_only_when_the_capabilities_allow(
        self, subject: P, recorder: Recorder
    ) -> None:
        subject.prepare(self.columns, create_missing=True)
        recorder.requests.clear()
        tags = subject.capabilities.tags
        rows = [row("create", k, tags={"contracttag"}) for k in self.keys]
        outcomes, filed = self.send(subject, self.call("create", *rows, with_tags=tags))
        assert all(o.ok for o in outcomes)
        carried = [r for r in recorder.requests if b"contracttag" in r.content + r.url.raw_path]
        assert bool(carried or any("contracttag" in str(d) for d in filed)) == tags

    # ------------------------------------------------------------------ export

    def test_no_export_request_is_made_when_the_capabilities_rule_export_out(
        self, subject: P, recorder: Recorder
    ) -> None:
        if subject.capabilities.export:
            pytest.skip("the provider exports")
        with pytest.raises(NotImplementedError):
            next(iter(subject.export()))
        assert recorder.requests == []

    def test_an_export_is_complete_or_raises(self, emu: Emulator) -> None:
        provider = self.adapter(emu)
        if not provider.capabilities.export:
            pytest.skip("the provider documents no export")
        provider.prepare(self.columns, create_missing=True)
        outcomes, _ = self.send(provider, self.pushed("create", self.keys, self.columns))
        assert all(o.ok for o in outcomes)
        recorder = Recorder(emu.handle)
        whole = {c.projection.key for c in self.adapter(transport=recorder).export()}
        assert whole == set(self.keys)

        kinds: set[type[Exception]] = set()
        for cut in range(len(recorder.requests)):
            for fault in (_truncated, _dropped):
                handler = _faulty(emu.handle, cut, fault)
                try:
                    got = {c.projection.key for c in self.adapter(handler, retries=0).export()}
                except ProviderError as exc:
                    kinds.add(type(exc))
                    continue
                assert got == whole, f"request {cut} {fault.__name__}: a partial export"
        assert any(issubclass(kind, self.cut_export_raises) for kind in kinds), kinds

    # ------------------------------------------------------------------ any answer

    def expect_verdict_or_provider_error(self, run: Callable[[], Any], rows: int | None) -> None:
        """The one rule: a complete answer, or a ProviderError that says something."""
        try:
            result = run()
        except ProviderError as exc:
            message = str(exc)
            assert message.strip(), "a ProviderError with no message"
            assert self.api_key not in message
            return
        if rows is not None:
            assert len(result) == rows
            assert all(outcome.ok or outcome.code for outcome in result)

    def answered(self, data: st.DataObject, status: int, content_type: str = "", **over: Any) -> P:
        """An adapter whose provider gives every request one drawn answer; no retries."""
        body = data.draw(answers(self.answer_names, self.envelope), label="body")
        transport = answering(body, status, content_type)
        return self.adapter(transport=transport, retries=0, export_timeout=0.01, **over)

    @FUZZ
    @given(data=st.data(), status=STATUSES, content_type=CONTENT_TYPES)
    def test_any_answer_to_a_push_gives_a_verdict_or_a_provider_error(
        self, data: st.DataObject, status: int, content_type: str
    ) -> None:
        provider = self.answered(data, status, content_type)
        call = self.pushed("create", self.keys[:2], self.columns, tags=provider.capabilities.tags)
        run = lambda: self.send(provider, call)[0]  # noqa: E731
        self.expect_verdict_or_provider_error(run, len(call.rows))

    @FUZZ
    @given(data=st.data(), status=STATUSES)
    def test_any_answer_to_prepare_gives_a_verdict_or_a_provider_error(
        self, data: st.DataObject, status: int
    ) -> None:
        provider = self.answered(data, status, **self.prepare_settings)
        run = lambda: provider.prepare(self.columns, create_missing=True)  # noqa: E731
        self.expect_verdict_or_provider_error(run, None)

    @FUZZ
    @given(data=st.data(), status=STATUSES)
    def test_any_answer_to_an_export_gives_contacts_or_a_provider_error(
        self, data: st.DataObject, status: int
    ) -> None:
        provider = self.answered(data, status)
        if not provider.capabilities.export:
            pytest.skip("the provider documents no export")
        self.expect_verdict_or_provider_error(lambda: list(provider.export()), None)

    # ------------------------------------------------------------------ the key

    def test_the_api_key_is_in_no_url_message_or_log_record(
        self, emu: Emulator, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        secret = self.api_key
        spellings = {secret, secret.lower(), quote(secret, safe=""), quote_plus(secret)}
        recorder = Recorder(emu.handle)
        provider = self.adapter(transport=recorder)
        provider.prepare(self.columns, create_missing=True)
        for op in self.ops(provider):
            self.send(provider, self.pushed(op, self.keys, self.columns))
        if provider.capabilities.export:
            list(provider.export())
        provider.close()
        assert recorder.requests  # the key was sent: the emulator accepts no other
        said: list[str] = [str(r.url) for r in recorder.requests]

        # a provider that refuses every request, quoting it whole (key included)
        for status in (200, 400, 401, 500):
            for shape in ("json", "code", "text"):
                handler = _echoing(status, shape)
                for run in self.every_method(handler):
                    try:
                        run()
                    except ProviderError as exc:
                        said += [str(exc), repr(exc), repr(exc.args)]
        said += [record.getMessage() for record in caplog.records]
        said += [repr(record.__dict__) for record in caplog.records]
        for text in said:
            for spelling in spellings:
                assert spelling not in text, text

    def every_method(self, handler: Handler) -> Iterator[Callable[[], Any]]:
        """Each public method of an adapter over ``handler``, ready to run."""
        adapter = self.adapter(handler, retries=0, export_timeout=0.01)
        yield lambda: adapter.prepare(self.columns, create_missing=True)
        with_calls = self.adapter(handler, retries=0, **self.prepare_settings)
        yield lambda: with_calls.prepare(self.columns, create_missing=True)
        for op in self.ops(adapter):
            call = self.pushed(op, self.keys, self.columns)
            yield lambda call=call: self.send(adapter, call)  # type: ignore[misc]
        if adapter.capabilities.export:
            yield lambda: list(adapter.export())

    # ------------------------------------------------------------------ close

    def test_close_releases_the_transport(self, subject: P, recorder: Recorder) -> None:
        subject.prepare(self.columns, create_missing=True)
        subject.close()
        assert recorder.closed


def _echoing(status: int, shape: str) -> Handler:
    """A provider that refuses every request and quotes it, headers and body included (with
    ``shape`` "code", in its error code too)."""

    def handler(request: httpx.Request) -> httpx.Response:
        quoted = f"{request.method} {request.url} {dict(request.headers)} {request.read()!r}"
        if shape == "text":
            return httpx.Response(status, text=f"refused: {quoted}")
        body = {"status": "error", "result": quoted, "error": quoted, "message": quoted}
        return httpx.Response(
            status, json={**body, "code": quoted if shape == "code" else "invalid_arg"}
        )

    return handler


def _truncated(response: httpx.Response) -> httpx.Response:
    body = response.read()
    return httpx.Response(response.status_code, content=body[: len(body) // 2])


def _dropped(response: httpx.Response) -> httpx.Response:
    raise httpx.ReadError("connection reset")


def _faulty(
    handle: Handler, cut: int, fault: Callable[[httpx.Response], httpx.Response]
) -> Handler:
    """``handle``, with ``fault`` spoiling the answer to request number ``cut``."""
    seen = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        response = handle(request)
        seen[0] += 1
        return fault(response) if seen[0] == cut + 1 else response

    return handler
