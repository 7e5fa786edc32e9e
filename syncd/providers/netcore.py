"""Netcore Smartech (apiv2): a push-only adapter for one contact list.

Wire facts, cited from shared/providers/netcore.md ("4.1" for the apiv2 contact activities, "4.2"
for v3) and the bulk upload page (shared/providers/seeds/004_*, cited as "seed 004").

- Every call is a form POST to ``{api_root}?type=contact&activity=...`` ("4.1"). The docs put
  ``apikey`` in the query string; syncd sends it in the form body instead, because a key never
  goes into a URL (DESIGN rule 7) and the docs' own examples move ``data`` and ``listid``
  between query and body freely [INFERRED: the server reads both; the emulator does].
- Success is HTTP 200 ``{"requestid": "<32 hex>", "result": "Success"}``; a bad key answers
  ``{"result": "Invalid API key"}`` ("4.1").
- Creates and updates, with a ``public_url``: ``activity=bulkupload`` (seed 004). The batch is
  a CSV whose header row names the account's attributes, the primary key first ("4.1" [INFERRED]:
  upper-case names such as EMAIL, MOBILE, FIRST_NAME). syncd serves the file itself
  (``hosted_file``; the engine records it as a job in ``syncd.engine.confirm_later``) under a
  single-batch, expiring path with a secret, gives that URL as ``path`` and a second secret URL as
  ``callback``, and treats the rows as confirmed only when the callback comes.
- Without a ``public_url`` nothing can fetch a file: each contact goes by ``activity=addsync``
  (validated server-side before the answer, "4.1"), one call per contact.
- Removal is ``activity=delete`` with ``listid`` and ``data`` = the primary key value: it takes a
  contact off the list, not out of the account ("4.1"), so the capability is ``exclude``. The
  docs show GET; syncd POSTs (a GET would carry the key in the URL).
- No export, no tags, no opt-out status through apiv2 ("4.1"/"4.2": unsubscribe
  [UNCONFIRMED], export not found): the engine takes the remote side as the base, and never
  creates a contact that opted out locally (an upload would make it an active one).
- Columns per call: undocumented for the CSV; v3's batch call allows 20 attributes per contact
  ("4.2"), which is the default of ``max_fields_per_call`` here.
- The callback's payload is [UNCONFIRMED] ("4.1": the page is cut off). ``read_callback``
  accepts a JSON object (or a form with such a JSON in ``data``) and reads ``status`` and a list
  of refused rows under ``errors``/``failed``; anything it does not recognise as a failure
  counts as processed, since the callback's arrival itself says the job ran.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import httpx
from pydantic import Field

from syncd.config import ProviderSettings, TargetConfig
from syncd.core.projection import is_opted_out
from syncd.errors import AuthError, ProviderError, TryLater
from syncd.providers.base import (
    CallbackReport,
    Capabilities,
    PushCall,
    RemoteContact,
    RowChange,
    RowOutcome,
)
from syncd.providers.http import HttpProvider, answer_object
from syncd.providers.spec import CallbackReader, MaxRowsPerCall, ProviderSpec, Starter

log = logging.getLogger(__name__)

BULK = "bulkupload"
ADD_SYNC = "addsync"
DELETE = "delete"
SUCCESS = "Success"
BAD_KEY = "Invalid API key"
DEFAULT_ROWS_PER_FILE = 10_000  # undocumented for the CSV; one file per this many contacts
DEFAULT_FIELDS_PER_CALL = 20  # "4.2": 20 attributes per contact (v3), the key included
PRIMARY_KEY = {"email": "EMAIL", "phone": "MOBILE"}  # "4.1": the attributes in every example
_FAILED_WORDS = frozenset({"failed", "failure", "error", "rejected", "aborted"})


CAPABILITIES = Capabilities(
    rows_per_call=DEFAULT_ROWS_PER_FILE,  # max_rows_per_call replaces it
    fields_per_call=DEFAULT_FIELDS_PER_CALL - 1,  # every call repeats the primary key column
    delete=False,
    exclude=True,  # activity=delete: off the list, the contact stays in the account
    tags=False,
    export=False,
    statuses=frozenset({"active"}),
    confirms_later=False,  # True with a public_url
    # "4.1": add/addsync on an existing primary key "updates fields", but whether a
    # bulk upload's CSV, or an addsync's data, leaves the attributes it does not name
    # alone or blanks them is [UNCONFIRMED] (the callback and CSV pages are cut off).
    # Unclear: every update sends every mapped field, so that a contact
    # of at most max_fields_per_call fields never depends on it (only the column split of
    # a wider one does, DESIGN §4).
    partial_update=False,
)


class NetcoreProvider(HttpProvider):
    """A Netcore Smartech account plus one list; push-only."""

    name = "netcore"

    def configure(self, target: TargetConfig) -> None:
        self.primary_key = PRIMARY_KEY[target.key]
        settings = NetcoreSettings.of(target)
        self.public_url = (settings.public_url or "").rstrip("/")
        self.notify_email = settings.notify_email
        fields = settings.max_fields_per_call or DEFAULT_FIELDS_PER_CALL
        self.capabilities = replace(
            CAPABILITIES,
            rows_per_call=settings.max_rows_per_call or DEFAULT_ROWS_PER_FILE,
            fields_per_call=fields - 1,  # every call repeats the primary key column
            confirms_later=bool(self.public_url),
        )
        self._key = target.api_key.get_secret_value()
        # rate limits of the contact API are [UNCONFIRMED]: the target's setting applies

    # ------------------------------------------------------------------ the envelope

    def _call(self, activity: str, form: Mapping[str, str], *, write: bool) -> str:
        """One apiv2 call; returns the request id of a successful answer."""
        url = f"{self.target.api_root}?type=contact&activity={activity}"
        return self._http.post_form(
            activity,
            url,
            {"apikey": self._key, **form},
            write=write,
            parse=lambda r: self._read_answer(activity, r),
        )

    def _read_answer(self, activity: str, response: httpx.Response) -> str:
        where = f"{self.name} {activity}"
        body = answer_object(response)
        if body is None:
            snippet = self._http.snippet(response)
            raise ProviderError(
                f"{where}: the answer is not a JSON object: {snippet!r}", code="bad_answer"
            )
        result = str(body.get("result") or "").strip()
        if result == SUCCESS:
            return str(body.get("requestid") or "")
        message = self._http.scrub(result or json.dumps(body)[:200])
        if result.lower() == BAD_KEY.lower():
            raise AuthError(
                f"{where}: {message}: check the api_key of target {self.target.name!r}",
                code="invalid_api_key",
            )
        if "limit" in result.lower():  # rate limits are [UNCONFIRMED]: a limit answer waits
            raise TryLater(message)
        raise ProviderError(f"{where}: {message}", code="api_error")

    # ------------------------------------------------------------------ prepare

    def prepare(self, fields: Sequence[str], *, create_missing: bool) -> None:
        if self.primary_key in fields:
            raise ProviderError(
                f"target {self.target.name!r}: {self.primary_key} is the primary key and goes "
                f"first in every call already; remove it from fields",
                code="invalid_field_name",
            )
        if not self.target.list_id.isdigit():  # seed 004: listid is an integer
            raise ProviderError(
                f"target {self.target.name!r}: a Netcore list_id is the list's number, not "
                f"{self.target.list_id!r}",
                code="list_not_found",
            )
        if not self.public_url:
            log.warning(
                "no public_url: Netcore contacts go one call each (activity=addsync); set "
                "public_url to upload them in batches",
                extra={"target": self.target.name},
            )

    def export(self) -> Iterator[RemoteContact]:
        raise NotImplementedError(
            "Netcore documents no contact export; with capabilities.export False the engine "
            "takes the remote side as the base and never calls this"
        )

    # ------------------------------------------------------------------ push

    def method_name(self, call: PushCall) -> str:
        if call.op in ("delete", "exclude"):
            return DELETE
        return BULK if self.public_url else ADD_SYNC

    def _header(self, call: PushCall) -> list[str]:
        return [self.primary_key, *call.columns]

    def _cells(self, header: Sequence[str], rc: RowChange) -> list[str]:
        values = rc.row.field_map
        cells = [self._wire_key(rc.row.key)]
        for name in header[1:]:
            value = values.get(name, "")
            cells.append(value.strip().removeprefix("+") if name == "MOBILE" else value)
        return cells

    def _wire_key(self, key: str) -> str:
        # MOBILE values appear as digits with the country code [INFERRED]: no '+'
        return key.removeprefix("+") if self.primary_key == "MOBILE" else key

    def wire_rows(self, call: PushCall, limit: int) -> list[dict[str, str]]:
        header = self._header(call)
        return [dict(zip(header, self._cells(header, rc), strict=True)) for rc in call.rows[:limit]]

    def _refusal(self, call: PushCall, rc: RowChange) -> RowOutcome | None:
        if call.op in ("create", "update") and is_opted_out(rc.row.status):
            return RowOutcome(
                rc.row.key,
                False,
                "opt_out_unsupported",
                "opted out locally, and Netcore's contact API records no opt-out: not sent, "
                "since an upload would make it an active contact",
            )
        return None

    def hosted_file(self, call: PushCall) -> bytes | None:
        if not self.public_url or call.op not in ("create", "update"):
            return None
        header = self._header(call)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(header)
        for rc in call.rows:
            if self._refusal(call, rc) is None:
                writer.writerow(self._cells(header, rc))
        return out.getvalue().encode("utf-8")

    def push(self, call: PushCall) -> list[RowOutcome]:
        if call.op in ("delete", "exclude"):
            return [self._remove(rc) for rc in call.rows]
        refusals = [self._refusal(call, rc) for rc in call.rows]
        if call.job is None:
            return [r or self._add_one(call, rc) for r, rc in zip(refusals, call.rows, strict=True)]
        form = {
            "path": self.public_url + call.job.file_path,
            "callback": self.public_url + call.job.callback_path,
            "listid": self.target.list_id,
        }
        if self.notify_email:
            form["notifyemail"] = self.notify_email
        call.job.requestid = self._call(BULK, form, write=True)
        return [
            r or RowOutcome(rc.row.key, True, pending=True)
            for r, rc in zip(refusals, call.rows, strict=True)
        ]

    def _add_one(self, call: PushCall, rc: RowChange) -> RowOutcome:
        header = self._header(call)
        data = dict(zip(header, self._cells(header, rc), strict=True))
        form = {"data": json.dumps(data, ensure_ascii=False), "listid": self.target.list_id}
        return self._row_call(ADD_SYNC, rc, form)

    def _remove(self, rc: RowChange) -> RowOutcome:
        form = {"data": self._wire_key(rc.row.key), "listid": self.target.list_id}
        return self._row_call(DELETE, rc, form)

    def _row_call(self, activity: str, rc: RowChange, form: Mapping[str, str]) -> RowOutcome:
        try:
            self._call(activity, form, write=True)
        except AuthError:
            raise
        except ProviderError as exc:
            if exc.code != "api_error":
                raise
            message = str(exc).split(": ", 1)[-1]
            return RowOutcome(rc.row.key, False, "invalid", message, exc.retryable)
        return RowOutcome(rc.row.key, True)

    # ------------------------------------------------------------------ callbacks

    @classmethod
    def read_callback(cls, body: bytes, content_type: str, key: str) -> CallbackReport:
        payload = _callback_payload(body, content_type)
        status = str(payload.get("status") or payload.get("result") or "").strip().lower()
        message = str(payload.get("message") or payload.get("status") or "")
        errors = payload.get("errors", payload.get("failed")) or []
        if not isinstance(errors, list):
            raise ValueError("`errors` in the callback is not a list")
        failed: dict[str, str] = {}
        for entry in errors:
            if not isinstance(entry, dict):
                raise ValueError(f"an entry of `errors` is not an object: {entry!r}")
            value = str(entry.get("primary_key") or entry.get("value") or "").strip()
            if not value:
                raise ValueError(f"an entry of `errors` names no primary key: {entry!r}")
            wire = value.lower() if key == "email" else "+" + value.removeprefix("+")
            failed[wire] = str(entry.get("reason") or entry.get("error") or "refused")
        return CallbackReport(status not in _FAILED_WORDS, message, failed)


def _callback_payload(body: bytes, content_type: str) -> dict[str, Any]:
    text = body.decode("utf-8", errors="replace").strip()
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        form = parse_qs(text)
        text = (form.get("data") or ["{}"])[0]
    try:
        payload = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"the callback is not JSON: {exc}") from None
    except RecursionError:  # valid JSON Python cannot hold is the sender's garbage too
        raise ValueError("the callback's JSON is nested too deeply") from None
    except ValueError:
        raise ValueError("the callback's JSON has a number with too many digits") from None
    if not isinstance(payload, dict):
        raise ValueError("the callback is not a JSON object")
    return payload


# ---------------------------------------------------------------------- the spec


class NetcoreSettings(ProviderSettings):
    """Netcore's own keys of a ``[[target]]`` table."""

    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#]+(/[^?#]*)?$",
        description="Netcore: the URL at which the provider reaches syncd's HTTP listener "
        "([http] listen), e.g. behind a reverse proxy. It fetches each batch's file and posts its "
        "callback there. Without it, contacts go one by one (activity=addsync).",
    )
    notify_email: str | None = Field(
        None, description="Netcore: an address the provider emails when a bulk upload is done."
    )
    max_rows_per_call: MaxRowsPerCall = None
    max_fields_per_call: int | None = Field(
        None,
        ge=2,
        description="Columns per call, the key included, where the provider documents no limit "
        "(Netcore: 20); contacts with more fields go in several calls.",
    )

    def listener_key(self) -> str | None:
        return "public_url" if self.public_url else None


def _callback_reader(target: TargetConfig) -> CallbackReader | None:
    """Bulk uploads call back only to a target with a ``public_url``."""
    if not NetcoreSettings.of(target).public_url:
        return None
    return lambda body, content_type: NetcoreProvider.read_callback(body, content_type, target.key)


SPEC = ProviderSpec(
    name="netcore",
    title="Netcore Smartech",
    default_url="https://api.netcoresmartech.com/apiv2",
    capabilities=CAPABILITIES,
    settings=NetcoreSettings,
    adapter=NetcoreProvider,
    emulator="syncd.emulators.netcore:make_emulator",
    starter=Starter(
        "email",
        "NETCORE_API_KEY",
        "the Netcore API key",
        "the list's number (listid) at Netcore",
        lines=(
            (
                '# public_url = "https://syncd.example.com"',
                "where Netcore reaches [http] listen; unset: one addsync call per contact",
            ),
            ("callback_timeout = 3600", "seconds an upload waits for its callback"),
        ),
    ),
    callback_reader=_callback_reader,
)
