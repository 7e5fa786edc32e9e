"""What the provider adapter tests share: the one place a target is built, a recording transport,
canned answers, the form decoding of a request, rows to push, and the generated answers the
fuzz tests feed an adapter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from syncd.config import TargetConfig
from syncd.core.projection import Projection
from syncd.providers.base import Op, RowChange

Handler = Callable[[httpx.Request], httpx.Response]


def build_target(values: dict[str, Any]) -> TargetConfig:
    """A target from its settings, as a config file's ``[[target]]`` table gives them."""
    return TargetConfig(**values)


class Recorder(httpx.BaseTransport):
    """Serves ``handler`` in-process and keeps every request, body read."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self.closed = False
        self._inner = httpx.MockTransport(handler)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self.closed = True

    def calls(self, method: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(f"/api/{method}")]


def answering(body: Any, status: int = 200, content_type: str | None = None) -> httpx.MockTransport:
    """A provider that gives every request the same answer: ``body`` as JSON, or as raw bytes
    (with ``content_type``, when given)."""
    if isinstance(body, bytes):
        headers = {"content-type": content_type} if content_type else {}
        return httpx.MockTransport(
            lambda request: httpx.Response(status, content=body, headers=headers)
        )
    return httpx.MockTransport(lambda request: httpx.Response(status, json=body))


def admin(emulator: Any, method: str, op: str, body: Any = None) -> httpx.Response:
    """A call to an emulator's test controls (``/_emulator/<op>``), in-process."""
    return emulator.handle(  # type: ignore[no-any-return]
        httpx.Request(method, f"http://emu.test/_emulator/{op}", json=body)
    )


def form(request: httpx.Request) -> list[tuple[str, str]]:
    return parse_qsl(request.content.decode(), keep_blank_values=True)


def header_and_rows(request: httpx.Request) -> tuple[list[str], list[list[str]]]:
    """Rebuild `field_names` and `data` from indexed PHP brackets (§1.1)."""
    names: dict[int, str] = {}
    cells: dict[int, dict[int, str]] = {}
    for key, value in form(request):
        if key.startswith("field_names["):
            names[int(key[12:-1])] = value
        elif key.startswith("data["):
            i, j = (int(x) for x in key[5:-1].split("]["))
            cells.setdefault(i, {})[j] = value
    header = [names[j] for j in sorted(names)]
    rows = [[cells[i][j] for j in sorted(cells[i])] for i in sorted(cells)]
    return header, rows


def imported_rows(request: httpx.Request) -> list[dict[str, str]]:
    """The rows of an import with indexed `field_names` and `data`, one dict per row."""
    header, rows = header_and_rows(request)
    return [dict(zip(header, cells, strict=True)) for cells in rows]


def row(
    op: Op,
    key: str,
    fields: dict[str, str] | None = None,
    *,
    tags: Iterable[str] = (),
    status: str = "active",
) -> RowChange:
    return RowChange(op, Projection.build(key, fields or {}, tags, status))


# ---------------------------------------------------------------------------- generated answers

# Each provider runs the contract's fuzz tests on one inherited method: the examples differ by
# subclass, which is what differing_executors warns about, and is meant here.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.differing_executors,
    ],
)

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
