"""A local emulator of the Octopush v1 contact API.

Sources: ``/work/shared/providers/octopush.md`` ("wire facts", cited by the name of their table
row, e.g. "Delete contacts") with its fidelity checklist item 20, and the "Add contacts" page
(``providers/seeds/003_*``, cited as "seed 003"). Behaviour the sources leave open is marked
[ASSUMED].

What it serves, under ``/v1/public/``, JSON in and out ("Auth": UTF-8 JSON bodies, headers
``api-login`` and ``api-key``; 401 ``{"code": 401, "message": "unauthorized"}`` when they are
missing or wrong, the shape a third-party test suite mocks, "Errors"):

- ``POST contact/create``: ``contacts`` [{phone_number, first_name, last_name, param1..param5}],
  ``list_name``/``list_names``, ``tag_name``/``tag_names``, ``un_list``, ``un_tag``,
  ``do_not_overwrite`` (true: an existing number is left as it is, the dev.octopush.com wording),
  ``auto_remove_blacklisted_numbers`` ("Add contacts"). A list or tag named there is created if
  missing (seed 003: "the list name you want to create"). Answer 201 [INFERRED from "Create list"]
  with ``{"number_of_contacts": N}`` [ASSUMED body].
- ``DELETE contact/delete`` with a JSON body ``{"phone_numbers": [...], "list_name"?}``: 1 to 200
  numbers, only from that list when one is named, else from the account; 204 ("Delete
  contacts"). Numbers it does not hold are skipped [ASSUMED], so a retried delete succeeds.
- ``POST contact-list/create`` ``{"list_name"}``: 201 ("Create list"); an existing name answers
  400 "List already exists" [ASSUMED].

Lenient input ("Lenient input"): values of the wrong type are cast, booleans read from
1/0/"true"/"false", phone numbers lose spaces, dots, dashes and brackets and a leading 00 becomes
``+``; unknown parameters are ignored. Errors are ``{"code", "message"}`` with the legacy numbering
("Errors", [INFERRED, third-party]): HTTP 400 with code 305 "too many contacts in query" above the
per-call limit (``max_contacts``: the real one is [UNCONFIRMED], a setting here), and HTTP 400
with code 117 (legacy "no valid numbers", the nearest documented code) for a number that cannot
be read as E.164 or that ``refuse_number`` marked as refused; the message names the number
[ASSUMED]. A rate-limit fault answers HTTP 429 [ASSUMED].
"""

from __future__ import annotations

import json
import re
import time
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
from syncd.emulators.kit.hooks import HookPolicy, HookSender

CONTACT_FIELDS = ("first_name", "last_name", "param1", "param2", "param3", "param4", "param5")
MAX_DELETE = 200  # "Delete contacts": 1 to 200 numbers per call
MAX_LIST_NAME = 30  # "Add contacts": list_name is at most 30 characters
MAX_TAG_NAME = 20  # "Add contacts": tag_name is at most 20 characters
CODE_BAD_REQUEST = 100  # legacy "POST request missing" [ASSUMED for a malformed body]
CODE_INVALID_NUMBER = 117  # legacy "no valid numbers"
CODE_TOO_MANY = 305  # legacy "too many contacts in query"
_VERBS = {"contact/create": "POST", "contact/delete": "DELETE", "contact-list/create": "POST"}
_ROUTE = re.compile(r"^/v1/public/(?P<method>[a-z-]+/[a-z-]+)/?$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")  # "Phone format": E.164 with a leading '+'
_FORMATTING = re.compile(r"[\s.\-()/]")
_TRUE = frozenset({"1", "true", "yes", "on"})


class _Refused(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> httpx.Response:
        return httpx.Response(self.status, json={"code": self.code, "message": self.message})


@dataclass
class OctoContact:
    phone_number: str
    fields: dict[str, str] = field(default_factory=dict)
    lists: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "phone_number": self.phone_number,
            **self.fields,
            "lists": sorted(self.lists),
            "tags": sorted(self.tags),
        }


class OctopushEmulator(EmulatorControls):
    """An Octopush account behind ``handle``; thread-safe (one lock around the state)."""

    write_methods = frozenset(_VERBS)

    def __init__(
        self, api_login: str | None = None, api_key: str | None = None, max_contacts: int = 500
    ) -> None:
        super().__init__()
        self.api_login, self.api_key = api_login, api_key  # None: any non-empty value
        self.max_contacts = max_contacts
        self.contacts: dict[str, OctoContact] = {}
        self.lists: set[str] = set()
        self.blacklist: set[str] = set()
        self.refused: dict[str, str] = {}  # number -> the message its refusal carries
        # "Opt-out (STOP) callbacks": a URL set in the customer interface (here an admin route),
        # answered within about 1 s; retries are not documented: one attempt [ASSUMED]
        self.callback_url: str | None = None
        self.callbacks = HookSender(HookPolicy(timeout=1.0, retry_interval=1.0, give_up_after=0.0))
        self._stops = 0
        self._methods: dict[str, Callable[[dict[str, Any]], httpx.Response]] = {
            "contact/create": self._create_contacts,
            "contact/delete": self._delete_contacts,
            "contact-list/create": self._create_list,
        }

    # ---- in-process helpers

    def add_list(self, name: str) -> None:
        with self._lock:
            self.lists.add(name)

    def get(self, phone_number: str) -> dict[str, Any] | None:
        with self._lock:
            contact = self.contacts.get(phone_number)
            return None if contact is None else contact.to_json()

    def contacts_in_list(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c.to_json() for c in self.contacts.values() if name in c.lists]

    def refuse_number(self, phone_number: str, message: str | None = None) -> None:
        """Make the account refuse this number as invalid (e.g. a range it cannot route)."""
        with self._lock:
            self.refused[phone_number] = message or f"Invalid phone number: {phone_number}"

    def add_to_blacklist(self, phone_number: str) -> None:
        """The number replied STOP ("Add contacts": auto_remove_blacklisted_numbers)."""
        with self._lock:
            self.blacklist.add(phone_number)

    def state_json(self, query: httpx.QueryParams) -> dict[str, Any]:
        wanted = query.get("list_name")
        return {
            "lists": sorted(self.lists),
            "blacklist": sorted(self.blacklist),
            "contacts": [
                c.to_json() for c in self.contacts.values() if wanted is None or wanted in c.lists
            ],
        }

    def admin_post(self, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if op == "list":
            self.add_list(str(body["name"]))
            return {"list_name": str(body["name"])}
        if op == "refuse":
            self.refuse_number(str(body["phone_number"]), body.get("message"))
            return {}
        if op == "blacklist":
            self.add_to_blacklist(str(body["phone_number"]))
            return {}
        if op == "callbacks":  # the customer interface's "Callbacks" URL, and the switches
            self.callback_url = body.get("url") or None
            self.callbacks.policy.update({k: v for k, v in body.items() if k != "url"})
            return {"url": self.callback_url, "deliveries": self.callbacks.summary()}
        if op == "stop":
            return self.stop(str(body["number"]), str(body.get("text", "STOP")))
        return None

    def stop(self, number: str, text: str = "STOP") -> dict[str, Any]:
        """The person answered STOP to a message: the number is opted out (blacklisted) and the
        opt-out callback is POSTed ("Opt-out (STOP) callbacks": message_id, number, text,
        stop_date ``Y-m-d H:i:s``)."""
        with self._lock:
            self.blacklist.add(number)
            self._stops += 1
            body = {
                "message_id": f"sms_{self._stops:013x}",  # [ASSUMED] the tickets' shape
                "number": number,
                "text": text,
                "stop_date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            }
            url = self.callback_url
        if url is not None:
            self.callbacks.send(url, body)
        return body

    def fault_answer(self, code: str, headers: dict[str, str] | None) -> httpx.Response:
        if fault_means_later(code):
            body = {"code": 429, "message": "Too many requests"}  # [ASSUMED]
            return httpx.Response(429, json=body, headers=headers)
        body = {"code": CODE_BAD_REQUEST, "message": f"Injected fault: {code}"}
        return httpx.Response(400, json=body, headers=headers)

    # ---- the HTTP entry point

    def api_response(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        route = _ROUTE.match(path)
        method = route["method"] if route else ""
        if method not in _VERBS:
            return httpx.Response(404, json={"code": 404, "message": "Not found"})
        if request.method != _VERBS[method]:
            # [ASSUMED] body: the docs show no answer for a wrong verb, only its status is meant
            return httpx.Response(405, json={"code": 405, "message": "Method not allowed"})
        injected = self.enter(method)
        if injected is not None:
            return injected
        login, key = request.headers.get("api-login", ""), request.headers.get("api-key", "")
        # "Auth": the login is the account's email address; an account made without one (``syncd
        # emulate``) still takes only an address there
        login_ok = key_accepted(login, self.api_login) and bool(EMAIL_RE.match(login))
        if not (login_ok and key_accepted(key, self.api_key)):
            return httpx.Response(401, json={"code": 401, "message": "unauthorized"})  # "Errors"
        try:
            body = json.loads(request.content.decode("utf-8"))  # "Auth": UTF-8 JSON
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return _Refused(400, CODE_BAD_REQUEST, "The body must be a JSON object").response()
        with self._lock:
            try:
                return self._methods[method](body)
            except _Refused as exc:
                return exc.response()

    # ---- API methods

    def _create_contacts(self, body: dict[str, Any]) -> httpx.Response:
        given = body.get("contacts")
        if not isinstance(given, list) or not given:
            raise _Refused(400, CODE_BAD_REQUEST, "contacts is required")
        if len(given) > self.max_contacts:
            raise _Refused(400, CODE_TOO_MANY, "Too many contacts in query")
        rows = [self._contact_row(item) for item in given if isinstance(item, dict)]
        lists = _names(body, "list_name", "list_names", MAX_LIST_NAME)
        tags = _names(body, "tag_name", "tag_names", MAX_TAG_NAME)
        keep_existing = _flag(body.get("do_not_overwrite"))
        drop_blacklisted = _flag(body.get("auto_remove_blacklisted_numbers"))
        self.lists.update(lists)  # seed 003: "the list name you want to create"
        for number, values in rows:
            if drop_blacklisted and number in self.blacklist:
                continue
            contact = self.contacts.get(number)
            if contact is None:
                contact = self.contacts[number] = OctoContact(number)
                contact.fields = dict.fromkeys(CONTACT_FIELDS, "") | values
            elif not keep_existing:
                contact.fields.update(values)
            if _flag(body.get("un_list")):
                contact.lists.clear()
            if _flag(body.get("un_tag")):
                contact.tags.clear()
            contact.lists.update(lists)
            contact.tags.update(tags)
        return httpx.Response(201, json={"number_of_contacts": len(rows)})

    def _contact_row(self, item: dict[str, Any]) -> tuple[str, dict[str, str]]:
        number = self._number(item.get("phone_number"))
        values = {name: _cast(item[name]) for name in CONTACT_FIELDS if name in item}
        return number, values

    def _number(self, value: object) -> str:
        """A readable E.164 number ("Lenient input"), else the call is refused."""
        text = _FORMATTING.sub("", _cast(value))
        if text.startswith("00"):
            text = "+" + text[2:]
        elif text.isdigit():
            # "Lenient input": a value of the right kind in the wrong form is fixed: digits with
            # a country code and no '+' are read as E.164 [INFERRED]
            text = "+" + text
        if text in self.refused:
            raise _Refused(400, CODE_INVALID_NUMBER, self.refused[text])
        if not _E164.match(text):
            # [ASSUMED] stricter than "Lenient input", which ignores what it cannot fix and sends
            # the rest: a number that cannot be read refuses the call, so that a client learns
            # which contact was not stored (a silent skip would leave it believing it was)
            raise _Refused(400, CODE_INVALID_NUMBER, f"Invalid phone number: {_cast(value)}")
        return text

    def _delete_contacts(self, body: dict[str, Any]) -> httpx.Response:
        given = body.get("phone_numbers")
        if isinstance(given, str):
            given = [given]  # "Lenient input": one number for a list of one
        if not isinstance(given, list) or not given:
            raise _Refused(400, CODE_BAD_REQUEST, "phone_numbers is required")
        if len(given) > MAX_DELETE:  # "Delete contacts": 1 to 200
            raise _Refused(400, CODE_TOO_MANY, f"Too many contacts in query (max {MAX_DELETE})")
        numbers = [self._number(value) for value in given]
        list_name = _cast(body.get("list_name")).strip()
        for number in numbers:
            contact = self.contacts.get(number)
            if contact is None:
                continue
            if list_name:
                contact.lists.discard(list_name)  # only from that list
            else:
                del self.contacts[number]  # from the account
        return httpx.Response(204)

    def _create_list(self, body: dict[str, Any]) -> httpx.Response:
        name = _cast(body.get("list_name")).strip()
        if not name or len(name) > MAX_LIST_NAME:
            message = f"list_name is required (at most {MAX_LIST_NAME} characters)"
            raise _Refused(400, CODE_BAD_REQUEST, message)
        if name in self.lists:
            raise _Refused(400, CODE_BAD_REQUEST, "List already exists")
        self.lists.add(name)
        return httpx.Response(201, json={"list_name": name})


def _cast(value: object) -> str:
    """ "Lenient input": numbers and booleans become text; None is empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flag(value: object) -> bool:
    return _cast(value).strip().lower() in _TRUE


def _names(body: dict[str, Any], one: str, many: str, limit: int) -> set[str]:
    """``list_name`` + ``list_names`` (or the tag pair), cut to their length ("Lenient input")."""
    names = {_cast(body.get(one)).strip()}
    more = body.get(many)
    if isinstance(more, list):
        names.update(_cast(v).strip() for v in more)
    return {n[:limit] for n in names if n}


def make_emulator(options: EmulatorOptions) -> OctopushEmulator:
    """The emulator ``syncd emulate octopush`` serves; seeded: the list "Newsletter"."""
    emulator = OctopushEmulator(api_key=options.api_key)
    if options.seed:
        emulator.add_list("Newsletter")
    return emulator
