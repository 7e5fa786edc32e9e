"""A local emulator of Netcore Smartech's apiv2 contact activities.

Sources: ``/work/shared/providers/netcore.md`` ("4.1", "4.2" and fidelity checklist item 21) and
the bulk upload page (``providers/seeds/004_*``, "seed 004"). What the sources leave open is
marked [ASSUMED] and chosen to be the strictest plausible behaviour.

What it serves, under ``/apiv2``, for ``type=contact`` and ``activity=`` (checklist 21):

- ``add`` / ``addsync``: ``data`` is a JSON string of UPPER-CASE attributes with the account's
  primary key (EMAIL by default, MOBILE with ``primary_key="MOBILE"``); ``listid`` optional. Both
  upsert; ``addsync`` refuses an invalid row in its answer ("4.1"), ``add`` only checks the API
  key and answers Success (a row without a usable primary key is dropped later, ``dropped``).
- ``delete``: ``listid`` and ``data`` = the primary key value (or the older JSON form): the
  contact leaves the list and stays in the account ("4.1"). GET or POST.
- ``bulkupload``: ``path`` (URL of a CSV), ``listid``, ``notifyemail``, ``callback`` (seed 004).
  The answer comes at once; a worker thread then really fetches ``path``, applies the rows and
  really POSTs the callback as JSON [ASSUMED payload, the docs are cut off]::

      {"requestid": "...", "status": "completed" | "failed", "message": "...",
       "total": N, "success": N, "failed": N,
       "errors": [{"row": 2, "primary_key": "...", "reason": "..."}]}

Parameters are read from the query string and the form body alike ("4.1": the docs' examples
use both). Every success is ``{"requestid": "<32 hex>", "result": "Success"}``; a bad key is
``{"result": "Invalid API key"}`` with HTTP 200 ("4.1"; the status is not stated [ASSUMED]).
Limits [ASSUMED, from v3's batch call, "4.2"]: at most ``max_attributes`` (20) columns per row.

Test controls (the kit's ``EmulatorControls`` plus): ``GET /_emulator/state`` (contacts,
lists, bulk jobs with the URLs they were given), ``POST /_emulator/list`` ``{"name"}``, and
``POST /_emulator/callbacks`` ``{"mode": "normal" | "never" | "twice", "delay": seconds}`` to
withhold or repeat callbacks, and ``POST /_emulator/replay`` ``{"requestid", "times"}`` to send
a job's callback again now.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time
import uuid
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

MAX_ATTRIBUTES = 20  # "4.2": 20 attributes per contact (v3) [ASSUMED for apiv2]
_MOBILE = re.compile(r"^[1-9]\d{6,14}$")  # country code and number, digits only [ASSUMED]
_ROUTE = re.compile(r"^/apiv2/?$")
ACTIVITIES = ("add", "addsync", "delete", "bulkupload")


class _Refused(Exception):
    """Answered as ``{"result": message}`` (HTTP 200)."""


@dataclass
class BulkJob:
    requestid: str
    path: str
    callback: str
    listid: int | None
    status: str = "queued"  # queued | completed | failed
    message: str = ""
    total: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    callbacks_sent: int = 0
    callback_answers: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "requestid": self.requestid,
            "path": self.path,
            "callback": self.callback,
            "listid": self.listid,
            "status": self.status,
            "message": self.message,
            "total": self.total,
            "errors": list(self.errors),
            "callbacks_sent": self.callbacks_sent,
            "callback_answers": list(self.callback_answers),
        }


class NetcoreEmulator(EmulatorControls):
    """A Netcore account behind ``handle``; thread-safe (one lock around the state)."""

    write_methods = frozenset(ACTIVITIES)

    def __init__(
        self,
        api_key: str | None = None,
        primary_key: str = "EMAIL",
        max_attributes: int = MAX_ATTRIBUTES,
    ) -> None:
        super().__init__()
        self.api_key = api_key  # None: any non-empty key is accepted
        self.primary_key = primary_key
        self.max_attributes = max_attributes
        self.contacts: dict[str, dict[str, str]] = {}
        self.dropped: list[dict[str, Any]] = []  # ``add`` rows processing could not store
        self.lists: dict[int, tuple[str, set[str]]] = {}
        self.jobs: list[BulkJob] = []
        self.callback_mode = "normal"
        self.callback_delay = 0.0
        self._workers: list[threading.Thread] = []

    # ---- in-process helpers

    def add_list(self, name: str) -> int:
        with self._lock:
            list_id = len(self.lists) + 1
            self.lists[list_id] = (name, set())
            return list_id

    def members(self, list_id: int) -> dict[str, dict[str, str]]:
        with self._lock:
            return {k: dict(self.contacts[k]) for k in sorted(self.lists[list_id][1])}

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait for the bulk jobs in flight (fetch, apply, callback) to finish."""
        deadline = time.monotonic() + timeout
        for worker in list(self._workers):
            worker.join(max(0.0, deadline - time.monotonic()))

    def state_json(self, query: httpx.QueryParams) -> dict[str, Any]:
        return {
            "primary_key": self.primary_key,
            "lists": [
                {"id": i, "name": name, "contacts": [dict(self.contacts[k]) for k in sorted(keys)]}
                for i, (name, keys) in self.lists.items()
            ],
            "contacts": [dict(c) for c in self.contacts.values()],
            "jobs": [j.to_json() for j in self.jobs],
            "dropped": list(self.dropped),
        }

    def admin_post(self, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if op == "list":
            return {"id": self.add_list(str(body["name"]))}
        if op == "replay":
            job = next(j for j in self.jobs if j.requestid == body.get("requestid"))
            self._post_callback(job, int(body.get("times", 1)))
            return job.to_json()
        if op == "callbacks":
            mode = str(body.get("mode", "normal"))
            if mode not in ("normal", "never", "twice"):
                raise ValueError(f"mode must be normal, never or twice, not {mode!r}")
            self.callback_mode, self.callback_delay = mode, float(body.get("delay", 0.0))
            return {"mode": self.callback_mode, "delay": self.callback_delay}
        return None

    def fault_answer(self, code: str, headers: dict[str, str] | None) -> httpx.Response:
        if fault_means_later(code):  # "4.2": rate limits [UNCONFIRMED]: HTTP 429 [ASSUMED]
            return httpx.Response(429, json={"result": "Rate limit exceeded"}, headers=headers)
        return httpx.Response(200, json={"result": f"Injected fault: {code}"}, headers=headers)

    # ---- the HTTP entry point

    def api_response(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if not _ROUTE.match(path) or request.method not in ("GET", "POST"):
            return httpx.Response(404, json={"result": "Not found"})
        params = pp.request_params(request)  # "4.1": query and body alike
        activity = pp.scalar(params, "activity")
        if pp.scalar(params, "type") != "contact" or activity not in ACTIVITIES:
            return httpx.Response(200, json={"result": "Invalid type or activity"})  # [ASSUMED]
        injected = self.enter(activity)
        if injected is not None:
            return injected
        key = pp.scalar(params, "apikey")
        if not key_accepted(key, self.api_key):
            return httpx.Response(200, json={"result": "Invalid API key"})  # "4.1"
        if request.method == "GET" and activity != "delete":
            return httpx.Response(405, json={"result": "Method not allowed"})  # [ASSUMED]
        requestid = uuid.uuid4().hex
        with self._lock:
            try:
                if activity == "bulkupload":
                    self._bulkupload(params, requestid)
                elif activity == "delete":
                    self._delete(params)
                else:
                    self._add(params, validate=activity == "addsync")
            except _Refused as exc:
                return httpx.Response(200, json={"result": str(exc)})
        return httpx.Response(200, json={"requestid": requestid, "result": "Success"})  # "4.1"

    # ---- activities

    def _list(self, params: pp.Params, required: bool) -> int | None:
        raw = pp.scalar(params, "listid").strip()
        if not raw:
            if required:
                raise _Refused("listid is required")  # "4.1": required for delete
            return None
        if not raw.isdigit() or int(raw) not in self.lists:
            raise _Refused(f"Invalid listid {raw}")  # [ASSUMED] wording
        return int(raw)

    def _add(self, params: pp.Params, validate: bool) -> None:
        list_id = self._list(params, required=False)
        try:
            data = json.loads(pp.scalar(params, "data") or "null")
        except json.JSONDecodeError:
            raise _Refused("Invalid data: not JSON") from None
        if not isinstance(data, dict):
            raise _Refused("Invalid data: not a JSON object")
        values = {str(k).upper(): "" if v is None else str(v) for k, v in data.items()}
        problem = self._check(values)
        if problem and validate:
            raise _Refused(problem)  # "4.1": addsync answers what is wrong with the row
        if problem and "primary key" in problem:
            # "4.1": ``add`` validates only the API key before answering Success; the row is
            # processed later, and one without a usable primary key cannot be stored: it is
            # dropped there, seen only in the account (``dropped``) [INFERRED]
            self.dropped.append({"data": values, "reason": problem})
            return
        self._upsert(values, list_id)

    def _delete(self, params: pp.Params) -> None:
        list_id = self._list(params, required=True)
        assert list_id is not None
        raw = pp.scalar(params, "data").strip()
        if raw.startswith("{"):  # the older docs' JSON form
            try:
                raw = str(json.loads(raw).get(self.primary_key, ""))
            except (json.JSONDecodeError, AttributeError):
                raise _Refused("Invalid data") from None
        key = self._normal_key(raw)
        if not key:
            raise _Refused("data must be the primary key value")
        self.lists[list_id][1].discard(key)  # off the list; the contact stays ("4.1")

    def _bulkupload(self, params: pp.Params, requestid: str) -> None:
        path = pp.scalar(params, "path").strip()
        if not path.startswith(("http://", "https://")):
            raise _Refused("path must be the full URL of the CSV file")  # seed 004
        job = BulkJob(requestid, path, pp.scalar(params, "callback").strip(), None)
        job.listid = self._list(params, required=False)
        self.jobs.append(job)
        worker = threading.Thread(target=self._process, args=(job,), daemon=True)
        self._workers.append(worker)
        worker.start()

    # ---- the bulk worker (outside the lock except to apply)

    def _process(self, job: BulkJob) -> None:
        try:
            with httpx.Client(timeout=10.0) as client:
                response = client.get(job.path)
            if response.status_code != 200:
                raise _Refused(f"could not fetch the file: HTTP {response.status_code}")
            self._apply_file(job, response.content)
        except (_Refused, httpx.HTTPError) as exc:
            with self._lock:
                job.status, job.message = "failed", str(exc)
        if job.callback:
            self._call_back(job)

    def _apply_file(self, job: BulkJob, content: bytes) -> None:
        try:
            rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"))))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise _Refused(f"the file is not a readable CSV: {exc}") from None
        if not rows:
            raise _Refused("the file is empty")
        header = [h.strip().upper() for h in rows[0]]
        if self.primary_key not in header:
            raise _Refused(f"the header has no {self.primary_key} column")
        if len(header) > self.max_attributes:
            raise _Refused(f"more than {self.max_attributes} attributes per contact")
        with self._lock:
            for number, row in enumerate(rows[1:], start=2):
                values = dict(zip(header, (c.strip() for c in row), strict=False))
                problem = self._check(values) or (
                    "the row has more cells than the header" if len(row) > len(header) else None
                )
                if problem:
                    job.errors.append(
                        {
                            "row": number,
                            "primary_key": values.get(self.primary_key, ""),
                            "reason": problem,
                        }
                    )
                    continue
                self._upsert(values, job.listid)
            job.total = len(rows) - 1
            job.status = "completed"

    def _call_back(self, job: BulkJob) -> None:
        if self.callback_delay:
            time.sleep(self.callback_delay)
        with self._lock:
            mode = self.callback_mode
        self._post_callback(job, {"never": 0, "normal": 1, "twice": 2}[mode])

    def _post_callback(self, job: BulkJob, times: int) -> None:
        with self._lock:
            payload = {
                "requestid": job.requestid,
                "status": job.status,
                "message": job.message,
                "total": job.total,
                "success": job.total - len(job.errors),
                "failed": len(job.errors),
                "errors": list(job.errors),
            }
        for _ in range(times):
            try:
                with httpx.Client(timeout=10.0) as client:
                    status = client.post(job.callback, json=payload).status_code
            except httpx.HTTPError:
                status = 0
            with self._lock:
                job.callbacks_sent += 1
                job.callback_answers.append(status)

    # ---- rows

    def _normal_key(self, raw: str) -> str:
        raw = raw.strip()
        return raw.lower() if self.primary_key == "EMAIL" else raw.removeprefix("+")

    def _check(self, values: dict[str, str]) -> str | None:
        key = values.get(self.primary_key, "").strip()
        if not key:
            return f"the primary key {self.primary_key} is missing"
        if self.primary_key == "EMAIL" and not EMAIL_RE.match(key):
            return "Invalid email: the primary key is not a valid address"  # [ASSUMED] wording
        if self.primary_key == "MOBILE" and not _MOBILE.match(key):
            return "Invalid mobile: the primary key is not a valid number"  # [ASSUMED] wording
        if len(values) > self.max_attributes:
            return f"more than {self.max_attributes} attributes"
        # the channel attributes are validated whether or not they are the key [ASSUMED]
        mobile, email = values.get("MOBILE", "").strip(), values.get("EMAIL", "").strip()
        if mobile and not _MOBILE.match(mobile):
            return "Invalid mobile: not a valid number"
        if email and not EMAIL_RE.match(email):
            return "Invalid email: not a valid address"
        return None

    def _upsert(self, values: dict[str, str], list_id: int | None) -> None:
        key = self._normal_key(values[self.primary_key])
        contact = self.contacts.setdefault(key, {})
        contact.update({k: v for k, v in values.items() if k != self.primary_key})
        contact[self.primary_key] = key
        if list_id is not None:
            self.lists[list_id][1].add(key)


def make_emulator(options: EmulatorOptions) -> NetcoreEmulator:
    """The emulator ``syncd emulate netcore`` serves; seeded: list 1 "Newsletter"."""
    emulator = NetcoreEmulator(api_key=options.api_key, primary_key=options.primary_key)
    if options.seed:
        emulator.add_list("Newsletter")
    return emulator
