"""Unisender and Selzy: one API under two host names.

Wire facts, cited below by section: shared/providers/unisender-selzy.md.

Every call is a form-encoded POST to ``{api_root}/{method}`` with ``format=json`` and the API key
in the body (§1.1: POST keeps the key out of URLs and proxy logs; DESIGN rule 7). Arrays use PHP
bracket syntax (§1.1). Writes go through ``importContacts`` (§1.4); reads through the async
``exportContacts`` task and its CSV file, or the legacy paged ``exportContacts`` (§1.5).
An import refused whole for one contact (§1.2 untyped errors) is split in halves until that row
stands alone (DESIGN §8, "Partial batches"). An import of one row refused that way is that row's
refusal when the answer names its key (§1.2's examples do: "Contacts X and Y already exist ...");
otherwise nothing tells a bad row from a bad call, and the call fails.

HTTP 4xx: §1.2 documents errors as HTTP 200 with an error envelope, so a 4xx is the server
stepping outside its contract, and syncd reads it by what it says rather than by its status:

- 429 is a rate limit: retried by the HTTP client like a 5xx (``syncd.providers.http``);
- a 4xx carrying a §1.2 envelope whose ``code`` is a rate-limit or ``retry_later`` code is
  retried, and one with an auth code (``invalid_api_key``, ``access_denied``) is an
  ``AuthError``, exactly as the same envelope under HTTP 200;
- an importContacts answered 400 or 422 with a §1.2 envelope whose ``code`` is one of the codes
  a refused contact arrives with (``unspecified``, ``invalid_arg``; §1.2 "Frequent untyped
  errors") is a refused batch, as under HTTP 200: the import is split until the row at fault
  stands alone, and that row is rejected with the provider's message. 400 (Bad Request) and 422
  (Unprocessable Entity) are the statuses HTTP gives to "this request's content is wrong"; that
  Unisender/Selzy use them for a row of an import is [ASSUMED] (the docs are silent, §1.2 says
  200). A refusal about the call itself (an unknown column) reaches both halves word for word
  and still fails the cycle (``_isolate``);
- anything else (401/403 and every other 4xx, a body that is not an envelope) fails the call
  with ``http_<status>``: nothing in it points at one row.

The legacy paged export reads a page as one JSON answer, so a page cut short (not JSON, not an
object, no ``result``) is an incomplete export (``ExportIncomplete``, DESIGN rule 1) like a cut
export file, never a plain failure of the cycle.
"""

from __future__ import annotations

import codecs
import csv
import html
import itertools
import logging
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, NoReturn

import httpx

from syncd.config import TargetConfig
from syncd.core.contacts import normalise_email, normalise_phone
from syncd.core.projection import Projection, is_opted_out
from syncd.errors import AuthError, ExportIncomplete, ProviderError, TryLater
from syncd.providers.base import (
    Capabilities,
    ContactRead,
    PushCall,
    RemoteContact,
    RowChange,
    RowOutcome,
    fingerprinter,
)
from syncd.providers.http import (
    FormTable,
    FormValue,
    HttpProvider,
    NotJson,
    answer_count,
    answer_json,
    form_body,
)
from syncd.providers.spec import NoSettings, ProviderSpec, Starter

#: reads one cell of an importContacts row from the row and its fields
_Cell = Callable[[Projection, dict[str, str]], str]


def _field_cell(name: str) -> _Cell:
    return lambda _row, values: values.get(name, "")


log = logging.getLogger(__name__)

IMPORT = "importContacts"
EXPORT_ASYNC = "async/exportContacts"
TASK_RESULT = "async/getTaskResult"
EXPORT_PAGED = "exportContacts"
DOWNLOAD = "download"
READ_ONE = "getContact"

PAGE_SIZE = 1000  # §1.5: the legacy exportContacts returns at most 1000 records per call
MAX_TAGS = 10  # §1.4: at most 10 tags per contact

# §1.2: codes that mean "temporary, come back later"; the rest are final.
LATER_CODES = frozenset(
    {"retry_later", "api_call_limit_exceeded_for_api_key", "api_call_limit_exceeded_for_ip"}
)
AUTH_CODES = frozenset({"invalid_api_key", "access_denied"})
# §1.2: the codes an error about one contact of an import arrives with ("Contacts X and Y already
# exist but owned by different subscribers" is `unspecified`; a bad value is `invalid_arg`).
_ROW_REFUSAL_CODES = frozenset({"unspecified", "invalid_arg"})
# HTTP statuses under which such an envelope still reads as a refused batch (module docstring).
_ROW_REFUSAL_STATUSES = frozenset({400, 422})
SPLIT_CALLS = 64  # extra calls one push may spend isolating the rows of a refused import

# §1.4 / §1.5: system column names. A mapped field with one of these names is not a user field.
_SYSTEM_SUFFIXES = (
    "",
    "_status",
    "_availability",
    "_list_ids",
    "_subscribe_times",
    "_unsubscribed_list_ids",
    "_excluded_list_ids",
    "_add_time",
    "_request_ip",
    "_confirm_time",
    "_confirm_ip",
    "_last_delivered_at",
    "_last_read_at",
    "_last_clicked_at",
)
SYSTEM_FIELDS = frozenset(
    {"id", "delete", "tags"} | {f"{k}{s}" for k in ("email", "phone") for s in _SYSTEM_SUFFIXES}
)
# §1.6 createField: a letter first, then Latin letters, digits, '_' or '-'.
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")

# §1.7: every status that still means "may be mailed on this list" as far as consent goes.
# `inactive` is disabled in the UI by the account owner, not an opt-out by the person.
_ACTIVE_STATUSES = frozenset({"", "new", "invited", "active", "inactive", "activation_requested"})
_OPTED_OUT_STATUSES = frozenset({"unsubscribed", "blocked"})

# §1.5: async task states before completion; anything else is a failure.
_PENDING_TASK = frozenset({"new", "processing"})
FIRST_POLL_WAIT = 0.25  # seconds before the second poll of an export task; doubling after

_GZIP_MAGIC = b"\x1f\x8b"

# A `w_` log entry whose message says the row did not go in (seed 002, role-based addresses:
# "Error (email was ignored)").
_SAYS_IGNORED = re.compile(r"\b(error|ignored|not (been )?(imported|added))\b", re.IGNORECASE)


class UnisenderProvider(HttpProvider):
    """A Unisender or Selzy account plus one list (``target.provider`` picks the name)."""

    capabilities = Capabilities(
        rows_per_call=500,  # §1.4: at most 500 contacts per importContacts call
        fields_per_call=50,  # §1.4: at most 50 user fields
        delete=True,  # §1.4: the `delete` column
        exclude=True,  # §1.4: `*_excluded_list_ids`
        tags=True,
        max_tags=MAX_TAGS,
        export=True,  # §1.5
        reference=True,  # §1.6 createField, §1.5 exports every requested user field
        statuses=frozenset({"active", "unsubscribed"}),
        # §1.4: `*_unsubscribed_list_ids` keeps a per-list unsubscribe while `*_status`, the
        # address as a whole, stays e.g. active (seed 001); the export gives both (§1.5)
        list_consent=True,
        # §1.4: an import row holds the columns named in `field_names`, and an existing
        # contact keeps the fields a call does not name. sms.by's page for the same import
        # says so outright (smsby.md "Import semantics", seed 000: the parameters "transferred
        # in field_names will be updated"); here it is [INFERRED] from that, and DESIGN §4's
        # column split (each call repeating the key) assumes it. So an update sends only what
        # changed.
        partial_update=True,
        # §1.6 getContact: one contact by email, its status, lists and fields (no tags)
        read_one=True,
        # "Event notifications (webhooks)": setHook / listHooks / removeHook
        hooks="api",
    )

    def configure(self, target: TargetConfig) -> None:
        self.name = target.provider
        self.skipped_rows = 0  # export rows whose key could not be normalised (last export)
        self._header_index: dict[str, int] = {}  # the export's columns, from its header row
        self._key = target.key  # "email" or "phone": the column family every call uses
        self._list_id = target.list_id
        self._api_key = target.api_key.get_secret_value()

    def method_limits(self, target: TargetConfig) -> Mapping[str, int]:
        # §1.3: async exportContacts has its own, much lower limit.
        return {EXPORT_ASYNC: target.export_rate_limit_per_minute}

    # ------------------------------------------------------------------ the envelope

    def _call(self, method: str, params: Mapping[str, FormValue], *, write: bool) -> Any:
        """One API call; returns the envelope's ``result``.

        §1.1: POST with every parameter in the body (mixing query and body breaks the server),
        `format=json` and `api_key` there too.
        """
        form: dict[str, FormValue] = {"format": "json", "api_key": self._api_key}
        form.update(params)
        # ``send`` hands 4xx answers (but 429) to the parser too: see the module docstring.
        request = self._http.client.build_request(
            "POST",
            f"{self.target.api_root}/{method}",
            content=form_body(form),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return self._http.send(
            method,
            request,
            write=write,
            parse=lambda response: self._read_envelope(method, response),
        )

    def _read_envelope(self, method: str, response: httpx.Response) -> Any:
        where = f"{self.name} {method}"
        if response.is_client_error:
            self._read_client_error(method, response)
        try:
            body = answer_json(response)
        except NotJson as exc:
            snippet = self._http.scrub(response.content[:200].decode("utf-8", "replace"))
            raise ProviderError(
                f"{where}: the answer is not JSON ({exc.reason}; HTTP {response.status_code}, "
                f"{response.headers.get('content-type', 'no content type')}): {snippet!r}",
                code="bad_answer",
            ) from None
        if not isinstance(body, dict):
            raise ProviderError(f"{where}: the answer is not a JSON object", code="bad_answer")
        # §1.2: an error is HTTP 200 with `error` (HTML-escaped text) and `code`; `result` is
        # then meaningless (it is "" on real errors).
        if body.get("error") or body.get("code"):
            code, text = self._error_of(body)
            self._raise_typed(where, code, text)
            if code in _ROW_REFUSAL_CODES:
                raise _Refused(f"{where}: {text or 'error'} ({code})", code=code, text=text)
            raise ProviderError(f"{where}: {text or 'error'} ({code})", code=code)
        if "result" not in body:
            raise ProviderError(f"{where}: the answer has no `result`", code="bad_answer")
        warnings = body.get("warnings") or []
        # §1.2: success may carry warnings, e.g. [{"warning": "probably not a mobile phone"}];
        # they are only logged, so any other shape is logged as it is.
        for warning in warnings if isinstance(warnings, list) else [warnings]:
            log.info("%s: warning: %s", where, self._http.scrub(str(warning)))
        return body["result"]

    def _error_of(self, body: Mapping[str, Any]) -> tuple[str, str]:
        """§1.2: the envelope's ``code`` and its HTML-escaped ``error`` text, scrubbed."""
        code = self._http.scrub(str(body.get("code") or "unspecified"))
        return code, self._http.scrub(html.unescape(str(body.get("error") or "")))

    def _raise_typed(self, where: str, code: str, text: str) -> None:
        """The §1.2 codes that mean the same under any HTTP status: later, or the key."""
        if code in LATER_CODES:
            raise TryLater(f"{code}: {text}")
        if code in AUTH_CODES:
            raise AuthError(
                f"{where}: {text or code} ({code}): check the API key of target "
                f"{self.target.name!r} and that API access is enabled for the account",
                code=code,
            )

    def _read_client_error(self, method: str, response: httpx.Response) -> NoReturn:
        """A 4xx answer (never 429, which is retried before this): raises what it means, by
        the rules of the module docstring."""
        where = f"{self.name} {method}"
        status = response.status_code
        try:
            body = answer_json(response)
        except NotJson:
            body = None
        if isinstance(body, dict) and (body.get("error") or body.get("code")):
            code, text = self._error_of(body)
            self._raise_typed(where, code, text)
            if method == IMPORT and status in _ROW_REFUSAL_STATUSES and code in _ROW_REFUSAL_CODES:
                message = f"{where}: {text or 'error'} ({code}, HTTP {status})"
                raise _Refused(message, code=code, text=text)
            raise ProviderError(
                f"{where}: unexpected HTTP {status}: {text or 'error'} ({code})",
                code=f"http_{status}",
            )
        raise ProviderError(f"{where}: unexpected HTTP {status}", code=f"http_{status}")

    # ------------------------------------------------------------------ prepare

    def prepare(self, fields: Sequence[str], *, create_missing: bool) -> None:
        lists = self._call("getLists", {}, write=False)  # §1.6
        if not isinstance(lists, list):
            raise ProviderError(f"{self.name} getLists: `result` is not a list", code="bad_answer")
        ids = {str(item.get("id")) for item in lists if isinstance(item, dict)}
        if self._list_id not in ids:
            raise ProviderError(
                f"list {self._list_id} not found at {self.name}: create it or fix list_id "
                f"(target {self.target.name!r})",
                code="list_not_found",
            )

        known = self._call("getFields", {}, write=False)  # §1.6
        if not isinstance(known, list):
            raise ProviderError(f"{self.name} getFields: `result` is not a list", code="bad_answer")
        names = {str(item.get("name")) for item in known if isinstance(item, dict)}
        missing = [f for f in dict.fromkeys(fields) if f not in SYSTEM_FIELDS and f not in names]
        if not missing:
            return
        if not create_missing:
            raise ProviderError(
                f"fields missing at {self.name} for target {self.target.name!r}: "
                f"{', '.join(missing)}: create them there or set create_missing_fields = true",
                code="fields_missing",
            )
        invalid = [f for f in missing if not _FIELD_NAME.match(f)]
        if invalid:
            # §1.6 createField: the provider would refuse these names; say why up front.
            raise ProviderError(
                f"cannot create fields {', '.join(invalid)} at {self.name}: a field name starts "
                "with a Latin letter and holds only Latin letters, digits, '_' and '-'",
                code="invalid_field_name",
            )
        for name in missing:
            # §1.6: the type only affects the provider's UI; values are stored as text.
            self._call("createField", {"name": name, "type": "string"}, write=True)
            log.info("%s: created field %s", self.name, name)

    # ------------------------------------------------------------------ push

    def method_name(self, call: PushCall) -> str:
        return IMPORT

    def _header(self, call: PushCall) -> list[str]:
        """The `field_names` of one call (§1.4 system names, then the call's custom fields)."""
        k = self._key
        status_columns = [f"{k}_status", f"{k}_unsubscribed_list_ids"] if call.with_status else []
        tags_column = ["tags"] if call.with_tags else []
        if call.op == "create":
            return [k, f"{k}_list_ids", *tags_column, *status_columns, *call.columns]
        if call.op == "update":
            # No `*_list_ids`: the contact is on the list already, and with overwrite_lists=0
            # the column could only add lists, never help.
            return [k, *tags_column, *status_columns, *call.columns]
        if call.op == "delete":
            return [k, "delete"]  # §1.4: `delete`=1 deletes the row's contact
        if call.op == "exclude":
            return [k, f"{k}_excluded_list_ids"]  # §1.4: leaves the list, not unsubscribed
        raise ValueError(f"unknown operation {call.op!r}")

    def _cells(self, header: Sequence[str], rc: RowChange) -> list[str]:
        row = rc.row
        values = row.field_map
        return [read(row, values) for read in self._cell_readers(header)]

    def _cell_readers(self, header: Sequence[str]) -> list[_Cell]:
        """How each column's cell is read from a row and its fields, chosen once per call rather
        than per cell (a call has up to 500 rows)."""
        k = self._key
        list_id = self._list_id
        readers: list[_Cell] = []
        for column in header:
            if column == k:
                readers.append(lambda row, _values: row.key)
            elif column in (f"{k}_list_ids", f"{k}_excluded_list_ids"):
                readers.append(lambda _row, _values: list_id)
            elif column == "delete":
                readers.append(lambda _row, _values: "1")
            elif column == "tags":
                # §1.1: a comma list inside the cell; sorted so equal sets send equal text.
                readers.append(lambda row, _values: ",".join(sorted(row.tags)))
            elif column == f"{k}_status":
                # DESIGN rule 3: a status is only ever pushed as an opt-out. An active row that
                # shares a call with opt-outs gets "" (not provided), never "active"; so does a
                # row that leaves this list only: the address as a whole stays as it is.
                readers.append(
                    lambda row, _values: "unsubscribed" if is_opted_out(row.status) else ""
                )
            elif column == f"{k}_unsubscribed_list_ids":
                # §1.4: the per-list unsubscribe, so the list shows it even where the account
                # status cannot change (only active/inactive addresses change status).
                readers.append(lambda row, _values: "" if row.mailable else list_id)
            else:
                # "" clears the field (§1.4 upsert)
                readers.append(_field_cell(column))
        return readers

    def _refuse_locally(self, call: PushCall, rc: RowChange) -> RowOutcome | None:
        """Rows the provider would misread: rejected here so they cannot spoil the others."""
        if not rc.row.key:
            return RowOutcome(rc.row.key, False, "empty_key", "the row has no key", False)
        if call.with_tags and call.op in ("create", "update"):
            if any("," in tag for tag in rc.row.tags):
                # §1.1: tags travel comma-joined, so a comma would split one tag into two.
                return RowOutcome(rc.row.key, False, "invalid_tag", "a tag contains a comma", False)
            if len(rc.row.tags) > MAX_TAGS:
                return RowOutcome(
                    rc.row.key,
                    False,
                    "too_many_tags",
                    f"{len(rc.row.tags)} tags; {self.name} keeps at most {MAX_TAGS}",
                    False,
                )
        return None

    def wire_rows(self, call: PushCall, limit: int) -> list[dict[str, str]]:
        header = self._header(call)
        return [dict(zip(header, self._cells(header, rc), strict=True)) for rc in call.rows[:limit]]

    def push(self, call: PushCall) -> list[RowOutcome]:
        outcomes: list[RowOutcome | None] = [self._refuse_locally(call, rc) for rc in call.rows]
        sent = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if sent:
            try:
                verdicts = self._import(call, sent)
            except _Refused as refusal:
                if len(sent) == 1 and not refusal.names(call.rows[sent[0]].row.key):
                    # One row alone, and the answer does not name it: nothing tells a bad row
                    # from a bad call; fail the call. One that names the row is about the row.
                    raise
                verdicts = self._isolate(call, sent, refusal, [SPLIT_CALLS])
            for position, outcome in verdicts.items():
                outcomes[position] = outcome
        return [o for o in outcomes if o is not None]

    def _import(self, call: PushCall, positions: Sequence[int]) -> dict[int, RowOutcome]:
        """One importContacts call for these rows of ``call``; one outcome per position."""
        header = self._header(call)
        params: dict[str, FormValue] = {}
        # §1.1/§1.4: indexed PHP arrays, every cell present (a missing cell means "not given").
        for j, name in enumerate(header):
            params[f"field_names[{j}]"] = name
        readers = self._cell_readers(header)
        cells: list[str] = []
        rows = call.rows
        for position in positions:
            row = rows[position].row
            values = row.field_map
            cells += [read(row, values) for read in readers]
        params["data"] = FormTable(len(header), cells)  # data[i][j]: row i's cell j
        # §1.4: both flags default to 0 (add only); send 1 only when the call needs a removal.
        if call.overwrite_tags:
            params["overwrite_tags"] = "1"
        if call.overwrite_lists:
            params["overwrite_lists"] = "1"

        result = self._call(IMPORT, params, write=True)
        verdicts = self._read_import_answer(result, len(positions))
        if not verdicts:  # the log names no row: every one was applied
            return {position: RowOutcome(rows[position].row.key, True) for position in positions}
        outcomes: dict[int, RowOutcome] = {}
        for i, position in enumerate(positions):
            ok, code, message = verdicts.get(i, (True, "", ""))
            # §1.2 `retry_later` and the rate-limit codes are temporary wherever they appear:
            # such a row is sent again next cycle instead of waiting for a local change.
            later = not ok and code in LATER_CODES
            outcomes[position] = RowOutcome(call.rows[position].row.key, ok, code, message, later)
        return outcomes

    def _isolate(
        self, call: PushCall, part: Sequence[int], refusal: _Refused, budget: list[int]
    ) -> dict[int, RowOutcome]:
        """The provider refused the whole import of ``part`` (§1.2: an untyped error can name
        one contact, "Contacts X and Y already exist but owned by different subscribers").
        Send each half again until the refused rows stand alone (DESIGN §8, "Partial
        batches"), spending at most ``budget[0]`` extra calls; rows the budget leaves unsent
        are retried next cycle.

        An answer is about the call, not a row, when both halves get it word for word (a row
        sits in one half only): that fails the cycle instead of holding every row.
        """
        keys = [call.rows[i].row.key for i in part]
        if len(part) == 1:
            return {
                part[0]: RowOutcome(keys[0], False, refusal.code, refusal.text, refusal.retryable)
            }
        if budget[0] < 2:
            message = f"not sent: {IMPORT} refused its batch ({refusal.text})"
            return {
                i: RowOutcome(key, False, refusal.code, message, True)
                for i, key in zip(part, keys, strict=True)
            }
        budget[0] -= 2
        half = (len(part) + 1) // 2
        verdicts: dict[int, RowOutcome] = {}
        refused: list[tuple[Sequence[int], _Refused]] = []
        for piece in (part[:half], part[half:]):
            try:
                verdicts.update(self._import(call, piece))
            except _Refused as exc:
                refused.append((piece, exc))
        if len(refused) == 2 and all(r.answer == refusal.answer for _, r in refused):
            raise ProviderError(
                f"{self.name} {IMPORT}: both halves of a batch of {len(part)} were refused with "
                f"the answer of the whole, so it concerns the call, not a row: {refusal}",
                code=refusal.code,
            )
        for piece, piece_refusal in refused:
            verdicts.update(self._isolate(call, piece, piece_refusal, budget))
        return verdicts

    def _read_import_answer(self, result: Any, rows: int) -> dict[int, tuple[bool, str, str]]:
        """Read an importContacts `result` back to rows: {index: (ok, code, message)}.

        §1.4: `total` counts the rows in `data`; `log[]` holds errors and warnings by 0-based
        `index`; rows it does not name were applied. An answer that does not add up confirms
        nothing (DESIGN rule 4): better to resend an idempotent upsert than to advance a base
        for a row the provider dropped.
        """
        where = f"{self.name} {IMPORT}"
        if not isinstance(result, dict):
            raise ProviderError(f"{where}: `result` is not an object", code="bad_answer")
        total = answer_count(result, "total")
        if total is None:
            raise ProviderError(f"{where}: the answer has no `total`", code="bad_answer")
        if total != rows:
            raise ProviderError(
                f"{where}: the answer counts {total} rows but {rows} were sent; "
                "no row can be taken as confirmed",
                code="bad_answer",
            )
        entries = result.get("log") or []
        if not isinstance(entries, list):
            raise ProviderError(f"{where}: `log` is not a list", code="bad_answer")

        errors: dict[int, tuple[str, str]] = {}
        warnings: dict[int, tuple[str, str]] = {}
        for entry in entries:
            if not isinstance(entry, dict):
                raise ProviderError(f"{where}: a `log` entry is not an object", code="bad_answer")
            index = answer_count(entry, "index")  # §1.4: a number; some servers send a string
            if index is None or not 0 <= index < rows:
                raise ProviderError(
                    f"{where}: a `log` entry names no row of the {rows} sent: {entry!r}",
                    code="bad_answer",
                )
            code = str(entry.get("code") or "unspecified")
            message = html.unescape(str(entry.get("message") or ""))
            # Per-row codes are [UNCONFIRMED] (§1.4). The documented `w_` entries are warnings
            # ("... but the string has been added") EXCEPT the role-based one, which reuses
            # `w_common_overlimit` with "Error (email was ignored)" (seed 002): the wording,
            # not the prefix, says whether the row went in.
            if code.startswith("w_") and not _SAYS_IGNORED.search(message):
                log.info("%s: row %d: warning %s: %s", where, index, code, message)
                warnings.setdefault(index, (code, message))
            elif index in errors:
                first_code, first_message = errors[index]
                errors[index] = (first_code, f"{first_message}; {code}: {message}")
            else:
                errors[index] = (code, message)

        # Backstop for wording we do not recognise: when the counters say more rows were left
        # out than the log names as errors, a "warning" may hide a dropped row. Which one is
        # unknowable, so none of the warned rows is confirmed; if that still does not cover
        # the gap, nothing is.
        applied = [answer_count(result, name) for name in ("inserted", "updated", "deleted")]
        if all(n is not None for n in applied):
            left_out = total - sum(n for n in applied if n is not None)
            if left_out > len(errors):
                for index, (code, message) in warnings.items():
                    errors.setdefault(index, (code, f"{message} (not confirmed by the counters)"))
            if left_out > len(errors):
                raise ProviderError(
                    f"{where}: the answer says {left_out} rows were not applied but names "
                    f"only {len(errors)}; no row can be taken as confirmed",
                    code="bad_answer",
                )

        verdicts = {index: (True, code, message) for index, (code, message) in warnings.items()}
        verdicts.update(
            {index: (False, code, message) for index, (code, message) in errors.items()}
        )
        return verdicts

    # ------------------------------------------------------------------ export

    def _export_columns(self) -> list[str]:
        k = self._key
        system = [k, f"{k}_status", f"{k}_unsubscribed_list_ids", "tags"]
        return list(dict.fromkeys([*system, *self.target.remote_fields]))

    def export(self) -> Iterator[RemoteContact]:
        for _, raw in self.export_raw(b""):
            contact = self.read_raw(raw)
            if contact is not None:
                yield contact

    def export_raw(self, salt: bytes) -> Iterator[tuple[int, Any]]:
        """The rows off the wire, fingerprinted before any reading: the cells joined, under a
        salt that includes the header (a column moved changes every row's meaning)."""
        self.skipped_rows = 0
        paged = self.target.export_mode == "paged"
        rows = self._paged_rows() if paged else self._async_rows()
        columns = self._export_columns()
        index: dict[str, int] | None = None
        fingerprint = fingerprinter(salt)
        width = 0
        for number, row in enumerate(rows):
            if index is None:
                index = self._read_header(row, columns)
                self._header_index = index
                width = index["__width__"]
                fingerprint = fingerprinter(salt + "\x1f".join(row).encode())
                continue
            if not row:
                continue  # a blank line carries no contact
            if len(row) != width:
                # A short or long row is a cut or garbled file (DESIGN rule 1).
                raise ExportIncomplete(
                    f"{self.name} export of list {self._list_id}: row {number} has {len(row)} "
                    f"cells, the header {width}: the export looks truncated"
                )
            yield fingerprint("\x1f".join(row)), (row, number)
        if index is None:
            raise ExportIncomplete(
                f"{self.name} export of list {self._list_id}: no header row: the file is empty"
            )

    def read_raw(self, raw: Any) -> RemoteContact | None:
        row, number = raw
        return self._to_contact(row, self._header_index, number)

    def _read_header(self, header: Sequence[str], columns: Sequence[str]) -> dict[str, int]:
        position: dict[str, int] = {}
        for i, name in enumerate(header):
            position.setdefault(name.strip(), i)
        missing = [c for c in columns if c not in position]
        if missing:
            raise ExportIncomplete(
                f"{self.name} export of list {self._list_id}: the header lacks "
                f"{', '.join(missing)}: nothing can be concluded from this export"
            )
        position["__width__"] = len(header)
        return position

    def _to_contact(
        self, row: Sequence[str], index: Mapping[str, int], number: int
    ) -> RemoteContact | None:
        k = self._key

        def cell(name: str) -> str:
            return row[index[name]].strip()

        raw_key = cell(k)
        try:
            if k == "email":
                key = normalise_email(raw_key)
            else:
                key = normalise_phone(raw_key, self.default_region)
        except ValueError as exc:
            # Never a deletion of anything: the key just cannot be matched (DESIGN §8).
            self.skipped_rows += 1
            log.warning(
                "%s export of list %s: row %d skipped: %s", self.name, self._list_id, number, exc
            )
            return None

        word = cell(f"{k}_status").lower()
        # §1.4: unsubscribed from this list while the account status stays e.g. active: the
        # contact's consent on this list only (DESIGN §9), never its own status
        unsubscribed_here = self._list_id in _split(cell(f"{k}_unsubscribed_list_ids"))
        if word in _OPTED_OUT_STATUSES:
            raw_status = word
        elif word in _ACTIVE_STATUSES:
            raw_status = word or "active"
        else:
            # A word §1.7 does not list: consent only moves towards opted out (DESIGN §8).
            log.warning("%s: unknown status %r read as an opt-out", self.name, word)
            raw_status = word
        # Folding (blocked -> unsubscribed) follows the declared capabilities, as on the
        # local side, so both sides compare in the same vocabulary.
        active = raw_status in _ACTIVE_STATUSES
        status = "active" if active else self.capabilities.fold_status(raw_status)
        fields = {name: cell(name) for name in self.target.remote_fields}
        tags = _split(cell("tags"))
        list_status = "unsubscribed" if unsubscribed_here else "active"
        elsewhere = bool(set(_split(cell(f"{k}_unsubscribed_list_ids"))) - {self._list_id})
        return RemoteContact(
            Projection.build(key, fields, tags, status, list_status),
            raw_status,
            opted_out_elsewhere=elsewhere,
        )

    # ---- one contact (§1.6 getContact) and the event handlers ("Event notifications")

    def read_one(self, key: str) -> ContactRead | None:
        """The contact as ``getContact`` shows it, or None when it is not on this list (or the
        target is keyed on phones: getContact reads by email only).

        getContact gives the address's status, its lists with a per-list status and the user
        fields, never the tags nor the phone: those are left unknown (``ContactRead``). Where
        ``lists`` and ``fields`` sit (under ``result`` or ``result.email``) is [UNCONFIRMED];
        both are read. The per-list status words are [UNCONFIRMED]: ``unsubscribed`` is an
        opt-out from that list, an unknown word too (consent only moves towards opted out).
        """
        if self._key != "email":
            return None
        try:
            result = self._call(
                READ_ONE,
                {"email": key, "include_lists": "1", "include_fields": "1"},
                write=False,
            )
        except _Refused as exc:
            if "not found" in exc.text.lower():
                return None
            raise
        email = result.get("email") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(email, dict):
            raise ProviderError(f"{self.name} {READ_ONE}: no `email` object", code="bad_answer")
        lists = result.get("lists", email.get("lists")) or []
        given = result.get("fields", email.get("fields")) or {}
        if not isinstance(lists, list) or not isinstance(given, dict):
            raise ProviderError(
                f"{self.name} {READ_ONE}: lists or fields unreadable", code="bad_answer"
            )
        states = {
            str(item.get("id")): str(item.get("status") or "").lower()
            for item in lists
            if isinstance(item, dict)
        }
        if self._list_id not in states:
            return None
        word = str(email.get("status") or "").lower()
        raw_status = word if word in _OPTED_OUT_STATUSES else (word or "active")
        if word not in _OPTED_OUT_STATUSES and word not in _ACTIVE_STATUSES:
            log.warning("%s: unknown status %r read as an opt-out", self.name, word)
        active = raw_status in _ACTIVE_STATUSES
        status = "active" if active else self.capabilities.fold_status(raw_status)
        here = states[self._list_id]
        list_status = "active" if here in _ACTIVE_STATUSES else "unsubscribed"
        elsewhere = any(s not in _ACTIVE_STATUSES for i, s in states.items() if i != self._list_id)
        names = [n for n in self.target.remote_fields if n in given]
        fields = {n: _text(given[n]) for n in names}
        projection = Projection.build(key, fields, (), status, list_status)
        contact = RemoteContact(projection, raw_status, opted_out_elsewhere=elsewhere)
        return ContactRead(contact, frozenset(names), tags_read=False)

    def set_hook(self, url: str, events: Sequence[str]) -> dict[str, object]:
        params: dict[str, str | Sequence[str]] = {
            "hook_url": url,
            "event_format": "json_post",
            "status": "active",
            **{f"events[{i}]": name for i, name in enumerate(events)},
        }
        result = self._call("setHook", params, write=True)
        return result if isinstance(result, dict) else {"hook_url": url}

    def list_hooks(self) -> list[dict[str, object]]:
        result = self._call("listHooks", {}, write=False)
        if not isinstance(result, list):
            raise ProviderError(f"{self.name} listHooks: `result` is not a list", code="bad_answer")
        return [item for item in result if isinstance(item, dict)]

    def remove_hook(self, url: str) -> None:
        self._call("removeHook", {"hook_url": url}, write=True)

    # ---- async export (§1.5, current)

    def _async_rows(self) -> Iterator[list[str]]:
        task = self._call(
            EXPORT_ASYNC,
            {"list_id": self._list_id, "field_names[]": self._export_columns()},
            write=False,
        )
        uuid = task.get("task_uuid") if isinstance(task, dict) else None
        if not isinstance(uuid, str) or not uuid:
            raise ExportIncomplete(f"{self.name} {EXPORT_ASYNC}: the answer has no task_uuid")
        given = self._wait_for_file(uuid)
        # The file may sit on another host (§1.5 step 2 gives a URL) or be given relative.
        try:
            joined = httpx.URL(self.target.api_root + "/").join(given)
            if joined.scheme not in ("http", "https") or not joined.host:
                raise httpx.InvalidURL("not an http(s) address with a host")
            url = str(joined)
        except httpx.InvalidURL as exc:
            raise ExportIncomplete(
                f"{self.name} {TASK_RESULT}: file_to_download {given[:200]!r} is not a usable "
                f"URL ({exc})"
            ) from None
        try:
            with self._http.download(DOWNLOAD, url) as response:
                # A body shorter than its Content-Length is refused by httpx itself
                # (RemoteProtocolError below); a file cut at the source is caught by the CSV
                # checks (final line break, cells per row, gzip framing).
                yield from _csv_rows(response)
        except httpx.HTTPError as exc:
            raise ExportIncomplete(
                f"{self.name} export file: the download broke off ({type(exc).__name__}: {exc})"
            ) from None
        except (csv.Error, UnicodeDecodeError, zlib.error, _Truncated) as exc:
            raise ExportIncomplete(
                f"{self.name} export file is incomplete or malformed: {exc}"
            ) from None

    def _wait_for_file(self, uuid: str) -> str:
        """Poll the task until it completes (§1.5 step 2: new → processing → completed).

        The waits between polls start short and double up to ``export_poll_interval``: a small
        list's file is ready within a moment, a large one's takes minutes, and every poll
        counts against the account's 1200 calls a minute (§1.3).
        """
        interval = min(self.target.export_poll_interval, FIRST_POLL_WAIT)
        started = time.monotonic()
        waited = 0.0  # counts the sleeps too, so an injected no-op sleep still reaches the end
        while True:
            result = self._call(TASK_RESULT, {"task_uuid": uuid}, write=False)
            if not isinstance(result, dict):
                raise ExportIncomplete(f"{self.name} {TASK_RESULT}: `result` is not an object")
            status = str(result.get("status") or "")
            if status == "completed":
                url = result.get("file_to_download")
                if not isinstance(url, str) or not url:
                    raise ExportIncomplete(
                        f"{self.name} {TASK_RESULT}: task {uuid} completed without a file"
                    )
                return url
            if status not in _PENDING_TASK:
                raise ExportIncomplete(
                    f"{self.name} export task {uuid} ended with status {status or '(none)'}"
                )
            if max(time.monotonic() - started, waited) >= self.target.export_timeout:
                raise ExportIncomplete(
                    f"{self.name} export task {uuid} not completed after "
                    f"{self.target.export_timeout:g} s (status {status}); raise export_timeout "
                    "or try again later"
                )
            self._sleep(interval)
            waited += interval
            interval = min(interval * 2, self.target.export_poll_interval)

    # ---- paged export (§1.5, legacy)

    def _paged_rows(self) -> Iterator[list[str]]:
        """Pages of at most 1000 until a short page; the first row of a page is the last row
        of the one before, so a list that shifted between two calls (a contact added or
        removed in front of the boundary) is noticed instead of silently skipping a contact.
        """
        columns = self._export_columns()
        offset = 0
        header: list[str] | None = None
        key_at = 0
        previous_key: str | None = None
        while True:
            try:
                result = self._call(
                    EXPORT_PAGED,
                    {
                        "list_id": self._list_id,
                        "field_names[]": columns,
                        "offset": str(offset),
                        "limit": str(PAGE_SIZE),
                    },
                    write=False,
                )
            except ProviderError as exc:
                if type(exc) is not ProviderError or exc.code != "bad_answer":
                    raise  # a refusal, the key, or no answer at all: not a cut page
                raise ExportIncomplete(
                    f"{exc} (page at offset {offset}): the export is cut short"
                ) from None
            names, data = self._read_page(result)
            if header is None:
                header = names
                key_at = self._read_header(header, columns)[self._key]
                yield header
            elif names != header:
                raise ExportIncomplete(f"{self.name} {EXPORT_PAGED}: the columns changed")
            rows = data
            if previous_key is not None:
                if not data or len(data[0]) <= key_at or data[0][key_at] != previous_key:
                    raise ExportIncomplete(
                        f"{self.name} {EXPORT_PAGED}: the list changed while it was read "
                        f"(offset {offset}); the next cycle will read it again"
                    )
                rows = data[1:]
            yield from rows
            if len(data) < PAGE_SIZE:
                return
            last = data[-1]
            previous_key = last[key_at] if len(last) > key_at else ""
            offset += PAGE_SIZE - 1

    def _read_page(self, result: Any) -> tuple[list[str], list[list[str]]]:
        where = f"{self.name} {EXPORT_PAGED}"
        if not isinstance(result, dict):
            raise ExportIncomplete(f"{where}: `result` is not an object")
        names, data = result.get("field_names"), result.get("data")
        if not isinstance(names, list) or not isinstance(data, list):
            raise ExportIncomplete(f"{where}: `result` lacks field_names or data")
        rows: list[list[str]] = []
        for row in data:
            if not isinstance(row, list):
                raise ExportIncomplete(f"{where}: a data row is not a list")
            rows.append([_text(value) for value in row])
        return [str(name) for name in names], rows

    def close(self) -> None:
        self._http.close()


# ---------------------------------------------------------------------- helpers


class _Refused(ProviderError):
    """An error envelope that may be about one row of an import (``_ROW_REFUSAL_CODES``)."""

    def __init__(self, message: str, *, code: str, text: str) -> None:
        super().__init__(message, code=code)
        self.text = text or code
        self.answer = (code, text)

    def names(self, key: str) -> bool:
        """Whether the provider's text names this contact key (a phone with or without '+')."""
        text = self.text.lower()
        return bool(key) and (key.lower() in text or key.lstrip("+") in text)


class _Truncated(Exception):
    """The file's own framing (gzip) says it ended early."""


def _split(cell: str) -> list[str]:
    """§1.1: comma lists inside a cell."""
    return [part.strip() for part in cell.split(",") if part.strip()]


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)


def _decompressed(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The file's bytes, gunzipped when it starts with the gzip magic (§1.5 step 4)."""
    stream = iter(chunks)
    head = b""
    for chunk in stream:
        head += chunk
        if len(head) >= len(_GZIP_MAGIC):
            break
    if not head.startswith(_GZIP_MAGIC):
        if head:
            yield head
        yield from stream
        return
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for chunk in itertools.chain([head], stream):
        data = chunk
        while data:
            if inflater.eof:  # another member follows: concatenated gzip files are valid gzip
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = inflater.decompress(data)
            if out:
                yield out
            data = inflater.unused_data if inflater.eof else b""
    if not inflater.eof:
        raise _Truncated("the gzip stream ends early")


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Decoded lines, ends kept (quoted cells may span lines); split on LF only, because a
    Unicode line separator inside a cell is data, not a row break."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    tail = ""
    for chunk in chunks:
        text = tail + decoder.decode(chunk)
        parts = text.split("\n")
        tail = parts.pop()
        for part in parts:
            yield part + "\n"
    tail += decoder.decode(b"", final=True)
    if tail:
        # A CSV writer ends every record with a line break; a file whose last line has none
        # was cut, perhaps inside a value that would otherwise parse as a full row.
        raise _Truncated("the file does not end with a line break: it looks cut off")


def _csv_rows(response: httpx.Response) -> Iterator[list[str]]:
    # strict: an unbalanced quote (a file cut inside a quoted cell) is an error, not a row.
    yield from csv.reader(_lines(_decompressed(response.iter_bytes())), strict=True)


# ---------------------------------------------------------------------- the specs


SPEC = ProviderSpec(
    name="unisender",
    title="Unisender",
    default_url="https://api.unisender.com/{lang}/api",
    capabilities=UnisenderProvider.capabilities,
    settings=NoSettings,
    adapter=UnisenderProvider,
    emulator="syncd.emulators.unisender:make_emulator",
    starter=Starter(
        "email", "UNISENDER_API_KEY", "the Unisender API key", "the list's id at Unisender"
    ),
    read_only_prepare=True,  # prepare(create_missing=False) reads getLists and getFields only
)

# Selzy is Unisender's international brand: the same API and adapter on another host.
SELZY_SPEC = replace(
    SPEC,
    name="selzy",
    title="Selzy",
    default_url="https://api.selzy.com/{lang}/api",
    starter=Starter("email", "SELZY_API_KEY", "the Selzy API key", "the list's id at Selzy"),
)
