"""sms.by API v2: a push-only adapter writing one mailing list through ``importContacts``.

Wire facts, cited by the name of their row in shared/providers/smsby.md ("Import", "Import
limits", ...) and the importContacts page (shared/providers/seeds/000_*, cited as "seed 000").

- Every call is a form-encoded POST to ``{api_root}/{method}``, the API key as ``token`` ("Auth").
  The docs mark every parameter as a query parameter ("Import"); syncd sends them in the body
  instead: a key never goes into a URL (DESIGN rule 7), 500 rows do not fit in one, and the
  server is a PHP service of Unisender's family that reads both [INFERRED; the emulator reads
  both, checklist 19]. Arrays use PHP bracket syntax, as in seed 000.
- Phones travel as digits without ``+`` (``375291111111``, "Phone format").
- Capabilities: no export, no delete, no opt-out, no tags ("Export / delete contacts": nothing
  documented). The engine therefore takes the remote side as the base (``export=False``) and
  counts local deletions as ``unsupported``; this adapter refuses to send a contact that opted
  out locally, because an import would make it an ordinary, active subscriber (DESIGN rule 3).
- Lists: ``list_id`` is the list's number. sms.by documents no call that finds a list by name
  (the list-lists method is [UNCONFIRMED]), so ``create_missing_list`` works once, by name: see
  ``prepare``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from syncd.config import ProviderSettings, TargetConfig
from syncd.core.projection import is_opted_out
from syncd.errors import AuthError, ProviderError, TryLater
from syncd.providers.base import (
    Capabilities,
    PushCall,
    RemoteContact,
    RowChange,
    RowOutcome,
)
from syncd.providers.http import (
    HttpProvider,
    answer_count,
    answer_object,
    key_fingerprint,
)
from syncd.providers.spec import CreateMissingList, ProviderSpec, Starter

log = logging.getLogger(__name__)

IMPORT = "importContacts"
CREATE_LIST = "createSubscriberList"
MAX_ROWS = 500  # "Import limits": at most 500 contacts per call
# "Import limits" / seed 000: at most 30 custom fields, and phone or email is one of them (the
# example's field_names[0] is `phone`), so the key column counts against the 30.
MAX_FIELD_NAMES = 30
RATE_LIMITED = "Превышен лимит запросов"  # "Rate limits": the documented limit answer

# Lists this process created, by (key fingerprint, api root, name): never create one twice.
_created: dict[tuple[str, str, str], str] = {}
_created_lock = threading.Lock()

Form = dict[str, str | Sequence[str]]


class SmsbyProvider(HttpProvider):
    """An sms.by account plus one mailing list; push-only."""

    name = "smsby"
    capabilities = Capabilities(
        rows_per_call=MAX_ROWS,
        fields_per_call=MAX_FIELD_NAMES - 1,  # every call repeats the key column
        delete=False,  # "Export / delete contacts": no documented delete
        exclude=False,
        tags=False,
        export=False,  # "Export / delete contacts": no documented export
        statuses=frozenset({"active"}),  # no documented way to push an opt-out
        # "Import semantics" [CONFIRMED], seed 000: an existing contact's "parameters, which are
        # transferred in field_names, will be updated" -- the others stay: an update sends only
        # the fields that changed since the base.
        partial_update=True,
    )

    def configure(self, target: TargetConfig) -> None:
        self._key = target.key  # "phone" or "email": both are upsert keys ("Import semantics")
        self._token = target.api_key.get_secret_value()
        self._create_missing_list = SmsbySettings.of(target).create_missing_list
        # rate limits of the contact API are [UNCONFIRMED]: the target's setting applies

    # ------------------------------------------------------------------ the envelope

    def _call(self, method: str, params: Form, *, write: bool) -> Any:
        """One API call; returns the envelope's ``result``."""
        form: Form = {"token": self._token, **params}
        request = self._http.client.build_request(
            "POST", f"{self.target.api_root}/{method}", data=form
        )
        return self._http.send(
            method, request, write=write, parse=lambda r: self._read_envelope(method, r)
        )

    def _read_envelope(self, method: str, response: httpx.Response) -> Any:
        where = f"{self.name} {method}"
        status = response.status_code
        if status in (401, 403):  # "Errors": a client reads 403 as "Access Denied"
            raise AuthError(
                f"{where}: access denied (HTTP {status}): check the token (api_key) of target "
                f"{self.target.name!r}",
                code="access_denied",
            )
        body = answer_object(response)
        if body is None:
            snippet = self._http.snippet(response)
            raise ProviderError(
                f"{where}: the answer is not a JSON object (HTTP {status}): {snippet!r}",
                code="bad_answer" if status < 400 else f"http_{status}",
            )
        # "Errors": v1 answers {"error": "..."}; the documented limit answer is
        # {"status": "error", "message": "..."}. Success is {"status": "OK", "result": ...}.
        word = str(body.get("status") or "").strip()
        text = body.get("error") or (body.get("message") if word.lower() == "error" else None)
        if text or status >= 400 or (word and word.upper() != "OK"):
            message = self._http.scrub(str(text or f"status {word or status}"))
            if RATE_LIMITED in message:
                raise TryLater(message)
            raise ProviderError(f"{where}: {message}", code="api_error")
        if "result" not in body:
            raise ProviderError(f"{where}: the answer has no `result`", code="bad_answer")
        return body["result"]

    # ------------------------------------------------------------------ prepare

    def prepare(self, fields: Sequence[str], *, create_missing: bool) -> None:
        if self._key in fields:
            raise ProviderError(
                f"target {self.target.name!r}: `{self._key}` is the key and goes first in every "
                f"call already; remove it from fields",
                code="invalid_field_name",
            )
        if self.target.list_id.isdigit():
            return  # no documented call can check that the list exists; an import will say
        name = self.target.list_id
        if not self._create_missing_list:
            raise ProviderError(
                f"target {self.target.name!r}: an sms.by list_id is the list's number, not "
                f"{name!r} (or set create_missing_list = true to create a list of that name)",
                code="list_not_found",
            )
        if not create_missing:
            raise ProviderError(
                f"target {self.target.name!r}: list {name!r} would be created first",
                code="list_not_found",
            )
        list_id = self._create_list(name)
        # The new number cannot be found again by name on the next start, and pushing into it
        # now would leave a base that a restart (a new list) no longer matches: stop here.
        raise ProviderError(
            f'created sms.by list {name!r} with list_id {list_id}: set list_id = "{list_id}" '
            f"in target {self.target.name!r}; nothing is pushed until then",
            code="list_created",
        )

    def _create_list(self, name: str) -> str:
        marker = (key_fingerprint(self._token), self.target.api_root, name)
        with _created_lock:
            if marker in _created:
                return _created[marker]
            result = self._call(CREATE_LIST, {"name": name}, write=True)  # "Create list"
            list_id = result.get("list_id") if isinstance(result, dict) else None
            if list_id is None or not str(list_id).isdigit():
                raise ProviderError(
                    f"{self.name} {CREATE_LIST}: the answer has no list_id", code="bad_answer"
                )
            _created[marker] = str(list_id)
            log.warning("%s: created list %r with list_id %s", self.name, name, list_id)
            return str(list_id)

    # ------------------------------------------------------------------ push

    def method_name(self, call: PushCall) -> str:
        return IMPORT

    def export(self) -> Iterator[RemoteContact]:
        raise NotImplementedError(
            "sms.by documents no export; with capabilities.export False the engine takes the "
            "remote side as the base and never calls this"
        )

    def _header(self, call: PushCall) -> list[str]:
        return [self._key, *call.columns]  # seed 000: phone or email among the field names

    def _cells(self, header: Sequence[str], rc: RowChange) -> list[str]:
        values = rc.row.field_map
        cells = [rc.row.key if name == self._key else values.get(name, "") for name in header]
        # "Phone format": digits without '+', for the key and a mapped `phone` column alike
        return [
            _wire_phone(c) if name == "phone" else c for name, c in zip(header, cells, strict=True)
        ]

    def wire_rows(self, call: PushCall, limit: int) -> list[dict[str, str]]:
        header = self._header(call)
        return [dict(zip(header, self._cells(header, rc), strict=True)) for rc in call.rows[:limit]]

    def _refuse_locally(self, call: PushCall, rc: RowChange) -> RowOutcome | None:
        key = rc.row.key
        if call.op not in ("create", "update"):
            return RowOutcome(
                key, False, "unsupported", "sms.by documents no way to remove a contact", False
            )
        if not key:
            return RowOutcome(key, False, "empty_key", "the row has no key", False)
        if is_opted_out(rc.row.status):
            return RowOutcome(
                key,
                False,
                "opt_out_unsupported",
                "opted out locally, and sms.by documents no way to record an opt-out: not sent, "
                "since an import would make it an active subscriber",
                False,
            )
        return None

    def push(self, call: PushCall) -> list[RowOutcome]:
        outcomes: list[RowOutcome | None] = [self._refuse_locally(call, rc) for rc in call.rows]
        sent = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if not sent:
            return [o for o in outcomes if o is not None]

        header = self._header(call)
        params: Form = {"list_id": self.target.list_id}
        for j, name in enumerate(header):  # seed 000: indexed field_names[j] and data[i][j]
            params[f"field_names[{j}]"] = name
        for i, position in enumerate(sent):
            for j, cell in enumerate(self._cells(header, call.rows[position])):
                params[f"data[{i}][{j}]"] = cell

        result = self._call(IMPORT, params, write=True)
        verdicts = self._read_import_answer(result, len(sent))
        for i, position in enumerate(sent):
            key = call.rows[position].row.key
            code, message, retryable = verdicts.get(i, ("", "", False))
            outcomes[position] = RowOutcome(key, not code, code, message, retryable)
        return [o for o in outcomes if o is not None]

    def _read_import_answer(self, result: Any, rows: int) -> dict[int, tuple[str, str, bool]]:
        """The rows an importContacts ``result`` did not confirm: {index: (code, message, retry)}.

        "Import result" / seed 000: ``inserted``, ``updated``, ``invalid`` count rows and ``log``
        names each invalid row by its index in ``data`` with an ``error_message``. Rows it does
        not name went in. ``updated`` counts rows "changed", so a row resent unchanged may count
        nowhere: the counters may add up to fewer rows than were sent, never to more. The log
        holds "errors and warnings": when it names more rows than ``invalid`` counts, which are
        the errors is unknowable, and none of the named rows is taken as confirmed.
        """
        where = f"{self.name} {IMPORT}"
        if not isinstance(result, dict):
            raise ProviderError(f"{where}: `result` is not an object", code="bad_answer")
        counts = [answer_count(result, name) for name in ("inserted", "updated", "invalid")]
        if any(n is None for n in counts):
            raise ProviderError(
                f"{where}: the answer lacks inserted, updated or invalid", code="bad_answer"
            )
        inserted, updated, invalid = (n or 0 for n in counts)
        if inserted + updated + invalid > rows:
            raise ProviderError(
                f"{where}: the answer counts {inserted + updated + invalid} rows but {rows} were "
                "sent; no row can be taken as confirmed",
                code="bad_answer",
            )
        entries = result.get("log") or []
        if not isinstance(entries, list):
            raise ProviderError(f"{where}: `log` is not a list", code="bad_answer")
        named: dict[int, list[str]] = {}
        for entry in entries:
            entry = entry if isinstance(entry, dict) else {"entry": entry}
            index = answer_count(entry, "index")
            if index is None or index >= rows:
                raise ProviderError(
                    f"{where}: a `log` entry names no row of the {rows} sent: {entry!r}",
                    code="bad_answer",
                )
            named.setdefault(index, []).append(str(entry.get("error_message") or "").strip())
        if len(named) < invalid:
            raise ProviderError(
                f"{where}: the answer counts {invalid} invalid rows but names {len(named)}; "
                "no row can be taken as confirmed",
                code="bad_answer",
            )
        unsure = len(named) > invalid  # warnings among them: resend every named row
        return {
            index: (
                "invalid",
                "; ".join(m for m in messages if m) or "invalid row",
                unsure,
            )
            for index, messages in named.items()
        }


def _wire_phone(value: str) -> str:
    return value.strip().removeprefix("+")


# ---------------------------------------------------------------------- the spec


class SmsbySettings(ProviderSettings):
    """sms.by's own keys of a ``[[target]]`` table."""

    create_missing_list: CreateMissingList = False


SPEC = ProviderSpec(
    name="smsby",
    title="sms.by",
    default_url="https://app.sms.by/api/v2",
    capabilities=SmsbyProvider.capabilities,
    settings=SmsbySettings,
    adapter=SmsbyProvider,
    emulator="syncd.emulators.smsby:make_emulator",
    starter=Starter(
        "phone",
        "SMSBY_API_KEY",
        "the sms.by API token",
        "the list's id at sms.by",
        lines=(("create_missing_list = false", "true: create the list when it is missing"),),
    ),
)
