"""A local emulator of the sms.by API v2 mailing-list methods.

Sources: ``/work/shared/providers/smsby.md`` ("wire facts", cited by the name of their table row,
e.g. "Import limits") with its fidelity checklist item 19, and the importContacts page
(``providers/seeds/000_*``, cited as "seed 000"). Behaviour the sources leave open is marked
[ASSUMED] and chosen to be the strictest plausible one, so that syncd is tested against it.

What it serves, under ``/api/v2/``:

- ``importContacts``: ``token``, ``list_id``, ``field_names[j]``, ``data[i][j]``, read from the
  query string and the body alike (checklist 19; PHP bracket arrays via ``kit.forms``); at most
  500 rows and 30 field names, one of them ``phone`` or ``email`` ("Import limits", seed 000);
  upsert by phone, then email, within the list ("Import semantics"); answer
  ``{"status": "OK", "result": {inserted, updated, invalid, log[{index, error_message}]}}``,
  ``log`` only when ``invalid`` > 0 ("Import result", seed 000).
- ``createSubscriberList``: ``name`` -> ``{"status": "OK", "result": {"list_id": N}}`` ("Create
  list").
- ``getSubscriberLists`` -> ``{"status": "OK", "result": {"lists": [{list_id, name}]}}`` ("List
  lists": the method is documented, its name and answer are [UNCONFIRMED]).

Errors: a missing or wrong token is HTTP 403 ("Errors": a client maps 403 to "Access Denied");
a call-level failure is HTTP 200 with the v1 shape ``{"error": "..."}`` ("Errors", assumed for v2
by checklist 19); the rate-limit answer is the one documented for the login endpoint,
``{"status": "error", "message": "Превышен лимит запросов"}`` ("Rate limits"), sent with HTTP 429
[ASSUMED]. No rate limit is enforced unless a fault asks for it (the contact API's limits are
[UNCONFIRMED]).

Test controls (the kit's ``EmulatorControls`` plus): ``GET /_emulator/state[?list_id=N]`` (the
lists and their contacts), ``POST /_emulator/list`` ``{"name"}`` (a new list's id).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from syncd.emulators.kit import (
    EMAIL_RE,
    EmulatorControls,
    EmulatorOptions,
    fault_means_later,
    key_accepted,
)
from syncd.emulators.kit import forms as pp

MAX_ROWS = 500  # "Import limits" / seed 000
MAX_FIELD_NAMES = 30  # "Import limits" / seed 000: phone or email is one of them
RATE_LIMIT_MESSAGE = "Превышен лимит запросов"  # "Rate limits"
INCORRECT_PHONE = "Incorrect phone number"  # seed 000: the documented log message
INCORRECT_EMAIL = "Incorrect email"  # [ASSUMED] wording, modelled on the phone one
NO_ADDRESS = "Phone or email is required"  # [ASSUMED] wording
# "Phone format": digits, e.g. 375291111111 [CONFIRMED]; that a '+' in front is refused rather
# than dropped is [ASSUMED] (the strictest reading; clients strip it)
_PHONE = re.compile(r"^[1-9]\d{6,14}$")
TWO_SUBSCRIBERS = "Phone and email belong to different subscribers"  # [ASSUMED] wording
_ROUTE = re.compile(r"^/api/v2/(?P<method>[A-Za-z]+)/?$")


# --------------------------------------------------------------------------- sms.by state


class _Refused(Exception):
    """A call-level failure: answered as ``{"error": message}``."""


@dataclass
class Subscriber:
    phone: str = ""
    email: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"phone": self.phone, "email": self.email, "fields": dict(self.fields)}


@dataclass
class SubscriberList:
    """One mailing list: contacts are per list ("Import semantics": upsert within the list)."""

    id: int
    name: str
    subscribers: list[Subscriber] = field(default_factory=list)
    by_phone: dict[str, Subscriber] = field(default_factory=dict)
    by_email: dict[str, Subscriber] = field(default_factory=dict)

    def find(self, phone: str, email: str) -> Subscriber | None:
        # "Import semantics": a contact with the transferred phone number or email address
        return (self.by_phone.get(phone) if phone else None) or (
            self.by_email.get(email) if email else None
        )

    def set_address(self, sub: Subscriber, kind: str, value: str) -> None:
        index = self.by_phone if kind == "phone" else self.by_email
        old = getattr(sub, kind)
        if old and index.get(old) is sub:
            del index[old]
        setattr(sub, kind, value)
        if value:
            index[value] = sub


class SmsbyEmulator(EmulatorControls):
    """An sms.by account behind ``handle``; thread-safe (one lock around the state)."""

    write_methods = frozenset({"importContacts", "createSubscriberList"})

    def __init__(
        self, token: str | None = None, max_rows: int = MAX_ROWS, max_fields: int = MAX_FIELD_NAMES
    ) -> None:
        super().__init__()
        self.token = token  # None: any non-empty token is accepted
        self.max_rows, self.max_fields = max_rows, max_fields
        self.lists: dict[int, SubscriberList] = {}
        self._next_list = 1
        self._methods: dict[str, Callable[[pp.Params], dict[str, Any]]] = {
            "importContacts": self._import_contacts,
            "createSubscriberList": self._create_list,
            "getSubscriberLists": self._get_lists,
        }

    # ---- in-process helpers

    def add_list(self, name: str) -> int:
        with self._lock:
            list_id = self._next_list
            self._next_list += 1
            self.lists[list_id] = SubscriberList(list_id, name)
            return list_id

    def contacts_in_list(self, list_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return [s.to_json() for s in self.lists[list_id].subscribers]

    def get(self, list_id: int, phone_or_email: str) -> dict[str, Any] | None:
        with self._lock:
            value = phone_or_email.strip()
            sub = self.lists[list_id].find(value.removeprefix("+"), value.lower())
            return None if sub is None else sub.to_json()

    def state_json(self, query: httpx.QueryParams) -> dict[str, Any]:
        wanted = query.get("list_id")
        return {
            "lists": [
                {"id": lst.id, "name": lst.name, "contacts": [s.to_json() for s in lst.subscribers]}
                for lst in self.lists.values()
                if wanted is None or str(lst.id) == wanted
            ]
        }

    def admin_post(self, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if op == "list":
            return {"id": self.add_list(str(body["name"]))}
        return None

    def fault_answer(self, code: str, headers: dict[str, str] | None) -> httpx.Response:
        if fault_means_later(code):  # "Rate limits"
            body = {"status": "error", "message": RATE_LIMIT_MESSAGE}
            return httpx.Response(429, json=body, headers=headers)
        return httpx.Response(200, json={"error": f"Injected fault: {code}"}, headers=headers)

    # ---- the HTTP entry point

    def api_response(self, request: httpx.Request) -> httpx.Response:
        route = _ROUTE.match(request.url.path)
        method = route["method"] if route else ""
        if method not in self._methods or request.method not in ("GET", "POST"):
            return httpx.Response(404, json={"error": "Not found"})
        injected = self.enter(method)
        if injected is not None:
            return injected
        params = pp.request_params(request)  # checklist 19: query and body
        token = pp.scalar(params, "token")  # "Auth"
        if not key_accepted(token, self.token):
            return httpx.Response(403, json={"error": "Access denied"})  # "Errors" [ASSUMED body]
        with self._lock:
            try:
                result = self._methods[method](params)
            except _Refused as exc:
                return httpx.Response(200, json={"error": str(exc)})  # "Errors": v1 shape
        return httpx.Response(200, json={"status": "OK", "result": result})  # "Create list"

    # ---- API methods

    def _create_list(self, p: pp.Params) -> dict[str, Any]:
        name = pp.scalar(p, "name").strip()
        if not name:
            raise _Refused("name is required")
        return {"list_id": self.add_list(name)}  # "Create list"

    def _get_lists(self, p: pp.Params) -> dict[str, Any]:
        """ "List lists": documented, its name and answer are [UNCONFIRMED]: named after its
        siblings, answering the lists as "Create list" answers one [ASSUMED]."""
        return {"lists": [{"list_id": lst.id, "name": lst.name} for lst in self.lists.values()]}

    def _import_contacts(self, p: pp.Params) -> dict[str, Any]:
        raw_id = pp.scalar(p, "list_id").strip()
        lst = self.lists.get(int(raw_id)) if raw_id.isdigit() else None
        if lst is None:
            raise _Refused(f"List {raw_id or '(none)'} not found")  # [ASSUMED] wording
        names = [(j, v) for j, v in pp.indexed(p.get("field_names")) if isinstance(v, str)]
        if not names:
            raise _Refused("field_names is required")
        if len(names) > self.max_fields:  # "Import limits"
            raise _Refused(f"The number of custom fields must not exceed {self.max_fields}")
        columns = [v for _, v in names]
        if "phone" not in columns and "email" not in columns:  # seed 000
            raise _Refused("Custom fields must include phone or email")
        if len(set(columns)) != len(columns):
            raise _Refused("field_names must not repeat a field")  # [ASSUMED]
        rows = pp.indexed(p.get("data"))
        if not rows:
            raise _Refused("data is required")
        if len(rows) > self.max_rows:  # "Import limits"
            raise _Refused(f"You can import no more than {self.max_rows} contacts per call")

        inserted = updated = 0
        log: list[dict[str, Any]] = []
        for index, row in rows:
            cells = dict(pp.indexed(row)) if isinstance(row, dict) else {}
            values = {name: _text(cells.get(j)) for j, name in names}
            problem = _check(values) or _ambiguous(lst, values)
            if problem:
                log.append({"index": index, "error_message": problem})  # "Import result"
                continue
            if self._upsert(lst, values):
                inserted += 1
            else:
                updated += 1
        result: dict[str, Any] = {"inserted": inserted, "updated": updated, "invalid": len(log)}
        if log:
            result["log"] = log  # seed 000: only when invalid > 0
        return result

    def _upsert(self, lst: SubscriberList, values: dict[str, str]) -> bool:
        """Insert or update one row; True when inserted ("Import semantics")."""
        phone, email = values.get("phone", ""), values.get("email", "").lower()
        sub = lst.find(phone, email)
        new = sub is None
        if sub is None:
            sub = Subscriber()
            lst.subscribers.append(sub)
        for name, value in values.items():  # only the fields named in field_names change
            if name == "phone":
                lst.set_address(sub, "phone", value)
            elif name == "email":
                lst.set_address(sub, "email", value.lower())
            else:
                sub.fields[name] = value
        return new


def _text(value: pp.PhpValue | None) -> str:
    return value.strip() if isinstance(value, str) else ""


def _ambiguous(lst: SubscriberList, values: dict[str, str]) -> str | None:
    """A row whose phone is one subscriber's and whose email another's: "Import semantics"
    upserts one contact by phone or email, so such a row matches two; it is refused rather than
    left to give two subscribers one address [ASSUMED]."""
    phone, email = values.get("phone", ""), values.get("email", "").lower()
    by_phone = lst.by_phone.get(phone) if phone else None
    by_email = lst.by_email.get(email) if email else None
    if by_phone is not None and by_email is not None and by_phone is not by_email:
        return TWO_SUBSCRIBERS
    return None


def _check(values: dict[str, str]) -> str | None:
    """The row's error message, or None (seed 000: log entries name the row and the reason)."""
    phone, email = values.get("phone", ""), values.get("email", "")
    if phone and not _PHONE.match(phone):
        return INCORRECT_PHONE  # also a '+' in front ("Phone format")
    if email and not EMAIL_RE.match(email):
        return INCORRECT_EMAIL
    if not phone and not email:
        return NO_ADDRESS
    return None


def make_emulator(options: EmulatorOptions) -> SmsbyEmulator:
    """The emulator ``syncd emulate smsby`` serves; seeded: list 1 "Newsletter"."""
    emulator = SmsbyEmulator(token=options.api_key)
    if options.seed:
        emulator.add_list("Newsletter")
    return emulator
