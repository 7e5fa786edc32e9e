"""HTTP plumbing shared by the provider adapters: one client, retries, a rate limiter, call stats.

An adapter owns the wire format (how parameters are encoded, what an error envelope looks like);
this module owns what every provider needs the same way (DESIGN §4, "HTTP"):

- one ``httpx.Client`` per adapter, connect timeout 10 s, read timeout from the target's config,
  and one TLS context for all of them (``tls_context``);
- retries with jittered exponential backoff on timeouts, dropped connections, HTTP 5xx/429 and
  answers the adapter classifies as "try later" (``TryLater``), honouring ``Retry-After``;
- a token bucket per API key, shared by every adapter in the process that uses that key, since
  the providers count calls per key, not per list;
- every attempt recorded in ``CallStats``;
- the API key never reaches a message: adapters put it in POST bodies (DESIGN rule 7) and every
  text this module produces is scrubbed of it anyway.
- ``HttpProvider``, the base of every built-in adapter: it holds the target and this client, and
  its constructor is the shape a ``ProviderSpec`` builds adapters with.

``sleep`` and ``clock`` are injectable so that tests neither wait nor depend on wall time.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import operator
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote_plus

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from syncd.errors import ProviderError, ProviderUnreachable, TryLater
from syncd.logs import secret_forms
from syncd.metrics import call_observer
from syncd.providers.base import CallStats, Provider

if TYPE_CHECKING:
    from syncd.config import TargetConfig

T = TypeVar("T")

CONNECT_TIMEOUT = 10.0
MAX_RETRY_AFTER = 60.0  # a Retry-After longer than this is not worth holding a cycle for
Form = Mapping[str, str | Sequence[str]]


@cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every provider client of this process verifies servers with, made once:
    making them loads the whole CA bundle (about 40 ms of CPU here), and the daemon makes a
    new client every cycle. httpx's own default, shared (``SSL_CERT_FILE``/``SSL_CERT_DIR``
    are read the first time)."""
    return httpx.create_ssl_context()


# Failures that say nothing about the request itself: the network or the server may recover.
# LocalProtocolError and UnsupportedProtocol are ours (a bad URL), so they are not retried.
_TRANSIENT_HTTPX = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)


# --------------------------------------------------------------------------- rate limiting


class RateWindow:
    """At most ``per_minute`` calls in any 60 s: the providers' own rule (wire facts §1.3).

    ``reserve()`` books the earliest moment the next call may start and returns how long the
    caller must wait for it; callers sleep outside the lock. Keeping the start times of the last
    ``per_minute`` calls makes this exact whether the provider's window is fixed or sliding,
    and it never spins on the clock, so an injected no-op sleep in tests cannot make it loop.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.per_minute = max(1, per_minute)
        self._starts: deque[float] = deque()

    def tighten(self, per_minute: int) -> None:
        """Two targets sharing a key with different settings: the stricter one holds."""
        with self._lock:
            self.per_minute = max(1, min(self.per_minute, per_minute))

    def reserve(self) -> float:
        with self._lock:
            now = self._clock()
            n = self.per_minute
            at = now if len(self._starts) < n else max(now, self._starts[-n] + 60.0)
            self._starts.append(at)
            while len(self._starts) > n:
                self._starts.popleft()
            return at - now


_buckets: dict[tuple[str, str], RateWindow] = {}
_buckets_lock = threading.Lock()


def key_fingerprint(api_key: str) -> str:
    """A stable, non-reversible name for an API key (registry keys, logs). Never the key."""
    return hashlib.blake2b(api_key.encode(), digest_size=8, person=b"syncd-key").hexdigest()


def shared_bucket(
    api_key: str, per_minute: int, *, scope: str = "", clock: Callable[[], float] = time.monotonic
) -> RateWindow:
    """The process-wide bucket for one API key (and an optional scope such as one method)."""
    name = (key_fingerprint(api_key), scope)
    with _buckets_lock:
        bucket = _buckets.get(name)
        if bucket is None:
            bucket = _buckets[name] = RateWindow(per_minute, clock=clock)
        else:
            bucket.tighten(per_minute)
        return bucket


# --------------------------------------------------------------------------- the client


def parse_retry_after(
    value: str | None, *, now: Callable[[], datetime] | None = None
) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now() if now else datetime.now(UTC))).total_seconds()
    return max(0.0, seconds)


class ProviderHttp:
    """One provider account's HTTP client with retries, rate limiting and call statistics."""

    def __init__(
        self,
        *,
        provider: str,
        api_key: str,
        timeout: float,
        retries: int,
        rate_limit_per_minute: int,
        stats: CallStats,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        method_limits: Mapping[str, int] | None = None,
        max_retry_after: float = MAX_RETRY_AFTER,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        self.provider = provider
        self.retries = retries
        self.stats = stats
        self.max_retry_after = max_retry_after
        # longest first, so a form that contains another is replaced whole
        self._secrets = sorted(secret_forms(api_key), key=len, reverse=True) if api_key else []
        self._sleep = sleep
        self._backoff = wait_exponential_jitter(
            initial=backoff_initial, max=backoff_max, jitter=backoff_initial
        )
        self._bucket = shared_bucket(api_key, rate_limit_per_minute)
        self._method_buckets = {
            method: shared_bucket(api_key, limit, scope=method)
            for method, limit in (method_limits or {}).items()
        }
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
            transport=transport,
            headers={"User-Agent": "syncd"},
            verify=tls_context(),
            follow_redirects=False,  # a redirected POST would drop its body (and the key in it)
        )

    @classmethod
    def for_target(
        cls,
        provider: str,
        target: TargetConfig,
        stats: CallStats,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
        method_limits: Mapping[str, int] | None = None,
    ) -> ProviderHttp:
        """The client a target's settings describe (timeout, retries, rate limit, key)."""
        return cls(
            provider=provider,
            api_key=target.api_key.get_secret_value(),
            timeout=target.timeout,
            retries=target.retries,
            rate_limit_per_minute=target.rate_limit_per_minute,
            stats=stats,
            transport=transport,
            sleep=sleep or time.sleep,
            method_limits=method_limits,
        )

    # ---- public

    def post_form(
        self,
        method: str,
        url: str,
        form: Form,
        *,
        write: bool,
        parse: Callable[[httpx.Response], T],
    ) -> T:
        """POST ``form`` url-encoded to ``url`` and return ``parse(response)``, with retries.

        ``parse`` sees every 2xx answer; it raises ``TryLater`` for answers that ask for a
        retry and ``ProviderError`` for answers that are final errors.
        """

        request = self.client.build_request("POST", url, data=form)
        return self._request(method, request, write=write, parse=parse, client_errors=False)

    def send(
        self,
        method: str,
        request: httpx.Request,
        *,
        write: bool,
        parse: Callable[[httpx.Response], T],
    ) -> T:
        """Send a prepared request (any verb, any body, e.g. JSON) and return ``parse(response)``.

        Retries as ``post_form`` does, but 4xx answers other than 429 reach ``parse`` too, so an
        adapter whose provider signals errors with 4xx statuses and a JSON body (Octopush, sms.by)
        can read the provider's message instead of a bare status. The request is re-sent as is
        on a retry, so its body must be bytes (``json=``, ``data=``, ``content=bytes``).
        """

        return self._request(method, request, write=write, parse=parse, client_errors=True)

    def _request(
        self,
        method: str,
        request: httpx.Request,
        *,
        write: bool,
        parse: Callable[[httpx.Response], T],
        client_errors: bool,
    ) -> T:
        """One request with retries; ``parse`` turns the answer into a result or ``TryLater``."""

        def attempt() -> T:
            response = self._send(method, request, client_errors=client_errors)
            try:
                return parse(response)
            except TryLater as exc:
                if exc.retry_after is None:
                    exc.retry_after = parse_retry_after(response.headers.get("retry-after"))
                raise
            finally:
                # httpx binds an answer and its stream to each other, a reference cycle that
                # keeps the answer, its request and the request's body (a bulk import's
                # hundreds of KB) until the garbage collector runs, which bulk work makes rare
                # (``syncd.collector``). The body is read and the stream closed: let go of it.
                response.stream = _READ

        return self._with_retries(method, write, attempt)

    @contextmanager
    def download(self, label: str, url: str) -> Iterator[httpx.Response]:
        """GET ``url`` as a stream; retries until the answer's status line is in.

        Failures while reading the body are the caller's to handle: a body cannot be resumed,
        and for an export a partial body must never look complete (DESIGN rule 1).
        """

        def attempt() -> httpx.Response:
            request = self.client.build_request("GET", url)
            return self._send(label, request, stream=True)

        response = self._with_retries(label, False, attempt)
        try:
            yield response
        finally:
            response.close()

    def scrub(self, text: str) -> str:
        """``text`` with the API key blanked out, also URL- or JSON-escaped (a provider may
        quote the request it refuses); defence in depth: it should never be there."""
        for form in self._secrets:
            text = text.replace(form, "***")
        return text

    def snippet(self, response: httpx.Response) -> str:
        """The start of an answer's body, as text for a message (scrubbed of the key)."""
        return self.scrub(response.content[:200].decode("utf-8", "replace"))

    def close(self) -> None:
        self.client.close()

    # ---- internals

    def _send(
        self,
        method: str,
        request: httpx.Request,
        *,
        stream: bool = False,
        client_errors: bool = False,
    ) -> httpx.Response:
        self._throttle(method)
        try:
            response = self.client.send(request, stream=stream, follow_redirects=stream)
        except _TRANSIENT_HTTPX as exc:
            detail = str(exc) or "no detail"
            raise TryLater(f"{type(exc).__name__}: {detail}") from None
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise ProviderError(
                self.scrub(f"{self.provider} {method}: request failed: {reason}"), code="transport"
            ) from None
        status = response.status_code
        if status >= 500 or status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            response.close()
            raise TryLater(f"HTTP {status}", retry_after)
        if client_errors and 400 <= status < 500:
            return response  # the caller reads the provider's error body (``send``)
        if not 200 <= status < 300:
            response.close()
            raise ProviderError(
                f"{self.provider} {method}: unexpected HTTP {status}", code=f"http_{status}"
            )
        return response

    def _throttle(self, method: str) -> None:
        waits = [self._bucket.reserve()]
        bucket = self._method_buckets.get(method)
        if bucket is not None:
            waits.append(bucket.reserve())
        wait = max(waits)
        if wait > 0:
            self.stats.waiting(wait)
            self._sleep(wait)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, TryLater) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        return float(self._backoff(state))

    def _with_retries(self, method: str, write: bool, attempt: Callable[[], T]) -> T:
        tries = self.retries + 1
        number = 0

        def recorded() -> T:
            nonlocal number
            number += 1
            started, outcome = time.monotonic(), "error"
            try:
                result = attempt()
                outcome = "ok"
                return result
            except TryLater:
                outcome = "unreachable" if number >= tries else "retry"
                raise
            finally:
                self.stats.record(method, outcome, write=write)
                # metrics: calls by outcome and latency (includes any wait for the rate window)
                call_observer()(self.provider, method, outcome, time.monotonic() - started)

        retrying = Retrying(
            stop=stop_after_attempt(tries),
            wait=self._wait,
            retry=retry_if_exception_type(TryLater),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(recorded)
        except TryLater as exc:
            raise ProviderUnreachable(
                self.scrub(
                    f"{self.provider} {method}: no usable answer after {number} "
                    f"{'try' if number == 1 else 'tries'} (last: {exc.reason})"
                )
            ) from None


# --------------------------------------------------------------------------- the adapter base


class HttpProvider(Provider):
    """An adapter that reaches its provider over HTTP: one target, one ``ProviderHttp``.

    Every built-in adapter is built alike, ``Adapter(target, transport=..., default_region=...,
    sleep=...)``, so the class itself is its spec's adapter factory. A subclass reads its own
    keys of the target in ``configure``, which runs before the client exists (a bad setting opens
    no connection), and names the methods with a rate limit of their own in ``method_limits``.
    ``default_region`` is for adapters that normalise the provider's phones; the others ignore it.
    """

    target: TargetConfig

    def __init__(
        self,
        target: TargetConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        default_region: str | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        self.target = target
        self.default_region = default_region
        self._sleep = sleep or time.sleep
        self.configure(target)
        self._http = ProviderHttp.for_target(
            self.name,
            target,
            self.stats,
            transport=transport,
            sleep=sleep,
            method_limits=self.method_limits(target),
        )

    def configure(self, target: TargetConfig) -> None:
        """Read the provider's own settings of ``target`` (its capabilities may follow them)."""

    def method_limits(self, target: TargetConfig) -> Mapping[str, int] | None:
        """Calls per minute for methods the provider limits apart from the rest (None: none)."""
        return None

    def close(self) -> None:
        self._http.close()


#: what an answer read in full keeps as its stream (``ProviderHttp._request``)
_READ = httpx.ByteStream(b"")


# --------------------------------------------------------------------------- answers


class NotJson(Exception):
    """An answer body that is not a JSON value Python can hold; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def answer_json(response: httpx.Response) -> Any:
    """The answer's JSON value, or ``NotJson``.

    Besides text that is not JSON (or not UTF-8), Python's json module refuses valid JSON it
    cannot hold: values nested deeper than the interpreter's recursion limit and integers of
    more than 4300 digits. Those are a provider's garbage too, not a reason to crash a cycle.
    """
    try:
        return response.json()
    except json.JSONDecodeError as exc:
        raise NotJson(f"{exc.msg} at character {exc.pos}") from None
    except UnicodeDecodeError:
        raise NotJson("not UTF-8 text") from None
    except RecursionError:
        raise NotJson("values nested too deeply") from None
    except ValueError:
        raise NotJson("a number has too many digits") from None


def answer_object(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's JSON object; None when the body is not JSON or JSON of another kind."""
    try:
        body = answer_json(response)
    except NotJson:
        return None
    return body if isinstance(body, dict) else None


# urlencode's quote_plus, as a str.translate table for ASCII text: unreserved characters stay,
# a space becomes "+", every other character its %XX
_FORM_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_FORM_ESCAPES = {
    c: "+" if c == 0x20 else f"%{c:02X}" for c in range(128) if c not in _FORM_UNRESERVED
}


@dataclass(frozen=True, slots=True)
class FormTable:
    """A table of cells sent as a PHP array of rows, ``name[i][j]`` (the form's key is the
    name): ``cells`` row after row, ``width`` a row. A bulk import of 500 rows has thousands of
    cells; given this way their names are not formatted, stored in a dict and looked up again
    for every call (``form_body`` keeps them quoted, by table shape)."""

    width: int
    cells: Sequence[str]


FormValue = str | Sequence[str] | FormTable


def form_body(form: Mapping[str, FormValue]) -> bytes:
    """``form`` as an ``application/x-www-form-urlencoded`` body, byte for byte what httpx's
    ``data=`` sends (``urlencode(form, doseq=True)``; a ``FormTable`` as its cells one by one,
    ``name[i][j]``). A bulk import of 500 rows has thousands
    of cells, and urllib's quoting of each one in Python costs more than the rest of the call:
    ASCII values, nearly all of them, are escaped together, joined by a newline (which no value
    then holds, so it splits them again), one ``str.replace`` for each character to escape that
    the text holds: a few passes in C over the whole call. (A ``str.translate`` per value looks
    each character up in a dict, and a regular expression calling back for each character to
    escape pays a Python call per escape: 870-970 µs a call of 500 rows of five cells, against
    70-80.)"""
    names: list[str] = []
    values: list[str] = []
    quoted_names = _QUOTED_NAMES
    for key, value in form.items():
        if isinstance(value, FormTable):
            names += _table_names(key, value.width, len(value.cells))
            values += value.cells
            continue
        name = quoted_names.get(key)
        if name is None:
            name = _form_quote(key) + "="
            if len(quoted_names) < _KEPT_NAMES:
                quoted_names[key] = name
        if isinstance(value, str):
            names.append(name)
            values.append(value)
        else:
            for v in value:
                names.append(name)
                values.append(v)
    joined = "\n".join(values)
    if joined.isascii() and joined.count("\n") == len(values) - 1:
        for special, escape in _ASCII_ESCAPES:
            if special in joined:
                joined = joined.replace(special, escape)
        quoted = joined.split("\n")
    else:
        quoted = [_form_quote(v) for v in values]
    return "&".join(map(operator.add, names, quoted)).encode("ascii")


#: (character, escape) for ``form_body``'s joined values, every ASCII character but the newline
#: that joins them: "%" first and "+" before the space, since the escapes bring in both
_ASCII_ESCAPES = sorted(
    ((chr(c), escape) for c, escape in _FORM_ESCAPES.items() if c != 0x0A),
    key=lambda pair: (pair[0] != "%", pair[0] != "+"),
)


#: parameter names as quoted, kept: every import of 500 rows names the same cells again
#: (``data[i][j]``), and quoting the names cost as much as quoting the values
_QUOTED_NAMES: dict[str, str] = {}
_KEPT_NAMES = 20_000


def _table_names(name: str, width: int, cells: int) -> list[str]:
    """The quoted names of a ``FormTable``'s first ``cells`` cells, ``name[i][j]=``, made
    once for each table shape and kept (a few shapes in all: the columns of the calls)."""
    if width <= 0 or cells % width:
        raise ValueError(f"a table of {cells} cells is no whole number of rows of {width}")
    kept = _TABLE_NAMES.get((name, width))
    if kept is None or len(kept) < cells:
        quoted = _form_quote(name)
        kept = [
            f"{quoted}%5B{i}%5D%5B{j}%5D="
            for i in range(max(cells // width, _TABLE_ROWS))
            for j in range(width)
        ]
        if len(_TABLE_NAMES) < _KEPT_SHAPES:
            _TABLE_NAMES[(name, width)] = kept
    return kept[:cells]


_TABLE_NAMES: dict[tuple[str, int], list[str]] = {}
_TABLE_ROWS = 500  # a bulk import's rows (a table made for fewer is made for this many)
_KEPT_SHAPES = 64


def _form_quote(text: str) -> str:
    return text.translate(_FORM_ESCAPES) if text.isascii() else quote_plus(text)


_MAX_COUNT_DIGITS = 18  # a counter of rows in one call; more digits is garbage, not a count


def answer_count(obj: Mapping[str, Any], name: str) -> int | None:
    """A non-negative integer counter in a provider's answer, as a number or a numeric string;
    None if absent or odd (callers then refuse to confirm rows from that answer)."""
    value = obj.get(name)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        digits = value.strip()
        if digits.isascii() and digits.isdigit() and len(digits) <= _MAX_COUNT_DIGITS:
            return int(digits)
    return None
