"""Test controls of the Unisender/Selzy emulator (``unisender.py``): fault injection, the
in-process helpers and the ``/_emulator/`` routes.

None of this exists at the real provider; it is how tests set up, inspect and break the account.
``Faults`` says which calls fail and how (``draw`` rolls them per call). ``EmulatorControls`` is
the base class of ``UnisenderEmulator`` and gives it the helper methods tests call in-process
(``add_list``, ``sign_up``, ``unsubscribe``, ``block``, ``is_opted_out``, ...). A test, a demo or
syncd in another process reaches the same helpers over HTTP (JSON in and out, no api key):

- ``GET  /_emulator/state[?list_id=N]``: lists, fields and contacts (all, or those in list N)
- ``GET  /_emulator/calls``: API calls per method and the count of write calls
- ``GET  /_emulator/faults``: the ``Faults`` in force and ``injected``, the faults served so far
  by kind; ``POST /_emulator/faults``: replace them (body: their fields); ``reset-calls``
- ``POST /_emulator/list`` ``{"title"}``, ``/_emulator/field`` ``{"name", "type"?}``: new ids
- ``POST /_emulator/contact`` ``{"action", "email", ...}``: edit, change_email (``new_email``),
  unsubscribe, block, delete, set_tags, sign_up; answers the contact afterwards

Unknown contacts and endpoints answer 404, bad bodies 400, a GET where a POST is due 405.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from syncd.emulators.kit.server import DropConnection, serve_forever
from syncd.emulators.unisender_import import CALL_ERROR_CODES, ApiError, error_response, now_utc

if TYPE_CHECKING:
    from syncd.emulators.unisender import Contact


@dataclass
class Faults:
    """Injected failures. ``methods`` names the API methods they hit (empty: all); async ones are
    named ``async/exportContacts``, ``async/getTaskResult`` (their bare name matches too), and the
    export file's download ``download`` (drops, hangs and 5xx only: a file has no envelope).
    ``export_never_completes`` and ``export_truncate`` apply to exports regardless of
    ``methods``. A timeout hangs ``hang_seconds`` and then answers (the call IS applied).

    Two faults concern the rows of an import rather than the call (the importer reads them):
    ``row_reject_rate`` refuses that share of rows in the answer's ``log`` with
    ``row_reject_code`` (the rest of the call applies, §1.4); ``refuse_rate`` picks that share of
    contact keys (fixed per key and ``seed``, so a retry or a smaller batch meets the same key
    again) whose presence makes the provider refuse the whole call with an untyped error naming
    the row, as it does for "Contacts X and Y already exist but owned by different subscribers"
    (§1.2). ``injected`` counts every fault served, by kind, for reports.
    ``answer_delay`` (Unisender/Selzy): the call is applied at once and its answer held that
    long, so a client that dies meanwhile has written without knowing it."""

    latency: float = 0.0
    answer_delay: float = 0.0
    http_5xx_rate: float = 0.0
    http_5xx_status: int = 503
    timeout_rate: float = 0.0
    hang_seconds: float = 60.0
    drop_rate: float = 0.0
    error_code_rate: float = 0.0
    error_code: str = "retry_later"  # item 7: any documented code
    retry_after: str | None = None
    export_never_completes: bool = False
    export_truncate: bool = False
    # Error answers quote the request they refuse, body (and so the API key) included, as
    # some servers do: what a client logs of a provider's message must be scrubbed.
    echo_request: bool = False
    row_reject_rate: float = 0.0
    row_reject_code: str = "retry_later"
    refuse_rate: float = 0.0
    methods: set[str] = field(default_factory=set)
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False, compare=False)
    injected: Counter[str] = field(init=False, default_factory=Counter, compare=False)

    def __post_init__(self) -> None:
        self.methods = set(self.methods)
        self.rng = random.Random(self.seed)

    def hits(self, method: str) -> bool:
        return not self.methods or bool({method, method.removeprefix("async/")} & self.methods)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def count(self, kind: str) -> None:
        self.injected[kind] += 1

    def refuses(self, key: str) -> bool:
        """Whether ``refuse_rate`` picked this contact key (the same answer on every call)."""
        if self.refuse_rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.refuse_rate

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return data | {"methods": sorted(self.methods)}

    def draw(self, method: str, *, envelope: bool = True) -> Callable[[], httpx.Response | None]:
        """Roll this call's faults now (under the emulator's lock). The returned step, run outside
        it, sleeps, drops the connection or answers the injected failure; None: serve the call.
        ``envelope`` False (a file download): no API error code, only HTTP-level faults."""
        hit = self.hits(method)
        drop = hit and self.roll(self.drop_rate)
        hang = hit and self.roll(self.timeout_rate)
        http5xx = hit and self.roll(self.http_5xx_rate)
        errored = hit and envelope and self.roll(self.error_code_rate)
        retry = {"Retry-After": self.retry_after} if self.retry_after else None
        if drop:
            self.count("dropped_connection")
        else:  # a hang then answers, so what follows it is served too
            for kind, rolled in (
                ("read_timeout", hang),
                (f"http_{self.http_5xx_status}", http5xx),
                (self.error_code, errored and not http5xx),
            ):
                if rolled:
                    self.count(kind + (" +Retry-After" if retry and kind != "read_timeout" else ""))

        def inject() -> httpx.Response | None:
            if hit and self.latency > 0:
                time.sleep(self.latency)
            if drop:
                raise DropConnection()
            if hang:
                time.sleep(self.hang_seconds)
            if http5xx:
                status = self.http_5xx_status
                return httpx.Response(status, text=f"<html><h1>{status}</h1></html>", headers=retry)
            if errored:
                return error_response(self.error_code, f"Injected fault: {self.error_code}", retry)
            return None

        return inject


class EmulatorControls:
    """Base of ``UnisenderEmulator``: its in-process helpers and the ``/_emulator/`` router.

    The account state and its primitives belong to ``UnisenderEmulator``; they are declared below
    only for the type checker. Every helper takes the emulator's lock.
    """

    _lock: threading.RLock
    faults: Faults
    calls: Counter[str]
    write_calls: int
    contacts: dict[int, Contact]
    lists: dict[int, str]
    user_fields: dict[int, tuple[str, str]]
    if TYPE_CHECKING:

        def _new_id(self, kind: str) -> int: ...
        def _find(self, email_or_phone: str) -> Contact | None: ...
        def _create(self) -> Contact: ...
        def _set_address(self, contact: Contact, kind: str, value: str) -> None: ...
        def _remove(self, contact: Contact) -> None: ...
        def _set_tags(self, contact: Contact, tags: list[str]) -> None: ...
        def _field_names(self) -> set[str]: ...
        def _check_field(self, name: str, kind: str) -> None: ...
        def _lists_json(self) -> list[dict[str, Any]]: ...
        def _fields_json(self) -> list[dict[str, Any]]: ...

    def _need(self, email_or_phone: str) -> Contact:
        contact = self._find(email_or_phone)
        if contact is None:
            raise KeyError(email_or_phone)
        return contact

    # ---- in-process helpers (createList/createField use the first two) ------------------------

    def add_list(self, title: str) -> int:
        with self._lock:
            if title in self.lists.values():  # §1.6 createList: titles are unique
                raise ApiError(CALL_ERROR_CODES["duplicate"], f'List "{title}" already exists')
            list_id = self._new_id("list")
            self.lists[list_id] = title
            return list_id

    def add_field(self, name: str, type: str = "string") -> int:
        with self._lock:
            self._check_field(name, type)
            field_id = self._new_id("field")
            self.user_fields[field_id] = (name, type)
            return field_id

    def contacts_in_list(self, list_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return [c.to_json() for c in self.contacts.values() if c.in_list(list_id)]

    def get(self, email_or_phone: str) -> dict[str, Any] | None:
        with self._lock:
            contact = self._find(email_or_phone)
            return None if contact is None else contact.to_json()

    def edit(self, email: str, **values: str) -> None:
        with self._lock:
            contact = self._need(email)
            unknown = set(values) - self._field_names()
            if unknown:
                raise KeyError(f"unknown fields {sorted(unknown)}")
            contact.fields.update(values)

    def change_email(self, email: str, new_email: str) -> None:
        """The person changes their address at the provider (a profile form or the UI): the
        same contact, with its lists, fields and status, under the new address."""
        with self._lock:
            contact = self._need(email)
            new = new_email.strip().lower()
            if self._find(new) is not None:
                raise ValueError(f"{new} belongs to another contact")
            self._set_address(contact, "email", new)

    def set_tags(self, email: str, tags: list[str]) -> None:
        with self._lock:
            self._set_tags(self._need(email), tags)

    def unsubscribe(self, email: str, list_id: int | None = None) -> None:
        """``list_id`` None: the account-level status becomes ``unsubscribed``."""
        with self._lock:
            contact = self._need(email)
            if list_id is None:
                contact.email_status = "unsubscribed"
            else:
                contact.lists.discard(list_id)
                contact.unsubscribed.add(list_id)

    def block(self, email: str) -> None:
        with self._lock:
            self._need(email).email_status = "blocked"  # §1.7: blocked by the service

    def delete(self, email: str) -> None:
        with self._lock:
            self._remove(self._need(email))

    def sign_up(
        self,
        email: str,
        list_id: int,
        fields: dict[str, str] | None = None,
        tags: list[str] | None = None,
    ) -> int:
        """The contact itself subscribes (confirmed opt-in): it may re-activate itself (§1.6)."""
        with self._lock:
            if list_id not in self.lists:
                raise KeyError(f"list {list_id}")
            contact = self._find(email)
            if contact is None:
                contact = self._create()
                self._set_address(contact, "email", email.strip().lower())
            if contact.email_status != "blocked":
                contact.email_status = "active"
            contact.lists.add(list_id)
            contact.unsubscribed.discard(list_id)
            contact.excluded.discard(list_id)
            contact.subscribed_at[list_id] = now_utc()
            if fields:
                self.edit(email, **fields)
            if tags:
                self._set_tags(contact, contact.tags + tags)
            return contact.id

    def is_opted_out(self, email_or_phone: str, list_id: int) -> bool:
        """Whether the contact is opted out of list L, by the rule ``unisender.py``'s docstring
        tells syncd to read from an export: its account status (of the channel given, email or
        phone) is ``unsubscribed``/``blocked``, or L is among its unsubscribed lists. False for
        an unknown contact, or an active one that is subscribed to L (or was never in it)."""
        with self._lock:
            contact = self._find(email_or_phone)
            if contact is None:
                return False
            by_email = contact.email == email_or_phone.strip().lower()
            status = contact.email_status if by_email else contact.phone_status
            return status in ("unsubscribed", "blocked") or list_id in contact.unsubscribed

    # ---- /_emulator/: the same helpers over HTTP (JSON, no api key) ------------------------

    def _admin(self, request: httpx.Request) -> httpx.Response:
        return admin_response(self, request, self._admin_state, self._admin_post)

    def _admin_state(self, query: httpx.QueryParams) -> dict[str, Any]:
        list_id = query.get("list_id")
        rows = (
            self.contacts_in_list(int(list_id))
            if list_id
            else [c.to_json() for c in self.contacts.values()]
        )
        return {"lists": self._lists_json(), "fields": self._fields_json(), "contacts": rows}

    def _admin_post(self, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if op == "list":
            return {"id": self.add_list(body["title"])}
        if op == "field":
            return {"id": self.add_field(body["name"], body.get("type", "string"))}
        if op == "contact":
            return self._admin_contact(body) or {}
        return None

    def _admin_contact(self, body: dict[str, Any]) -> dict[str, Any] | None:
        action, email = body.pop("action"), body.pop("email")
        actions: dict[str, Callable[..., Any]] = {
            "edit": lambda: self.edit(email, **body.get("fields", body)),
            "change_email": lambda: self.change_email(email, body["new_email"]),
            "unsubscribe": lambda: self.unsubscribe(email, body.get("list_id")),
            "block": lambda: self.block(email),
            "delete": lambda: self.delete(email),
            "set_tags": lambda: self.set_tags(email, body["tags"]),
            "sign_up": lambda: self.sign_up(
                email, int(body["list_id"]), fields=body.get("fields"), tags=body.get("tags")
            ),
        }
        if action not in actions:
            raise ValueError(f"unknown action {action!r}")
        actions[action]()
        return self.get(body["new_email"] if action == "change_email" else email)


class _Controlled(Protocol):
    _lock: threading.RLock
    calls: Counter[str]
    write_calls: int
    faults: Faults


def admin_response(
    emulator: _Controlled,
    request: httpx.Request,
    state: Callable[[httpx.QueryParams], dict[str, Any]],
    post: Callable[[str, dict[str, Any]], dict[str, Any] | None],
) -> httpx.Response:
    """``/_emulator/`` for every emulator: ``state``, ``calls``, ``faults`` and ``reset-calls``
    here, anything else through ``post`` (None: no such control). JSON in and out, no API key;
    unknown names answer 404, bad bodies 400, a GET where a POST is due 405."""
    op = request.url.path.removeprefix("/_emulator/").strip("/")
    try:
        body: dict[str, Any] = json.loads(request.content or b"{}")
        if op == "state" and request.method == "GET":
            with emulator._lock:
                return httpx.Response(200, json=state(request.url.params))
        if op == "faults" and request.method == "GET":
            with emulator._lock:
                faults = emulator.faults
                return httpx.Response(
                    200, json=faults.to_json() | {"injected": dict(sorted(faults.injected.items()))}
                )
        if op == "calls" and request.method == "GET":
            with emulator._lock:
                calls = {"calls": dict(emulator.calls), "write_calls": emulator.write_calls}
            return httpx.Response(200, json=calls)
        if request.method != "POST":
            return httpx.Response(405, json={"error": "method not allowed"})
        if op == "faults":
            body.pop("injected", None)  # what GET answers may be posted back as it is
            with emulator._lock:
                emulator.faults = Faults(**body)
                return httpx.Response(200, json=emulator.faults.to_json())
        if op == "reset-calls":
            with emulator._lock:
                emulator.calls.clear()
                emulator.write_calls = 0
            return httpx.Response(200, json={})
        with emulator._lock:
            answer = post(op, body)
        if answer is not None:
            return httpx.Response(200, json=answer)
    except KeyError as exc:
        return httpx.Response(404, json={"error": f"not found: {exc}"})
    except (ValueError, TypeError) as exc:
        return httpx.Response(400, json={"error": str(exc)})
    return httpx.Response(404, json={"error": f"unknown admin endpoint {op!r}"})


class _Servable(_Controlled, Protocol):
    def handle(self, request: httpx.Request) -> httpx.Response: ...


def serve(
    emulator: _Servable,
    host: str,
    port: int,
    faults: Faults | None,
    request_log: Path | None = None,
) -> None:
    """What `syncd emulate` ends with: the command line's faults, then serve forever."""
    if faults is not None:
        emulator.faults = faults
    serve_forever(emulator.handle, host, port, request_log)
