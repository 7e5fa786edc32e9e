"""Octopush v1: a push-only adapter for one contact list.

Wire facts, cited by the name of their row in shared/providers/octopush.md ("Auth", "Add
contacts", ...) and the "Add contacts" page (shared/providers/seeds/003_*, cited as "seed 003").

- Every call is JSON to ``{api_root}/{path}`` with the headers ``api-login`` and ``api-key``
  ("Auth"); the key never goes into a URL or a body (DESIGN rule 7).
- Upsert: ``POST contact/create`` with ``do_not_overwrite`` false, so an existing number is
  overwritten ("Add contacts", "Update contact"). The readme.io page words the flag the other way
  round; false is also its default, so the call means "overwrite" under the clearer
  dev.octopush.com wording and is what the provider does when the flag is absent [UNCONFIRMED].
- Delete: ``DELETE contact/delete`` with a JSON body, at most 200 numbers, always scoped to the
  target's list ("Delete contacts"): syncd never removes a contact from the whole account, where
  it may belong to lists syncd does not own (DESIGN §8).
- Fields: a contact holds ``first_name``, ``last_name`` and ``param1``..``param5`` only ("Add
  contacts"); a target must map its fields onto those names.
- Tags: ``tag_name(s)`` tag every contact of a call alike and ``un_tag`` detaches all tags, syncd's
  or not ("Add contacts"); per-contact tags cannot travel in a batch, so tags are not synced.
- Statuses: Octopush's blacklist is fed by STOP replies; no documented call records an opt-out,
  so a contact that opted out locally is refused here rather than pushed as an active member.
- Answers: no per-row answer is documented ("Add contacts response"); errors are
  ``{"code", "message"}`` with HTTP 400 ("Errors", seed 003 responses). A batch refused whole is
  split in halves until the refused rows stand alone, each rejected with the provider's code and
  message (DESIGN §8, "Partial batches"). The contacts-per-call limit of ``contact/create`` is
  [UNCONFIRMED]: ``max_rows_per_call`` (default 500), and a batch refused as too large (legacy
  code 305, HTTP 413, or a message saying so) makes this adapter send halves from then on.
- Lists: ``list_id`` is the list's name (at most 30 characters). A list named in
  ``contact/create`` is created by it (seed 003); with ``create_missing_list`` the list is also
  created up front by ``POST contact-list/create`` ("Create list"), once per process.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx
from pydantic import ConfigDict, Field, model_validator

from syncd.config import ProviderSettings, TargetConfig
from syncd.core.projection import is_opted_out
from syncd.errors import AuthError, ProviderError
from syncd.providers.base import (
    Capabilities,
    PushCall,
    RemoteContact,
    RowChange,
    RowOutcome,
)
from syncd.providers.http import HttpProvider, answer_object, key_fingerprint
from syncd.providers.spec import (
    PLACEHOLDER,
    CreateMissingList,
    MaxRowsPerCall,
    ProviderSpec,
    Starter,
)

log = logging.getLogger(__name__)

CREATE = "contact/create"
DELETE = "contact/delete"
CREATE_LIST = "contact-list/create"
REMOTE_FIELDS = ("first_name", "last_name", "param1", "param2", "param3", "param4", "param5")
DEFAULT_ROWS_PER_CALL = 500  # "Add contacts response": the real limit is [UNCONFIRMED]
MAX_DELETE = 200  # "Delete contacts": 1 to 200 numbers per call
MAX_LIST_NAME = 30  # "Add contacts": list_name is at most 30 characters
SPLIT_CALLS = 64  # extra calls one push may spend isolating the rows of a refused batch

_REFUSED = frozenset({400, 413, 422})  # the request's content was refused: split it
_TOO_LARGE_CODES = frozenset({"305"})  # "Errors": legacy 305, too many contacts in query
_TOO_LARGE = re.compile(r"too (many|large|big)", re.IGNORECASE)
_EXISTS = re.compile(r"already exist", re.IGNORECASE)

# Lists this process created or found existing, by (key fingerprint, api root, list name).
_lists_ready: set[tuple[str, str, str]] = set()
_lists_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A call the provider refused for its content (HTTP 400/413/422)."""

    status: int
    code: str
    message: str

    @property
    def too_large(self) -> bool:
        return (
            self.status == 413
            or self.code in _TOO_LARGE_CODES
            or bool(_TOO_LARGE.search(self.message))
        )


Send = Callable[[Sequence[RowChange]], _Refusal | None]

CAPABILITIES = Capabilities(
    rows_per_call=DEFAULT_ROWS_PER_CALL,  # max_rows_per_call replaces it
    fields_per_call=len(REMOTE_FIELDS),
    delete=True,  # list-scoped
    exclude=False,
    tags=False,
    export=False,  # "List/fetch contacts": not documented
    statuses=frozenset({"active"}),
    # "Add contacts" / "Update contact": an existing number is *overwritten* by
    # contact/create, and what becomes of a parameter the contact object leaves out is
    # not documented; the API "applies defaults" to what it is not given ("Lenient
    # input"), so a missing param may well be reset. Every update sends every field.
    partial_update=False,
    # octopush.md "Opt-out (STOP) callbacks": a URL set in the customer interface receives
    # each STOP (message_id, number, text, stop_date); nothing is signed
    hooks="opt_out",
)


class OctopushProvider(HttpProvider):
    """An Octopush account plus one contact list (by name); push-only."""

    name = "octopush"

    def configure(self, target: TargetConfig) -> None:
        settings = OctopushSettings.of(target)
        rows = settings.max_rows_per_call or DEFAULT_ROWS_PER_CALL
        self.capabilities = replace(CAPABILITIES, rows_per_call=rows)
        self._list = target.list_id
        self._row_cap = self.capabilities.rows_per_call  # shrinks after a "too large" refusal
        api_key = target.api_key.get_secret_value()
        self._fingerprint = key_fingerprint(api_key)
        self._auth = {"api-login": settings.api_login or "", "api-key": api_key}  # "Auth"
        self._create_missing_list = settings.create_missing_list
        # rate limits of the contact API are [UNCONFIRMED]: the target's setting applies

    # ------------------------------------------------------------------ the wire

    def _send(self, method: str, verb: str, body: dict[str, Any]) -> _Refusal | None:
        """One write call; None when accepted, the refusal when its content was refused."""
        request = self._http.client.build_request(
            verb, f"{self.target.api_root}/{method}", json=body, headers=self._auth
        )
        return self._http.send(
            method, request, write=True, parse=lambda r: self._read_answer(method, r)
        )

    def _read_answer(self, method: str, response: httpx.Response) -> _Refusal | None:
        status = response.status_code
        if status < 300:
            return None  # 201 / 204: the body is not documented and not needed
        code, message = self._error_of(response)
        where = f"{self.name} {method}"
        if status in (401, 403):  # "Errors": {"code": 401, "message": "unauthorized"}
            raise AuthError(
                f"{where}: {message or 'unauthorized'} (HTTP {status}): check api_login and the "
                f"API key of target {self.target.name!r}",
                code=f"http_{status}",
            )
        if status in _REFUSED:
            return _Refusal(status, code, message)
        raise ProviderError(f"{where}: {message} (HTTP {status})", code=code or f"http_{status}")

    def _error_of(self, response: httpx.Response) -> tuple[str, str]:
        body = answer_object(response)
        if body is not None and (body.get("message") or body.get("code")):
            code, message = str(body.get("code") or ""), str(body.get("message") or "")
        else:
            text = response.content[:200].decode("utf-8", "replace").strip()
            code, message = "", text or response.reason_phrase
        return code, self._http.scrub(message)

    # ------------------------------------------------------------------ prepare

    def prepare(self, fields: Sequence[str], *, create_missing: bool) -> None:
        where = f"target {self.target.name!r}"
        if self.target.key != "phone":
            raise ProviderError(
                f'{where}: Octopush contacts are phone numbers: set key = "phone"',
                code="invalid_key",
            )
        unknown = [f for f in fields if f not in REMOTE_FIELDS]
        if unknown:
            raise ProviderError(
                f"{where}: an Octopush contact holds only {', '.join(REMOTE_FIELDS)}; map the "
                f"fields onto those names (not {', '.join(unknown)})",
                code="invalid_field_name",
            )
        if len(self._list) > MAX_LIST_NAME:
            raise ProviderError(
                f"{where}: an Octopush list name has at most {MAX_LIST_NAME} characters",
                code="invalid_list_name",
            )
        if self._create_missing_list and create_missing:
            self._ensure_list()

    def _ensure_list(self) -> None:
        marker = (self._fingerprint, self.target.api_root, self._list)
        with _lists_lock:
            if marker in _lists_ready:
                return
            refusal = self._send(CREATE_LIST, "POST", {"list_name": self._list})  # "Create list"
            if refusal is not None and not _EXISTS.search(refusal.message):
                raise ProviderError(
                    f"{self.name} {CREATE_LIST}: {refusal.message} ({refusal.code})",
                    code=refusal.code or f"http_{refusal.status}",
                )
            if refusal is None:
                log.info("%s: created list %r", self.name, self._list)
            _lists_ready.add(marker)

    # ------------------------------------------------------------------ push

    def method_name(self, call: PushCall) -> str:
        return CREATE if call.op in ("create", "update") else DELETE

    def export(self) -> Iterator[RemoteContact]:
        raise NotImplementedError(
            "Octopush documents no export; with capabilities.export False the engine takes the "
            "remote side as the base and never calls this"
        )

    def _contact(self, call: PushCall, rc: RowChange) -> dict[str, str]:
        values = rc.row.field_map
        # "" clears a field the local side cleared (the upsert overwrites, "Add contacts")
        return {"phone_number": rc.row.key, **{c: values.get(c, "") for c in call.columns}}

    def wire_rows(self, call: PushCall, limit: int) -> list[dict[str, str]]:
        if call.op in ("create", "update"):
            return [self._contact(call, rc) for rc in call.rows[:limit]]
        return [{"phone_number": rc.row.key} for rc in call.rows[:limit]]

    def _refuse_locally(self, call: PushCall, rc: RowChange) -> RowOutcome | None:
        key = rc.row.key
        if not key:
            return RowOutcome(key, False, "empty_key", "the row has no key", False)
        if call.op in ("create", "update") and is_opted_out(rc.row.status):
            return RowOutcome(
                key,
                False,
                "opt_out_unsupported",
                "opted out locally, and Octopush documents no way to record an opt-out: not "
                "sent, since contact/create would make it an active member of the list",
                False,
            )
        return None

    def push(self, call: PushCall) -> list[RowOutcome]:
        outcomes = [self._refuse_locally(call, rc) for rc in call.rows]
        todo = [rc for rc, outcome in zip(call.rows, outcomes, strict=True) if outcome is None]
        if not todo:
            return [o for o in outcomes if o is not None]
        if call.op in ("create", "update"):

            def create(rows: Sequence[RowChange]) -> _Refusal | None:
                body = {
                    "contacts": [self._contact(call, rc) for rc in rows],
                    "list_name": self._list,
                    "do_not_overwrite": False,  # "Add contacts": overwrite an existing number
                }
                return self._send(CREATE, "POST", body)

            sent = self._deliver(CREATE, todo, create)
        else:

            def delete(rows: Sequence[RowChange]) -> _Refusal | None:
                numbers = [rc.row.key for rc in rows]  # "Delete contacts": only from this list
                return self._send(
                    DELETE, "DELETE", {"phone_numbers": numbers, "list_name": self._list}
                )

            sent = self._deliver(DELETE, todo, delete)
        answers = iter(sent)
        return [o if o is not None else next(answers) for o in outcomes]

    def _deliver(self, method: str, rows: Sequence[RowChange], send: Send) -> list[RowOutcome]:
        """Send ``rows`` in calls of the allowed size; split refused calls until each refused
        row stands alone (at most ``SPLIT_CALLS`` extra calls), and read one outcome per row.

        A refusal is about the rows only if some part of the batch went through: when every
        part of a batch of several rows is refused with one and the same answer, the answer is
        about the call (a bad list name, say), and it fails the cycle instead of holding rows.
        """
        limit = MAX_DELETE if method == DELETE else self._row_cap
        queue = deque(_chunks(list(range(len(rows))), limit))
        verdicts: dict[int, RowOutcome] = {}
        budget, accepted = SPLIT_CALLS, False
        answers: set[tuple[str, str]] = set()
        while queue:
            part = queue.popleft()
            refusal = send([rows[i] for i in part])
            if refusal is None:
                accepted = True
                verdicts.update({i: RowOutcome(rows[i].row.key, True) for i in part})
                continue
            answers.add((refusal.code, refusal.message))
            code = refusal.code or f"http_{refusal.status}"
            if len(part) == 1:
                verdicts[part[0]] = RowOutcome(rows[part[0]].row.key, False, code, refusal.message)
                continue
            if budget < 2:
                message = f"not sent: {method} refused its batch ({refusal.message})"
                verdicts.update(
                    {i: RowOutcome(rows[i].row.key, False, code, message, True) for i in part}
                )
                continue
            budget -= 2
            half = (len(part) + 1) // 2
            if refusal.too_large and method == CREATE and half < self._row_cap:
                log.warning(
                    "%s: %s refused %d contacts as too many; sending at most %d per call from "
                    "now on (set max_rows_per_call = %d for target %r)",
                    *(self.name, method, len(part), half, half, self.target.name),
                )
                self._row_cap = half
                queue = deque(small for p in queue for small in _chunks(p, half))
            queue.extendleft([part[half:], part[:half]])
        if not accepted and len(rows) > 1 and len(answers) == 1:
            code, message = answers.pop()
            raise ProviderError(
                f"{self.name} {method}: every part of a batch of {len(rows)} was refused with "
                f"the same answer, so it concerns the call, not its rows: {message} ({code})",
                code=code or "refused",
            )
        return [verdicts[i] for i in range(len(rows))]


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


# ---------------------------------------------------------------------- the spec


def _login_required(schema: dict[str, Any]) -> None:
    """What ``OctopushSettings._needs_login`` checks, said in the JSON Schema too."""
    schema["required"] = ["api_login"]
    schema["properties"]["api_login"]["minLength"] = 1


class OctopushSettings(ProviderSettings):
    """Octopush's own keys of a ``[[target]]`` table."""

    model_config = ConfigDict(json_schema_extra=_login_required)

    api_login: str | None = Field(None, description="Octopush: the account login (api-login).")
    create_missing_list: CreateMissingList = False
    max_rows_per_call: MaxRowsPerCall = None

    @model_validator(mode="after")
    def _needs_login(self) -> OctopushSettings:
        if not self.api_login:
            raise ValueError("provider octopush needs api_login (the account's login)")
        return self


SPEC = ProviderSpec(
    name="octopush",
    title="Octopush",
    default_url="https://api.octopush.com/v1/public",
    capabilities=CAPABILITIES,
    settings=OctopushSettings,
    adapter=OctopushProvider,
    emulator="syncd.emulators.octopush:make_emulator",
    starter=Starter(
        "phone",
        "OCTOPUSH_API_KEY",
        "the Octopush API key",
        "the list's id at Octopush",
        lines=(
            (f'api_login = "{PLACEHOLDER}"', "the account's login (api-login)"),
            ("create_missing_list = false", "true: create the list when it is missing"),
        ),
    ),
)
