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

Layout: ``unisender_account.py`` holds the account state, the call-level error and what tests
drive the account with (in-process helpers, the ``/_emulator/`` state and controls);
``unisender_import.py`` holds the importContacts rules and the argument readers; this module holds
the HTTP entry point (routing, auth, rate limits, injected faults) and every other API method.
``make_emulator`` builds the emulator ``syncd emulate unisender|selzy`` serves.
"""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from syncd.emulators.kit import EMAIL_RE, EmulatorOptions, key_accepted
from syncd.emulators.kit import forms as pp
from syncd.emulators.unisender_account import (
    CALL_ERROR_CODES,
    EXPORT_SYSTEM_FIELDS,
    ApiError,
    Contact,
    UnisenderAccount,
    error_response,
)
from syncd.emulators.unisender_hooks import Hooks
from syncd.emulators.unisender_import import (
    MAX_TAGS,
    apply_lists,
    flag_arg,
    ids_arg,
    import_contacts,
    int_arg,
    required_arg,
)

WRITE_METHODS = frozenset(
    "importContacts createList createField deleteField exclude unsubscribe subscribe "  # noqa: SIM905
    "setHook removeHook".split()
)
MAX_EXPORT_PAGE = 1000  # §1.5: legacy exportContacts page
MAX_GET_URL = 8192  # [ASSUMED] a web server's request-line limit (see ``_answer``)
_ROUTE = re.compile(r"^/(?P<lang>[A-Za-z]{2})/api/(?P<async>async/)?(?P<method>[A-Za-z]+)/?$")


@dataclass
class ExportTask:
    uuid: str
    csv_text: str
    polls: int = 0
    ready: bool = False  # completed by time, for a client that waits for ``notify_url``


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


def _ok(result: Any, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"result": result, **extra})  # item 6


class UnisenderEmulator(UnisenderAccount):
    """The whole provider account behind ``handle``; thread-safe (one lock around state)."""

    write_methods = WRITE_METHODS

    def __init__(
        self,
        api_key: str | None = None,
        brand: str = "unisender",
        export_polls: int = 2,
        rate_limit_per_minute: int = 1200,
        max_user_fields: int = 50,
        *,
        sticky_list_unsubscribe: bool = True,
        export_rate_limit: int = 20,
    ) -> None:
        if brand not in ("unisender", "selzy"):
            raise ValueError(f"unknown brand {brand!r}")
        super().__init__(max_user_fields, sticky_list_unsubscribe=sticky_list_unsubscribe)
        self.api_key, self.brand = api_key, brand  # item 1: both brands behave the same
        # §1.5 step 2: ``getTaskResult`` answers ``processing`` until the task's Nth poll (the
        # default: one ``processing`` before ``completed``), or until ``notify_delay`` seconds
        # after the task began when it names a ``notify_url`` (step 3 then POSTs to it)
        self.export_polls = export_polls
        self.notify_delay = 0.05
        self._limits = _Windows(rate_limit_per_minute)  # §1.3: 1200/min per key and per IP
        self._export_limits = _Windows(export_rate_limit)  # §1.3: async export 20 per 60 s
        self.tasks: dict[str, ExportTask] = {}
        self.hooks = Hooks(api_key)  # setHook & co, and the events they receive

    # ---- the HTTP entry point -------------------------------------------------------------

    def api_response(self, request: httpx.Request) -> httpx.Response:
        response = self._answer(request)
        if self.faults.echo_request:
            response = _echoing(request, response)
        return response

    def fault_answer(self, code: str, headers: dict[str, str] | None) -> httpx.Response:
        return error_response(code, f"Injected fault: {code}", headers)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/_files/"):
            with self._lock:
                inject = self.faults.draw("download", None)  # a file: no error envelope
            return inject() or self._download(path.removeprefix("/_files/"))
        if request.method == "GET" and len(str(request.url)) > MAX_GET_URL:
            # [ASSUMED] the docs recommend POST and cap an import at 500 contacts for the size
            # of a POST; a request line past 8 KiB is refused by common web servers (nginx's
            # default buffers), so a large GET never reaches the API there either
            return httpx.Response(414, text="Request-URI Too Large")
        route = _ROUTE.match(path)  # item 1: /{lang}/api/{method} and /{lang}/api/async/{method}
        if route is None or request.method not in ("GET", "POST"):
            # [ASSUMED] outside the API the provider's web server answers; its page is not
            # documented, so only the status is meant to be faithful
            return httpx.Response(404, text="Not Found")
        method = ("async/" if route["async"] else "") + route["method"]
        injected = self.enter(method)  # a response ends the call here
        if injected is not None:
            return injected
        params = pp.request_params(request)  # items 2-4: query + body, PHP brackets
        key = pp.scalar(params, "api_key")  # §1.1 Auth: only the api_key parameter
        if not key_accepted(key, self.api_key):
            return error_response("invalid_api_key", "Invalid API key")  # §1.2 codes
        ip = str((request.extensions.get("client_addr") or ("127.0.0.1",))[0])
        with self._lock:
            limited = self._rate_limited(method, key, ip)
            if limited is not None:
                return error_response(limited, "API call limit exceeded")  # §1.3 / item 8
            handler = self.methods().get(method)
            if handler is None:
                return error_response("unknown_method", f"Unknown method {method}")  # §1.2 / item 7
            try:
                response = _ok(handler(params, request))
            except ApiError as exc:
                response = error_response(exc.code, exc.message, status=exc.status)
            delay = self.faults.answer_delay if self.faults.hits(method) else 0.0
        if delay > 0:
            time.sleep(delay)  # applied already: only the answer is late (outside the lock)
        return response

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
            cut = self.faults.export_cut_rows
            if task is not None and truncate:
                self.faults.count("export_truncated")
        if task is None:
            return httpx.Response(404, text="Not Found")
        text = task.csv_text
        if cut is not None:
            text = self._cut_rows(text, cut)
        if truncate:  # a transfer cut in the middle of the last row
            body = text.rstrip("\r\n")
            last = body.rfind("\n") + 1
            text = body[: last + max(1, (len(body) - last) // 2)]
        return httpx.Response(200, content=text.encode(), headers={"Content-Type": "text/csv"})

    def _cut_rows(self, text: str, rows: int) -> str:
        """The file ended after its header and ``rows`` data rows, at a row's line break: what
        a transfer cut between two rows looks like. Nothing tells it apart from a whole file
        (§1.5 step 4: a CSV with a header row and no row count)."""
        table = list(csv.reader(io.StringIO(text)))
        if len(table) - 1 <= rows:
            return text
        with self._lock:
            self.faults.count("export_cut_short")
        buffer = io.StringIO()
        csv.writer(buffer).writerows(table[: rows + 1])  # written as _api_export_async writes
        return buffer.getvalue()

    # ---- API methods ------------------------------------------------------------------------

    def methods(self) -> dict[str, Callable[[pp.Params, httpx.Request], Any]]:
        return {
            "importContacts": lambda p, r: import_contacts(self, p),
            "getLists": lambda p, r: self._lists_json(),
            "createList": lambda p, r: {"id": self.add_list(required_arg(p, "title"))},
            "getFields": lambda p, r: self._fields_json(),
            "createField": lambda p, r: {
                "id": self.add_field(required_arg(p, "name"), required_arg(p, "type"))
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
            "setHook": lambda p, r: self.hooks.set_hook(p),
            "listHooks": lambda p, r: self.hooks.list_hooks(),
            "removeHook": lambda p, r: self.hooks.remove_hook(p),
        }

    # ---- admin routes: a contact's change also notifies the hooks --------------------------

    def admin_post(self, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if op == "hooks":  # the delivery policy and switches; answers what was delivered
            self.hooks.sender.policy.update(body)
            return {"hooks": self.hooks.list_hooks(), "deliveries": self.hooks.sender.summary()}
        event = _event_of(body) if op == "contact" else None
        answer = super().admin_post(op, body)
        if event is not None:
            self.hooks.emit(*event)
        return answer

    def _api_delete_field(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        field_id = int_arg(p, "id", None)
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
        wanted = ids_arg(pp.scalar(p, "list_ids"))  # omitted: every list the contact is in
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
        list_ids = ids_arg(required_arg(p, "list_ids"))
        if not (email or phone) or (email and not EMAIL_RE.match(email)):
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
        apply_lists(contact, {"list_ids": list_ids}, {}, False, sticky=self.sticky_list_unsubscribe)
        return {"person_id": contact.id}

    def _api_get_contact(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        email = required_arg(p, "email").strip().lower()  # §1.6 getContact (minimal)
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
        if flag_arg(p, "include_lists"):  # lists[].status words are [UNCONFIRMED]
            result["lists"] = [
                {
                    "id": i,
                    "status": "active" if i in contact.lists else "unsubscribed",
                    "added_at": contact.subscribed_at.get(i, contact.added_at),
                }
                for i in sorted(self.lists)
                if contact.in_list(i)
            ]
        if flag_arg(p, "include_fields"):
            result["fields"] = dict(contact.fields)
        return result

    # ---- exportContacts (§1.5, items 14, 15) -----------------------------------------------------

    def _export(self, p: pp.Params) -> tuple[list[str], list[list[str]]]:
        user = sorted(self._field_names(), key=lambda n: n)
        names = pp.string_list(p.get("field_names")) or [*EXPORT_SYSTEM_FIELDS, *user]
        bad = [n for n in names if n not in EXPORT_SYSTEM_FIELDS and n not in user]
        if bad:
            raise ApiError(CALL_ERROR_CODES["unknown_field"], f'Unknown field "{bad[0]}"')
        list_id = int_arg(p, "list_id", None)
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
        offset, limit = int_arg(p, "offset", 0), int_arg(p, "limit", MAX_EXPORT_PAGE)
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
        notify_url = pp.scalar(p, "notify_url")
        if notify_url:
            threading.Thread(
                target=self._notify, args=(task, notify_url, _host_of(r)), daemon=True
            ).start()
        return {"task_uuid": task.uuid, "status": "new"}  # §1.5 step 1

    def _notify(self, task: ExportTask, url: str, host: str) -> None:
        """§1.5 step 3 [INFERRED]: once the file is ready, POST the getTaskResult envelope to
        the task's ``notify_url``; one attempt (no retry is documented)."""
        time.sleep(self.notify_delay)
        with self._lock:
            if self.faults.export_never_completes:
                return
            task.ready = True
            body = {"result": self._task_result(task, host, done=True)}
        with contextlib.suppress(httpx.HTTPError):  # the client still polls (step 2)
            httpx.post(url, json=body, timeout=3.0)

    def _api_task_result(self, p: pp.Params, r: httpx.Request) -> dict[str, Any]:
        task = self.tasks.get(pp.scalar(p, "task_uuid"))
        if task is None:
            raise ApiError(CALL_ERROR_CODES["not_found"], "Task not found")
        task.polls += 1  # §1.5 step 2: new -> processing -> completed
        never = self.faults.export_never_completes
        done = (task.ready or task.polls >= self.export_polls) and not never
        if task.polls == self.export_polls and not done:
            self.faults.count("export_never_completes")  # once per task held back
        return self._task_result(task, _host_of(r), done=done)

    @staticmethod
    def _task_result(task: ExportTask, host: str, *, done: bool) -> dict[str, Any]:
        result = {
            "task_uuid": task.uuid,
            "status": "completed" if done else "processing",
            "task_type": "export_contacts",
        }  # task_type value [UNCONFIRMED]
        if done:  # served by this emulator, on the host the client used
            result["file_to_download"] = f"{host}/_files/{task.uuid}.csv"
        return result


def _event_of(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The event an admin route's contact action makes (``unisender_hooks.EVENT_NAMES``)."""
    action, email = body.get("action"), str(body.get("email", "")).strip().lower()
    list_id = body.get("list_id")
    if action == "unsubscribe" and list_id is not None:
        return "list_unsubscribe", {"email": email, "list_id": int(list_id)}
    if action in ("unsubscribe", "block"):
        status = "blocked" if action == "block" else "unsubscribed"
        return "status", {"email": email, "email_status": status}
    if action == "sign_up":
        return "subscribe", {"email": email, "list_id": int(body["list_id"])}
    if action in ("edit", "set_tags", "change_email"):
        return "update", {"email": email}
    if action == "delete":
        return "delete", {"email": email}
    return None


def _host_of(request: httpx.Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc.decode()}"


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


def _echoing(request: httpx.Request, response: httpx.Response) -> httpx.Response:
    """An error answer that quotes the request it refuses (``Faults.echo_request``)."""
    try:
        body = json.loads(response.read())
    except ValueError:
        return response
    if not isinstance(body, dict) or not body.get("error"):
        return response
    quoted = f"{request.method} {request.url} {request.content.decode('utf-8', 'replace')}"
    text = f"{html.unescape(body['error'])} ({quoted})"
    return error_response(str(body.get("code")), text, status=response.status_code)


def make_emulator(options: EmulatorOptions) -> UnisenderEmulator:
    """The emulator ``syncd emulate unisender|selzy`` serves; seeded: list 1 "Newsletter" and
    the fields Name and City."""
    emulator = UnisenderEmulator(api_key=options.api_key, brand=options.provider)
    if options.seed:
        emulator.add_list("Newsletter")
        emulator.add_field("Name")
        emulator.add_field("City")
    return emulator
