"""The Unisender/Selzy account behind the emulator (``unisender.py``), and what tests do to it.

``UnisenderAccount`` holds the contacts, lists, fields and tags with the primitives that keep
them consistent (the address indexes, field-name rules, id counters), the in-process helpers
tests call (``add_list``, ``sign_up``, ``unsubscribe``, ``block``, ``is_opted_out``, ...) and
the account's part of the ``/_emulator/`` routes (the kit's ``EmulatorControls`` serves the rest).
Over HTTP (JSON in and out, no api key):

- ``GET  /_emulator/state[?list_id=N]``: lists, fields and contacts (all, or those in list N)
- ``POST /_emulator/list`` ``{"title"}``, ``/_emulator/field`` ``{"name", "type"?}``: new ids
- ``POST /_emulator/contact`` ``{"action", "email", ...}``: edit, change_email (``new_email``),
  unsubscribe, block, delete, set_tags, sign_up; answers the contact afterwards
- ``POST /_emulator/refuse-import`` ``{"key", "status"?, "code"?, "message"?}``: every later
  importContacts holding that contact is refused whole under that HTTP status (400,
  ``invalid_arg`` and a message naming the row unless given; ``refuse_import``)

It is the bottom of the emulator's three modules: it also defines the call-level error
(``ApiError``, its envelope and configurable codes) and the timestamp format every API method
shares. ``unisender_import.py`` (importContacts) and ``unisender.py`` (the HTTP entry point and
the other methods) build on it; it imports neither. Sources are cited as in ``unisender.py``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from syncd.emulators.kit import EmulatorControls

# §1.5 export system field names (the *_excluded_list_ids and tags names are unverified)
EXPORT_SYSTEM_FIELDS = (  # noqa: SIM905
    "id email email_status email_availability email_add_time email_request_ip email_confirm_time "
    "email_confirm_ip email_list_ids email_subscribe_times email_unsubscribed_list_ids "
    "email_excluded_list_ids email_last_delivered_at email_last_read_at email_last_clicked_at "
    "phone phone_status phone_availability phone_add_time phone_request_ip phone_list_ids "
    "phone_subscribe_times phone_unsubscribed_list_ids phone_excluded_list_ids tags"
).split()
FIELD_TYPES = ("string", "text", "number", "date", "bool")  # §1.6 createField
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")  # §1.6 createField / item 17
# Call-level error codes that no source pins down (item 9: "make configurable").
CALL_ERROR_CODES: dict[str, str] = {
    "too_many_rows": "invalid_arg",
    "no_key_column": "invalid_arg",
    "unknown_field": "invalid_arg",
    "missing_arg": "invalid_arg",
    "not_found": "unspecified",  # §1.6 exclude/unsubscribe documented example
    "duplicate": "unspecified",
}
# §1.4 importContacts columns per channel (email_*, phone_*): with the plain ones, the system
# fields, which no user field may be named after
CHANNEL_COLS = ("status", "availability", "list_ids", "subscribe_times")
LIST_COLS = ("list_ids", "unsubscribed_list_ids", "excluded_list_ids")
IMPORT_SYSTEM_FIELDS = frozenset(
    ["delete", "tags", "email", "phone"]
    + [f"{ch}_{c}" for ch in ("email", "phone") for c in CHANNEL_COLS + LIST_COLS]
)


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


class ApiError(Exception):
    """A call-level error: answered as the §1.2 ``{"error", "code", "result": ""}`` envelope,
    under HTTP ``status`` (200 as documented; another only where a test asks for it)."""

    def __init__(self, code: str, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def error_response(
    code: str, message: str, headers: dict[str, str] | None = None, *, status: int = 200
) -> httpx.Response:
    # §1.2 / item 6: HTTP 200, HTML-escaped text, `result: ""` always present
    body = {"error": html.escape(message, quote=False), "code": code, "result": ""}
    return httpx.Response(status, json=body, headers=headers)


@dataclass(frozen=True)
class ImportRefusal:
    """How the account refuses a whole importContacts call holding one contact (``refuse_import``):
    the envelope's ``code`` and ``message`` under HTTP ``status``."""

    status: int
    code: str
    message: str


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")  # §1.7 / item 18: UTC, no "T"


class UnisenderAccount(EmulatorControls):
    """The account's state and the helpers tests drive it with; every helper takes the lock."""

    def __init__(self, max_user_fields: int = 50, *, sticky_list_unsubscribe: bool = True) -> None:
        super().__init__()
        self.max_user_fields = max_user_fields  # §1.4: 50 user fields per account
        # [INFERRED] from the unsubscribe page: per-list unsubscribe cannot be undone via import
        self.sticky_list_unsubscribe = sticky_list_unsubscribe
        self.contacts: dict[int, Contact] = {}
        self.by_email: dict[str, int] = {}
        self.by_phone: dict[str, int] = {}
        self.lists: dict[int, str] = {}
        self.user_fields: dict[int, tuple[str, str]] = {}  # id -> (name, type)
        self.tag_ids: dict[str, int] = {}
        self.refused_imports: dict[str, ImportRefusal] = {}  # contact key -> its refusal
        self._next = {"contact": 1, "list": 1, "field": 1, "tag": 1}

    # ---- primitives ----------------------------------------------------------------------------

    def _new_id(self, kind: str) -> int:
        self._next[kind] += 1
        return self._next[kind] - 1

    def _find(self, email_or_phone: str) -> Contact | None:
        key = email_or_phone.strip()
        cid = self.by_email.get(key.lower()) or self.by_phone.get(key)
        return self.contacts.get(cid) if cid else None

    def _create(self) -> Contact:
        contact = Contact(id=self._new_id("contact"), added_at=now_utc())
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

    def refuse_import(
        self,
        email_or_phone: str,
        *,
        status: int = 400,
        code: str = "invalid_arg",
        message: str | None = None,
    ) -> None:
        """From now on, an importContacts call holding this contact is refused whole, nothing
        of it applied, with a §1.2 envelope under HTTP ``status``: a server that breaks §1.2's
        "errors are HTTP 200" for a row it cannot take. The default message names the row."""
        key = email_or_phone.strip()
        column = "email" if "@" in key else "phone"
        key = key.lower() if column == "email" else key
        with self._lock:
            self.refused_imports[key] = ImportRefusal(
                status, code, message or f'Invalid value of field "{column}": "{key}"'
            )

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

    def state_json(self, query: httpx.QueryParams) -> dict[str, Any]:
        list_id = query.get("list_id")
        rows = (
            self.contacts_in_list(int(list_id))
            if list_id
            else [c.to_json() for c in self.contacts.values()]
        )
        return {"lists": self._lists_json(), "fields": self._fields_json(), "contacts": rows}

    def admin_post(self, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if op == "list":
            return {"id": self.add_list(body["title"])}
        if op == "field":
            return {"id": self.add_field(body["name"], body.get("type", "string"))}
        if op == "contact":
            return self._admin_contact(body) or {}
        if op == "refuse-import":
            self.refuse_import(
                str(body["key"]),
                status=int(body.get("status", 400)),
                code=str(body.get("code", "invalid_arg")),
                message=body.get("message"),
            )
            return {}
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
