"""What the provider adapter tests share: a recording transport, the form decoding of a request,
rows to push, and an adapter built over an emulator in-process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import parse_qsl

import httpx

from syncd.config import TargetConfig
from syncd.core.projection import Projection
from syncd.providers import make_provider
from syncd.providers.base import Op, Provider, RowChange

Handler = Callable[[httpx.Request], httpx.Response]
P = TypeVar("P", bound=Provider)


class Recorder(httpx.BaseTransport):
    """Serves ``handler`` in-process and keeps every request, body read."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self._inner = httpx.MockTransport(handler)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self._inner.handle_request(request)

    def calls(self, method: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(f"/api/{method}")]


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


def row(
    op: Op,
    key: str,
    fields: dict[str, str] | None = None,
    *,
    tags: Iterable[str] = (),
    status: str = "active",
) -> RowChange:
    return RowChange(op, Projection.build(key, fields or {}, tags, status))


def adapter_for(
    kind: type[P],
    target: TargetConfig,
    handler: Handler | None = None,
    transport: httpx.BaseTransport | None = None,
) -> P:
    """The adapter ``make_provider`` builds for ``target``: over ``transport``, else ``handler``
    served in-process; its retries never sleep."""
    if transport is None:
        assert handler is not None
        transport = httpx.MockTransport(handler)
    provider = make_provider(target, transport=transport, sleep=lambda _s: None)
    assert isinstance(provider, kind)
    return provider
