"""A local emulator of the Unisender/Selzy contacts API.

Sources: ``/work/shared/providers/unisender-selzy.md`` ("wire facts", cited as §1.x) with its
emulator fidelity checklist (cited as "item N"), and the providers' importContacts pages
(``providers/seeds/001_*``, ``002_*``, cited as "seed 002").

State model (a deliberate simplification): one contact holds at most one email and one phone and
ONE set of list memberships shared by both channels: ``lists`` (subscribed), ``unsubscribed``
(per-list unsubscribed) and ``excluded``. ``email_list_ids`` and ``phone_list_ids`` both feed and
show the same sets, so the §1.5 quirk "a contact whose phone is in the list is exported even if
its email is not" holds by construction.

What syncd should read from an export for list L (documented here as the emulator's contract):
the exported ``email_status`` is the ACCOUNT-level status (§1.6 unsubscribe: per-list unsubscribe
"does not change the account-level status"). The contact is unsubscribed *from L* when
``email_status`` is ``unsubscribed``/``blocked`` OR L appears in ``email_unsubscribed_list_ids``
(same for phone). So syncd must request ``email_unsubscribed_list_ids`` (and the phone twin) in
``field_names`` and fold both into its per-list status.
"""

from __future__ import annotations

import csv
import html
import io
import json
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import httpx

from syncd.emulators import php_params as pp
from syncd.emulators.server import DropConnection, serve_forever

# Per-row importContacts log codes. seed 002 documents `e_email_invalid` ("Invalid email format"),
# `e_phone_not_unique` ("Duplicate telephone number") and, for a role-based address, the code
# `w_common_overlimit` with "Error (email was ignored). Role-based or technical email address"
# (sic: that page reuses the over-limit code). Every other code is an emulator PLACEHOLDER
# (§1.4: the vocabulary is unconfirmed); change them here.
LOG_CODES: dict[str, str] = {
    "email_invalid": "e_email_invalid",  # seed 002
    "role_address": "w_common_overlimit",  # seed 002 example, as documented
    "phone_not_unique": "e_phone_not_unique",  # seed 002
    "email_not_unique": "e_email_not_unique",  # placeholder (twin of the documented phone code)
    "phone_invalid": "e_phone_invalid",  # placeholder
    "no_address": "e_no_address",  # placeholder
    "too_many_tags": "e_too_many_tags",  # placeholder
    "status_invalid": "e_status_invalid",  # placeholder
    "list_unknown": "e_list_not_found",  # placeholder
    "times_mismatch": "e_subscribe_times_invalid",  # placeholder
    "owned_by_different": "unspecified",  # §1.2: an *untyped* error; text below
}
# Call-level error codes that no source pins down (item 9: "make configurable").
CALL_ERROR_CODES: dict[str, str] = {
    "too_many_rows": "invalid_arg",
    "no_key_column": "invalid_arg",
    "unknown_field": "invalid_arg",
    "missing_arg": "invalid_arg",
    "not_found": "unspecified",  # §1.6 exclude/unsubscribe documented example
    "duplicate": "unspecified",
}
# §1.4 / seed 002: info@, sales@, no-reply@, all@ "… and similar"; the rest are common role names.
ROLE_LOCAL_PARTS = frozenset(
    "info sales no-reply noreply all admin administrator support postmaster webmaster abuse "  # noqa: SIM905
    "hostmaster contact office mail marketing help billing team hello newsletter".split()
)
IMPORT_EMAIL_STATUSES = ("new", "active", "inactive", "unsubscribed")  # §1.4 email_status
IMPORT_PHONE_STATUSES = ("new", "active", "inactive", "unsubscribed")  # §1.4 "same meaning"
_CHANNEL_COLS = ("status", "availability", "list_ids", "subscribe_times")
_LIST_COLS = ("list_ids", "unsubscribed_list_ids", "excluded_list_ids")
IMPORT_SYSTEM_FIELDS = frozenset(
    ["delete", "tags", "email", "phone"]
    + [f"{ch}_{c}" for ch in ("email", "phone") for c in _CHANNEL_COLS + _LIST_COLS]
)
# §1.5 export system field names (the *_excluded_list_ids and tags names are unverified)
EXPORT_SYSTEM_FIELDS = (  # noqa: SIM905
    "id email email_status email_availability email_add_time email_request_ip email_confirm_time "
    "email_confirm_ip email_list_ids email_subscribe_times email_unsubscribed_list_ids "
    "email_excluded_list_ids email_last_delivered_at email_last_read_at email_last_clicked_at "
    "phone phone_status phone_availability phone_add_time phone_request_ip phone_list_ids "
    "phone_subscribe_times phone_unsubscribed_list_ids phone_excluded_list_ids tags"
).split()
FIELD_TYPES = ("string", "text", "number", "date", "bool")  # §1.6 createField
WRITE_METHODS = frozenset(
    "importContacts createList createField deleteField exclude unsubscribe subscribe".split()  # noqa: SIM905
)
MAX_ROWS, MAX_TAGS, MAX_EXPORT_PAGE = 500, 10, 1000  # §1.4 (rows, tags), §1.5 (legacy page)
_ROUTE = re.compile(r"^/(?P<lang>[A-Za-z]{2})/api/(?P<async>async/)?(?P<method>[A-Za-z]+)/?$")
_EMAIL = re.compile(r"^[^@\s,;\"<>]+@[^@\s,;\"<>]+\.[A-Za-z]{2,}$")
_PHONE = re.compile(r"^\+?[1-9]\d{6,14}$")  # §1.4: international format, e.g. +79261232323
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")  # §1.6 createField / item 17
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2})?$")  # §1.4 email_subscribe_times


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Faults:
    """Injected failures. ``methods`` names the API methods they hit (empty: all); async ones are
    named ``async/exportContacts``, ``async/getTaskResult`` (their bare name matches too).
    ``export_never_completes`` and ``export_truncate`` apply to exports regardless of
    ``methods``. A timeout hangs ``hang_seconds`` and then answers (the call IS applied)."""

    latency: float = 0.0
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
    methods: set[str] = field(default_factory=set)
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.methods = set(self.methods)
        self.rng = random.Random(self.seed)

    def hits(self, method: str) -> bool:
        return not self.methods or bool({method, method.removeprefix("async/")} & self.methods)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rng"}
        return data | {"methods": sorted(self.methods)}


@dataclass
class Contact:
    id: int
    added_at: str
    email: str | None = None
    phone: str | None = None
    email_status: str = ""
    phone_status: str = ""
    lists: set[int] = field(default_factory=set)
    unsubscribed: set[int] = field(default_factory=set)
    excluded: set[int] = field(default_factory=set)
    subscribed_at: dict[int, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def in_list(self, list_id: int) -> bool:
        """Export membership (§1.5/§1.6): subscribed or unsubscribed there, and not excluded."""
        return list_id in (self.lists | self.unsubscribed) and list_id not in self.excluded

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("lists", "unsubscribed", "excluded"):
            data[name] = sorted(data[name])
        data["subscribed_at"] = {str(k): v for k, v in self.subscribed_at.items()}
        return data


@dataclass
class ExportTask:
    uuid: str
    csv_text: str
    polls: int = 0


class _Windows:
    """Sliding 60 s call counters (item 8)."""

    def __init__(self, limit: int, period: float = 60.0) -> None:
        self.limit, self.period = limit, period
        self.hits: dict[str, deque[float]] = {}

    def first_over(self, keys: list[str], now: float) -> int | None:
        """Index of the first key over the limit, else record one hit on every key."""
        queues = [self.hits.setdefault(k, deque()) for k in keys]
        for i, q in enumerate(queues):
            while q and q[0] <= now - self.period:
                q.popleft()
            if len(q) >= self.limit:
                return i
        for q in queues:
            q.append(now)
        return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")  # §1.7 / item 18: UTC, no "T"


def _ok(result: Any, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"result": result, **extra})  # item 6


def _error(code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    # §1.2 / item 6: HTTP 200, HTML-escaped text, `result: ""` always present
    body = {"error": html.escape(message, quote=False), "code": code, "result": ""}
    return httpx.Response(200, json=body, headers=headers)


def _ids(value: str) -> list[int]:
    try:
        return [int(x) for x in pp.comma_list(value)]
    except ValueError as exc:
        raise ApiError(CALL_ERROR_CODES["missing_arg"], f"Invalid list ids: {value!r}") from exc


def _flag(params: pp.Params, name: str) -> bool:
    try:
        return pp.as_bool(pp.scalar(params, name) if name in params else None)
    except ValueError as exc:  # item 5
        raise ApiError("invalid_arg", f"Invalid value of argument {name}") from exc


class _RowError(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


class UnisenderEmulator:
    """The whole provider account behind ``handle``; thread-safe (one lock around state)."""

    def __init__(
        self,
        api_key: str | None = None,
        brand: str = "unisender",
        export_polls: int = 1,
        rate_limit_per_minute: int = 1200,
        max_user_fields: int = 50,
        *,
        sticky_list_unsubscribe: bool = True,
        export_rate_limit: int = 20,
    ) -> None:
        if brand not in ("unisender", "selzy"):
            raise ValueError(f"unknown brand {brand!r}")
        self.api_key, self.brand = api_key, brand  # item 1: both brands behave the same
        self.export_polls = export_polls
        self.max_user_fields = max_user_fields  # §1.4: 50 user fields per account
        # [INFERRED] from the unsubscribe page: per-list unsubscribe cannot be undone via import
        self.sticky_list_unsubscribe = sticky_list_unsubscribe
        self.faults = Faults()
        self.calls: Counter[str] = Counter()
        self.write_calls = 0
        self._lock = threading.RLock()
        self._limits = _Windows(rate_limit_per_minute)  # §1.3: 1200/min per key and per IP
        self._export_limits = _Windows(export_rate_limit)  # §1.3: async export 20 per 60 s
        self.contacts: dict[int, Contact] = {}
        self.by_email: dict[str, int] = {}
        self.by_phone: dict[str, int] = {}
        self.lists: dict[int, str] = {}
        self.user_fields: dict[int, tuple[str, str]] = {}  # id -> (name, type)
        self.tag_ids: dict[str, int] = {}
        self.tasks: dict[str, ExportTask] = {}
        self._next = {"contact": 1, "list": 1, "field": 1, "tag": 1}

    def _new_id(self, kind: str) -> int:
        self._next[kind] += 1
        return self._next[kind] - 1

    # ---- the HTTP entry point -------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/_emulator/"):
            return self._admin(request)
        if path.startswith("/_files/"):
            return self._download(path.removeprefix("/_files/"))
        route = _ROUTE.match(path)  # item 1: /{lang}/api/{method} and /{lang}/api/async/{method}
        if route is None or request.method not in ("GET", "POST"):
            return httpx.Response(404, text="Not Found")
        method = ("async/" if route["async"] else "") + route["method"]
        with self._lock:
            self.calls[method] += 1
            if method in WRITE_METHODS:
                self.write_calls += 1
            faults = self.faults
            hit = faults.hits(method)
            drop = hit and faults.roll(faults.drop_rate)
            hang = hit and faults.roll(faults.timeout_rate)
            http5xx = hit and faults.roll(faults.http_5xx_rate)
            errored = hit and faults.roll(faults.error_code_rate)
        if hit and faults.latency > 0:
            time.sleep(faults.latency)
        if drop:
            raise DropConnection()
        if hang:
            time.sleep(faults.hang_seconds)
        retry = {"Retry-After": faults.retry_after} if faults.retry_after else None
        if http5xx:
            status = faults.http_5xx_status
            return httpx.Response(status, text=f"<html><h1>{status}</h1></html>", headers=retry)
        if errored:
            return _error(faults.error_code, f"Injected fault: {faults.error_code}", retry)
        params = pp.request_params(request)  # items 2-4: query + body, PHP brackets
        key = pp.scalar(params, "api_key")  # §1.1 Auth: only the api_key parameter
        if not key or (self.api_key is not None and key != self.api_key):
            return _error("invalid_api_key", "Invalid API key")  # §1.2 codes
        ip = str((request.extensions.get("client_addr") or ("127.0.0.1",))[0])
        with self._lock:
            limited = self._rate_limited(method, key, ip)
            if limited is not None:
                return _error(limited, "API call limit exceeded")  # §1.3 / item 8
            handler = self.methods().get(method)
            if handler is None:
                return _error("unknown_method", f"Unknown method {method}")  # §1.2 / item 7
            try:
                return _ok(handler(params, request))
            except ApiError as exc:
                return _error(exc.code, exc.message)

    def _rate_limited(self, method: str, key: str, ip: str) -> str | None:
        codes = ["api_call_limit_exceeded_for_api_key", "api_call_limit_exceeded_for_ip"]
        now = time.monotonic()
        if method == "async/exportContacts":
            over = self._export_limits.first_over([f"key:{key}", f"ip:{ip}"], now)
            if over is not None:
                return codes[over]
        over = self._limits.first_over([f"key:{key}", f"ip:{ip}"], now)
        return None if over is None else codes[over]

    def _download(self, name: str) -> httpx.Response:
        with self._lock:
            task = self.tasks.get(name.removesuffix(".csv"))
            truncate = self.faults.export_truncate
        if task is None:
            return httpx.Response(404, text="Not Found")
        text = task.csv_text
        if truncate:  # a transfer cut in the middle of the last row
            body = text.rstrip("\r\n")
            last = body.rfind("\n") + 1
            text = body[: last + max(1, (len(body) - last) // 2)]
        return httpx.Response(200, content=text.encode(), headers={"Content-Type": "text/csv"})

    # ---- state helpers ----------------------------------------------------------------------

    def _find(self, email_or_phone: str) -> Contact | None:
        key = email_or_phone.strip()
        cid = self.by_email.get(key.lower()) or self.by_phone.get(key)
        return self.contacts.get(cid) if cid else None

    def _need(self, email_or_phone: str) -> Contact:
        contact = self._find(email_or_phone)
        if contact is None:
            raise KeyError(email_or_phone)
        return contact

    def _create(self) -> Contact:
        contact = Contact(id=self._new_id("contact"), added_at=_now())
        self.contacts[contact.id] = contact
        return contact

    def _set_address(self, contact: Contact, kind: str, value: str) -> None:
        index = self.by_email if kind == "email" else self.by_phone
        old = getattr(contact, kind)
        if old is not None:
            index.pop(old, None)
        setattr(contact, kind, value)
        index[value] = contact.id

    def _remove(self, contact: Contact) -> None:
        self.contacts.pop(contact.id, None)
        self.by_email.pop(contact.email or "", None)
        self.by_phone.pop(contact.phone or "", None)

    def _set_tags(self, contact: Contact, tags: list[str]) -> None:
        contact.tags = list(dict.fromkeys(tags))
        for tag in contact.tags:
            if tag not in self.tag_ids:
                self.tag_ids[tag] = self._new_id("tag")

    def _field_names(self) -> set[str]:
        return {name for name, _ in self.user_fields.values()}

    def _lists_json(self) -> list[dict[str, Any]]:
        return [{"id": i, "title": title} for i, title in self.lists.items()]  # §1.6 getLists

    def _fields_json(self) -> list[dict[str, Any]]:  # §1.6 getFields / item 17
        return [
            {"id": i, "name": name, "type": kind, "is_visible": 1, "view_pos": pos}
            for pos, (i, (name, kind)) in enumerate(self.user_fields.items(), 1)
        ]

    def _check_field(self, name: str, kind: str) -> None:
        if not _FIELD_NAME.match(name) or name in IMPORT_SYSTEM_FIELDS | set(EXPORT_SYSTEM_FIELDS):
            raise ApiError("invalid_arg", f'Invalid field name "{name}"')  # §1.6 createField
        if kind not in FIELD_TYPES:
            raise ApiError("invalid_arg", f'Invalid field type "{kind}"')
        if name in self._field_names():  # unique, case-sensitive
            raise ApiError(CALL_ERROR_CODES["duplicate"], f'Field "{name}" already exists')
        if len(self.user_fields) >= self.max_user_fields:  # §1.4: at most 50 user fields
            raise ApiError("invalid_arg", f"Too many user fields (max {self.max_user_fields})")

    # ---- test/admin helpers (in-process; also under /_emulator/) ----------------------------

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
            contact.subscribed_at[list_id] = _now()
            if fields:
                self.edit(email, **fields)
            if tags:
                self._set_tags(contact, contact.tags + tags)
            return contact.id

    # ---- API methods ------------------------------------------------------------------------

    def methods(self) -> dict[str, Callable[[pp.Params, httpx.Request], Any]]:
        return {
            "importContacts": self._api_import,
            "getLists": lambda p, r: self._lists_json(),
            "createList": lambda p, r: {"id": self.add_list(_required(p, "title"))},
            "getFields": lambda p, r: self._fields_json(),
            "createField": lambda p, r: {
                "id": self.add_field(_required(p, "name"), _required(p, "type"))
            },
            "deleteField": self._api_delete_field,
            "getTags": lambda p, r: [{"id": i, "name": n} for n, i in self.tag_ids.items()],
            "exclude": self._api_exclude,
            "unsubscribe": self._api_unsubscribe,
            "subscribe": self._api_subscribe,
            "getContact": self._api_get_contact,
            "exportContacts": self._api_export_page,
            "async/exportContacts": self._api_export_async,
            "async/getTaskResult": self._api_task_result,
        }

    def _api_delete_field(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        field_id = _int(p, "id", None)
        if field_id not in self.user_fields:
            raise ApiError(CALL_ERROR_CODES["not_found"], f'Field "{field_id}" not found')
        name, _ = self.user_fields.pop(field_id)
        for contact in self.contacts.values():
            contact.fields.pop(name, None)
        return {}

    def _target(self, p: pp.Params) -> tuple[Contact, list[int]]:
        """exclude/unsubscribe arguments (§1.6): the contact and the lists it is really in."""
        kind, address = pp.scalar(p, "contact_type"), pp.scalar(p, "contact").strip()
        if kind not in ("email", "phone") or not address:
            raise ApiError("invalid_arg", "contact_type must be email or phone; contact required")
        index = self.by_email if kind == "email" else self.by_phone
        contact = self.contacts.get(index.get(address.lower() if kind == "email" else address, 0))
        wanted = _ids(pp.scalar(p, "list_ids"))  # omitted: every list the contact is in
        member = {i for i in self.lists if contact is not None and contact.in_list(i)}
        chosen = [i for i in wanted if i in member] if wanted else sorted(member)
        if contact is None or not chosen:  # §1.6 exclude: documented error text
            raise ApiError(CALL_ERROR_CODES["not_found"], f'Contact "{address}" not found')
        return contact, chosen

    def _api_exclude(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        contact, chosen = self._target(p)  # item 16: leave silently, no unsubscribe mark
        for list_id in chosen:
            contact.lists.discard(list_id)
            contact.excluded.add(list_id)
        return {}

    def _api_unsubscribe(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        contact, chosen = self._target(p)  # item 16: per-list; account status unchanged
        for list_id in chosen:
            contact.lists.discard(list_id)
            contact.unsubscribed.add(list_id)
        return {}

    def _api_subscribe(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        """Minimal §1.6 subscribe: double_optin 3/4 = confirmed (active), else ``invited``."""
        given = p.get("fields")
        values = (
            {k: v for k, v in given.items() if isinstance(v, str)}
            if isinstance(given, dict)
            else {}
        )
        email = values.pop("email", "").strip().lower()
        phone = values.pop("phone", "").strip()
        list_ids = _ids(_required(p, "list_ids"))
        if not (email or phone) or (email and not _EMAIL.match(email)):
            raise ApiError("invalid_arg", "fields[email] or fields[phone] is required and valid")
        if set(values) - self._field_names() or set(list_ids) - set(self.lists):
            raise ApiError("invalid_arg", "Unknown field name or list id")
        tags = pp.comma_list(pp.scalar(p, "tags"))
        if len(tags) > MAX_TAGS:
            raise ApiError("invalid_arg", f"Too many tags (max {MAX_TAGS})")
        by_email = self.contacts.get(self.by_email.get(email, 0)) if email else None
        by_phone = self.contacts.get(self.by_phone.get(phone, 0)) if phone else None
        if by_email and by_phone and by_email is not by_phone:  # §1.2 untyped error
            message = (
                f"Contacts {email} and {phone} already exist but owned by different subscribers"
            )
            raise ApiError("unspecified", message)
        confirmed = pp.scalar(p, "double_optin", "0") in ("3", "4")
        contact = by_email or by_phone or self._create()
        if email and contact.email != email:
            self._set_address(contact, "email", email)
            contact.email_status = "active" if confirmed else "invited"
        elif confirmed and contact.email_status in ("new", "invited"):
            contact.email_status = "active"
        if phone and contact.phone != phone:
            self._set_address(contact, "phone", phone)
            contact.phone_status = "active"
        contact.fields.update(values)
        self._set_tags(contact, contact.tags + tags)
        self._apply_lists(contact, {"list_ids": list_ids}, {}, overwrite=False)
        return {"person_id": contact.id}

    def _api_get_contact(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        email = _required(p, "email").strip().lower()  # §1.6 getContact (minimal)
        contact = self.contacts.get(self.by_email.get(email, 0))
        if contact is None:
            raise ApiError(CALL_ERROR_CODES["not_found"], f'Contact "{email}" not found')
        result: dict[str, Any] = {
            "email": {
                "email": email,
                "added_at": contact.added_at,
                "status": contact.email_status,
                "availability": "available",
                "last_send_datetime": None,
                "last_delivery_datetime": None,
                "last_read_datetime": None,
                "last_click_datetime": None,
                "rating": None,
            }
        }
        if _flag(p, "include_lists"):  # lists[].status words are [UNCONFIRMED]
            result["lists"] = [
                {
                    "id": i,
                    "status": "active" if i in contact.lists else "unsubscribed",
                    "added_at": contact.subscribed_at.get(i, contact.added_at),
                }
                for i in sorted(self.lists)
                if contact.in_list(i)
            ]
        if _flag(p, "include_fields"):
            result["fields"] = dict(contact.fields)
        return result

    # ---- importContacts (§1.4, seed 001/002, items 9-13) ----------------------------------------

    def _api_import(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        cols = {i: v.strip() for i, v in pp.indexed(p.get("field_names")) if isinstance(v, str)}
        names = set(cols.values())
        if not cols:
            raise ApiError(CALL_ERROR_CODES["missing_arg"], "Argument field_names is required")
        if not names & {"email", "phone"}:  # §1.4: "email" or "phone" column, else error
            raise ApiError(CALL_ERROR_CODES["no_key_column"], 'field_names lacks "email"/"phone"')
        unknown = sorted(names - IMPORT_SYSTEM_FIELDS - self._field_names())
        if unknown:  # item 9: names must be system names or existing user fields
            raise ApiError(CALL_ERROR_CODES["unknown_field"], f'Unknown field "{unknown[0]}"')
        rows = pp.indexed(p.get("data"))
        if not rows:
            raise ApiError(CALL_ERROR_CODES["missing_arg"], "Argument data is required")
        if len(rows) > MAX_ROWS:  # §1.4: at most 500 contacts per call
            raise ApiError(CALL_ERROR_CODES["too_many_rows"], f"Too many rows (max {MAX_ROWS})")
        overwrite_tags, overwrite_lists = _flag(p, "overwrite_tags"), _flag(p, "overwrite_lists")
        counts = dict.fromkeys(("inserted", "updated", "deleted", "new_emails", "invalid"), 0)
        log: list[dict[str, Any]] = []
        seen: set[str] = set()
        for index, raw in rows:  # item 3: the row's own index, sparse cells stay absent
            cells = {cols[i]: v for i, v in pp.indexed(raw) if i in cols and isinstance(v, str)}
            try:
                outcome, is_new = self._import_row(cells, seen, overwrite_tags, overwrite_lists)
            except _RowError as exc:  # item 13: numeric 0-based index
                log.append({"index": index, "code": LOG_CODES[exc.key], "message": exc.message})
                if exc.key in ("email_invalid", "role_address"):  # §1.4 `invalid`: emails refused
                    counts["invalid"] += 1
                if exc.key == "role_address":  # seed 002 example carries "role_based"
                    counts["role_based"] = counts.get("role_based", 0) + 1
                continue
            counts[outcome] += 1
            counts["new_emails"] += is_new
        return {"total": len(rows), **counts, "log": log}

    def _import_row(
        self, cells: dict[str, str], seen: set[str], overwrite_tags: bool, overwrite_lists: bool
    ) -> tuple[str, bool]:
        email = cells.get("email", "").strip().lower() or None
        phone = cells.get("phone", "").strip() or None
        if email is None and phone is None:
            raise _RowError("no_address", "Neither email nor phone given")
        if email is not None:
            if not _EMAIL.match(email):
                raise _RowError("email_invalid", "Invalid email format")  # seed 002
            if email.split("@")[0] in ROLE_LOCAL_PARTS:  # §1.4 / seed 002 / item 12
                raise _RowError(
                    "role_address",
                    f'Error (email was ignored). Role-based or technical email address: "{email}"',
                )
            if f"e:{email}" in seen:  # §1.4: duplicates are not counted
                raise _RowError("email_not_unique", "Duplicate email address")
        if phone is not None:
            if not _PHONE.match(phone):
                raise _RowError("phone_invalid", "Invalid phone number format")
            if f"p:{phone}" in seen:
                raise _RowError("phone_not_unique", "Duplicate telephone number")  # seed 002
        seen.update(x for x in (email and f"e:{email}", phone and f"p:{phone}") if x)
        by_email = self.contacts.get(self.by_email.get(email or "", 0))
        by_phone = self.contacts.get(self.by_phone.get(phone or "", 0))
        if by_email and by_phone and by_email is not by_phone:  # §1.2 untyped error / item 10
            raise _RowError(
                "owned_by_different",
                f"Contacts {email} and {phone} already exist but owned by different subscribers",
            )
        contact = by_email or by_phone
        if cells.get("delete", "").strip().lower() in ("1", "true"):  # §1.4 delete=1 / item 11
            if contact is not None:  # [UNCONFIRMED] account-wide vs list-scoped: account-wide
                self._remove(contact)
            return "deleted", False  # §1.4: counts "both new and existing ones"
        statuses = {ch: cells.get(f"{ch}_status", "").strip().lower() for ch in ("email", "phone")}
        for ch, allowed in (("email", IMPORT_EMAIL_STATUSES), ("phone", IMPORT_PHONE_STATUSES)):
            if statuses[ch] and statuses[ch] not in allowed:
                raise _RowError("status_invalid", f'Invalid {ch}_status "{statuses[ch]}"')
        tags = None
        if "tags" in cells:  # §1.4 tags; overwrite_tags 1 replaces, 0 adds
            new = pp.comma_list(cells["tags"])
            old = contact.tags if contact and not overwrite_tags else []
            tags = list(dict.fromkeys(old + new))
            if len(tags) > MAX_TAGS:  # §1.4: at most 10 tags per contact
                raise _RowError("too_many_tags", f"Too many tags (max {MAX_TAGS})")
        ops, times = self._row_lists(cells)
        outcome = "updated" if contact else "inserted"  # §1.4 inserted/updated semantics
        contact = contact or self._create()
        for ch, default in (("email", "new"), ("phone", "active")):  # §1.4 defaults / item 12
            address = email if ch == "email" else phone
            if address is None:
                continue
            if getattr(contact, ch) != address:  # a new address: any status, default by channel
                self._set_address(contact, ch, address)
                setattr(contact, f"{ch}_status", statuses[ch] or default)
            elif statuses[ch] and getattr(contact, f"{ch}_status") in ("active", "inactive"):
                setattr(contact, f"{ch}_status", statuses[ch])  # §1.4 stickiness: else ignored
        contact.fields.update({k: v for k, v in cells.items() if k not in IMPORT_SYSTEM_FIELDS})
        if tags is not None:
            self._set_tags(contact, tags)
        self._apply_lists(contact, ops, times, overwrite_lists)
        return outcome, email is not None and contact.email_status == "new"

    def _row_lists(self, cells: dict[str, str]) -> tuple[dict[str, list[int]], dict[int, str]]:
        ops: dict[str, list[int]] = {}
        times: dict[int, str] = {}
        try:
            for col in _LIST_COLS:
                for ch in ("email", "phone"):
                    if f"{ch}_{col}" in cells:
                        ops.setdefault(col, []).extend(_ids(cells[f"{ch}_{col}"]))
        except ApiError as exc:
            raise _RowError("list_unknown", exc.message) from exc
        missing = {i for ids in ops.values() for i in ids} - set(self.lists)
        if missing:
            raise _RowError("list_unknown", f"List {min(missing)} not found")
        for ch in ("email", "phone"):  # §1.4 *_subscribe_times: same count/order as *_list_ids
            if f"{ch}_subscribe_times" not in cells:
                continue
            stamps = pp.comma_list(cells[f"{ch}_subscribe_times"])
            ids = _ids(cells.get(f"{ch}_list_ids", ""))
            if len(stamps) != len(ids) or not all(_DATE.match(s) for s in stamps):
                raise _RowError("times_mismatch", f"{ch}_subscribe_times must match list ids")
            times.update(
                {i: s if " " in s else f"{s} 00:00:00" for i, s in zip(ids, stamps, strict=True)}
            )
        return ops, times

    def _apply_lists(
        self, c: Contact, ops: dict[str, list[int]], times: dict[int, str], overwrite: bool
    ) -> None:
        if not ops:
            return
        old_unsubscribed = set(c.unsubscribed)
        if overwrite:  # §1.4 overwrite_lists=1: replace all list data with the row's
            c.lists, c.unsubscribed, c.excluded, c.subscribed_at = set(), set(), set(), {}
        for i in ops.get("list_ids", []):
            c.excluded.discard(i)
            if self.sticky_list_unsubscribe and i in old_unsubscribed:
                c.unsubscribed.add(i)  # stays unsubscribed there (see __init__)
                continue
            c.lists.add(i)
            c.unsubscribed.discard(i)
            c.subscribed_at[i] = times.get(i) or c.subscribed_at.get(i) or _now()
        for i in ops.get("unsubscribed_list_ids", []):  # §1.4 per-list unsubscribe
            c.lists.discard(i)
            c.excluded.discard(i)
            c.unsubscribed.add(i)
        for i in ops.get("excluded_list_ids", []):  # §1.4 excluded from the list
            c.lists.discard(i)
            c.excluded.add(i)

    # ---- exportContacts (§1.5, items 14, 15) -----------------------------------------------------

    def _export(self, p: pp.Params) -> tuple[list[str], list[list[str]]]:
        user = sorted(self._field_names(), key=lambda n: n)
        names = pp.string_list(p.get("field_names")) or [*EXPORT_SYSTEM_FIELDS, *user]
        bad = [n for n in names if n not in EXPORT_SYSTEM_FIELDS and n not in user]
        if bad:
            raise ApiError(CALL_ERROR_CODES["unknown_field"], f'Unknown field "{bad[0]}"')
        list_id = _int(p, "list_id", None)
        if list_id is not None and list_id not in self.lists:
            raise ApiError(CALL_ERROR_CODES["not_found"], f"List {list_id} not found")
        wanted = {
            k: pp.scalar(p, k).strip()
            for k in ("email", "phone", "tag", "email_status", "phone_status")
        }
        rows = [
            [_cell(c, name) for name in names]
            for c in sorted(self.contacts.values(), key=lambda c: c.id)
            if (list_id is None or c.in_list(list_id))
            and (not wanted["email"] or c.email == wanted["email"].lower())
            and (not wanted["phone"] or c.phone == wanted["phone"])
            and (not wanted["tag"] or wanted["tag"] in c.tags)
            and (not wanted["email_status"] or c.email_status == wanted["email_status"])
            and (not wanted["phone_status"] or c.phone_status == wanted["phone_status"])
        ]
        return names, rows

    def _api_export_page(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        offset, limit = _int(p, "offset", 0), _int(p, "limit", MAX_EXPORT_PAGE)
        if offset is None or offset < 0 or limit is None or not 1 <= limit <= MAX_EXPORT_PAGE:
            raise ApiError("invalid_arg", f"offset >= 0 and 1 <= limit <= {MAX_EXPORT_PAGE}")
        names, rows = self._export(p)  # §1.5 legacy sync: 1000 per call, offset/limit
        return {"field_names": names, "data": rows[offset : offset + limit]}

    def _api_export_async(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        names, rows = self._export(p)  # snapshot taken when the task is created
        buffer = io.StringIO()
        csv.writer(buffer).writerows([names, *rows])  # §1.5: CSV with a header row
        task = ExportTask(str(uuid.uuid4()), buffer.getvalue())
        self.tasks[task.uuid] = task
        return {"task_uuid": task.uuid, "status": "new"}  # §1.5 step 1

    def _api_task_result(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        task = self.tasks.get(pp.scalar(p, "task_uuid"))
        if task is None:
            raise ApiError(CALL_ERROR_CODES["not_found"], "Task not found")
        task.polls += 1  # §1.5 step 2: new -> processing -> completed
        done = task.polls >= self.export_polls and not self.faults.export_never_completes
        result = {
            "task_uuid": task.uuid,
            "status": "completed" if done else "processing",
            "task_type": "export_contacts",
        }  # task_type value [UNCONFIRMED]
        if done:  # served by this emulator, on the host the client used
            result["file_to_download"] = (
                f"{r.url.scheme}://{r.url.netloc.decode()}/_files/{task.uuid}.csv"
            )
        return result

    # ---- /_emulator/: the same helpers over HTTP (JSON, no api key) ------------------------

    def _admin(self, request: httpx.Request) -> httpx.Response:
        op = request.url.path.removeprefix("/_emulator/").strip("/")
        try:
            body: dict[str, Any] = json.loads(request.content or b"{}")
            if op == "state" and request.method == "GET":
                list_id = request.url.params.get("list_id")
                with self._lock:
                    rows = (
                        self.contacts_in_list(int(list_id))
                        if list_id
                        else [c.to_json() for c in self.contacts.values()]
                    )
                    state = {"lists": self._lists_json(), "fields": self._fields_json()}
                return httpx.Response(200, json=state | {"contacts": rows})
            if op == "calls" and request.method == "GET":
                with self._lock:
                    return httpx.Response(
                        200, json={"calls": dict(self.calls), "write_calls": self.write_calls}
                    )
            if request.method != "POST":
                return httpx.Response(405, json={"error": "method not allowed"})
            if op == "faults":
                self.faults = Faults(**body)
                return httpx.Response(200, json=self.faults.to_json())
            if op == "reset-calls":
                with self._lock:
                    self.calls.clear()
                    self.write_calls = 0
                return httpx.Response(200, json={})
            if op == "list":
                return httpx.Response(200, json={"id": self.add_list(body["title"])})
            if op == "field":
                new_id = self.add_field(body["name"], body.get("type", "string"))
                return httpx.Response(200, json={"id": new_id})
            if op == "contact":
                return httpx.Response(200, json=self._admin_contact(body) or {})
        except KeyError as exc:
            return httpx.Response(404, json={"error": f"not found: {exc}"})
        except (ValueError, TypeError) as exc:
            return httpx.Response(400, json={"error": str(exc)})
        return httpx.Response(404, json={"error": f"unknown admin endpoint {op!r}"})

    def _admin_contact(self, body: dict[str, Any]) -> dict[str, Any] | None:
        action, email = body.pop("action"), body.pop("email")
        actions: dict[str, Callable[..., Any]] = {
            "edit": lambda: self.edit(email, **body.get("fields", body)),
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
        return self.get(email)


def _required(params: pp.Params, name: str) -> str:
    value = pp.scalar(params, name).strip()
    if not value:
        raise ApiError(CALL_ERROR_CODES["missing_arg"], f"Argument {name} is required")
    return value


def _int(params: pp.Params, name: str, default: int | None) -> int | None:
    value = pp.scalar(params, name).strip()
    try:
        return int(value) if value else default
    except ValueError as exc:
        raise ApiError("invalid_arg", f"Invalid value of argument {name}") from exc


def _cell(c: Contact, name: str) -> str:
    """One export cell: list fields comma-joined in one cell (§1.1 "Comma lists")."""
    if name == "id":
        return str(c.id)
    if name == "tags":
        return ",".join(c.tags)
    channel, _, col = name.partition("_")
    if name not in EXPORT_SYSTEM_FIELDS or channel not in ("email", "phone"):
        return c.fields.get(name, "")
    address = c.email if channel == "email" else c.phone
    if address is None:
        return ""
    subscribed = sorted(c.lists - c.excluded)
    values = {
        "": address,
        "status": c.email_status if channel == "email" else c.phone_status,
        "availability": "available",
        "add_time": c.added_at,
        "list_ids": ",".join(map(str, subscribed)),
        "subscribe_times": ",".join(c.subscribed_at.get(i, c.added_at) for i in subscribed),
        "unsubscribed_list_ids": ",".join(map(str, sorted(c.unsubscribed - c.excluded))),
        "excluded_list_ids": ",".join(map(str, sorted(c.excluded))),
    }
    return values.get(col, "")  # not modelled (request_ip, last_read_at, ...): empty


def run_emulator(brand: str, host: str, port: int, api_key: str | None, seed_list: bool) -> None:
    """Build an emulator (optionally with list 1 "Newsletter" and fields Name, City) and serve."""
    emulator = UnisenderEmulator(api_key=api_key, brand=brand)
    if seed_list:
        emulator.add_list("Newsletter")
        emulator.add_field("Name")
        emulator.add_field("City")
    serve_forever(emulator.handle, host, port)
