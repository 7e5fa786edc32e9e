"""The importContacts rules of the Unisender/Selzy emulator (``unisender.py``).

importContacts is how syncd writes contacts in bulk and the part of the provider with the most
rules, so they live together here: argument checks and counters (``import_contacts``), per-row
validation and the ``log`` codes, status defaults and stickiness, tag merging (``_import_row``)
and list columns (``_row_lists``, ``apply_lists``; the ``subscribe`` method reuses the latter).
Sources are cited as in ``unisender.py``: §1.x of ``/work/shared/providers/unisender-selzy.md``,
"item N" of its emulator checklist, "seed 002" for the providers' importContacts page.

It works on the account of ``unisender_account.py`` and also holds the argument readers every
API method shares (``ids_arg``, ``flag_arg``, ``required_arg``, ``int_arg``); ``unisender.py``
builds on both.
"""

from __future__ import annotations

import re
from typing import Any

from syncd.emulators.kit import EMAIL_RE
from syncd.emulators.kit import forms as pp
from syncd.emulators.unisender_account import (
    CALL_ERROR_CODES,
    IMPORT_SYSTEM_FIELDS,
    LIST_COLS,
    ApiError,
    Contact,
    UnisenderAccount,
    now_utc,
)

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
# §1.4 / seed 002: info@, sales@, no-reply@, all@ "… and similar"; the rest are common role names.
ROLE_LOCAL_PARTS = frozenset(
    "info sales no-reply noreply all admin administrator support postmaster webmaster abuse "  # noqa: SIM905
    "hostmaster contact office mail marketing help billing team hello newsletter".split()
)
IMPORT_EMAIL_STATUSES = ("new", "active", "inactive", "unsubscribed")  # §1.4 email_status
IMPORT_PHONE_STATUSES = ("new", "active", "inactive", "unsubscribed")  # §1.4 "same meaning"
MAX_ROWS, MAX_TAGS = 500, 10  # §1.4: rows per call, tags per contact
_PHONE = re.compile(r"^\+?[1-9]\d{6,14}$")  # §1.4: international format, e.g. +79261232323
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2})?$")  # §1.4 email_subscribe_times


def ids_arg(value: str) -> list[int]:
    """A comma list of list ids (§1.1 "Comma lists")."""
    try:
        return [int(x) for x in pp.comma_list(value)]
    except ValueError as exc:
        raise ApiError(CALL_ERROR_CODES["missing_arg"], f"Invalid list ids: {value!r}") from exc


def flag_arg(params: pp.Params, name: str) -> bool:
    try:
        return pp.as_bool(pp.scalar(params, name) if name in params else None)
    except ValueError as exc:  # item 5
        raise ApiError("invalid_arg", f"Invalid value of argument {name}") from exc


def required_arg(params: pp.Params, name: str) -> str:
    value = pp.scalar(params, name).strip()
    if not value:
        raise ApiError(CALL_ERROR_CODES["missing_arg"], f"Argument {name} is required")
    return value


def int_arg(params: pp.Params, name: str, default: int | None) -> int | None:
    value = pp.scalar(params, name).strip()
    try:
        return int(value) if value else default
    except ValueError as exc:
        raise ApiError("invalid_arg", f"Invalid value of argument {name}") from exc


class _RowError(Exception):
    """One refused row: logged under ``LOG_CODES[key]``; the call itself succeeds."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


# ---- importContacts (§1.4, seed 001/002, items 9-13) --------------------------------------------


def import_contacts(emu: UnisenderAccount, p: pp.Params) -> dict[str, Any]:
    """The importContacts result: ``total``, the counters and the per-row ``log``."""
    cols = {i: v.strip() for i, v in pp.indexed(p.get("field_names")) if isinstance(v, str)}
    names = set(cols.values())
    if not cols:
        raise ApiError(CALL_ERROR_CODES["missing_arg"], "Argument field_names is required")
    if not names & {"email", "phone"}:  # §1.4: "email" or "phone" column, else error
        raise ApiError(CALL_ERROR_CODES["no_key_column"], 'field_names lacks "email"/"phone"')
    unknown = sorted(names - IMPORT_SYSTEM_FIELDS - emu._field_names())
    if unknown:  # item 9: names must be system names or existing user fields
        raise ApiError(CALL_ERROR_CODES["unknown_field"], f'Unknown field "{unknown[0]}"')
    rows = pp.indexed(p.get("data"))
    if not rows:
        raise ApiError(CALL_ERROR_CODES["missing_arg"], "Argument data is required")
    if len(rows) > MAX_ROWS:  # §1.4: at most 500 contacts per call
        raise ApiError(CALL_ERROR_CODES["too_many_rows"], f"Too many rows (max {MAX_ROWS})")
    overwrite_tags, overwrite_lists = flag_arg(p, "overwrite_tags"), flag_arg(p, "overwrite_lists")
    table = [
        (index, {cols[i]: v for i, v in pp.indexed(raw) if i in cols and isinstance(v, str)})
        for index, raw in rows  # item 3: the row's own index, sparse cells stay absent
    ]
    _refuse_injected(emu, table)
    _refuse_named(emu, table)
    counts = dict.fromkeys(("inserted", "updated", "deleted", "new_emails", "invalid"), 0)
    log: list[dict[str, Any]] = []
    seen: set[str] = set()
    faults = emu.faults
    reject_rows = faults.hits("importContacts") and faults.row_reject_rate > 0
    for index, cells in table:
        if reject_rows and faults.roll(faults.row_reject_rate):  # injected: row not imported
            faults.count(f"row_rejected {faults.row_reject_code}")
            message = f"Injected fault: row not imported ({faults.row_reject_code})"
            log.append({"index": index, "code": faults.row_reject_code, "message": message})
            continue
        try:
            outcome, is_new = _import_row(emu, cells, seen, overwrite_tags, overwrite_lists)
        except _RowError as exc:  # item 13: numeric 0-based index
            log.append({"index": index, "code": LOG_CODES[exc.key], "message": exc.message})
            if "email" in cells and exc.key != "email_not_unique":
                # §1.4 `invalid`: "emails not imported", whatever kept the row out (a bad
                # address, a role address, an 11th tag, ...) [INFERRED]; a repeated address is
                # not counted (§1.4: duplicates are not counted)
                counts["invalid"] += 1
            if exc.key == "role_address":  # seed 002 example carries "role_based"
                counts["role_based"] = counts.get("role_based", 0) + 1
            continue
        counts[outcome] += 1
        counts["new_emails"] += is_new
    return {"total": len(rows), **counts, "log": log}


def _refuse_injected(emu: UnisenderAccount, table: list[tuple[int, dict[str, str]]]) -> None:
    """The injected whole-call refusal (``Faults.refuse_rate``): one picked row in the data and
    nothing applies, answered like the §1.2 untyped errors that name the contacts at fault."""
    if emu.faults.refuse_rate <= 0 or not emu.faults.hits("importContacts"):
        return
    for index, cells in table:
        key = cells.get("email", "").strip().lower() or cells.get("phone", "").strip()
        if key and emu.faults.refuses(key):
            emu.faults.count("import_refused")
            raise ApiError("unspecified", f'Contact "{key}" (data[{index}]) cannot be imported')


def _refuse_named(emu: UnisenderAccount, table: list[tuple[int, dict[str, str]]]) -> None:
    """The refusal ``refuse_import`` set for a contact in the data: nothing applies."""
    if not emu.refused_imports:
        return
    for _index, cells in table:
        key = cells.get("email", "").strip().lower() or cells.get("phone", "").strip()
        refusal = emu.refused_imports.get(key)
        if refusal is not None:
            emu.faults.count(f"import_refused http_{refusal.status}")
            raise ApiError(refusal.code, refusal.message, refusal.status)


def _import_row(
    emu: UnisenderAccount,
    cells: dict[str, str],
    seen: set[str],
    overwrite_tags: bool,
    overwrite_lists: bool,
) -> tuple[str, bool]:
    """Apply one row; returns (counter to bump, whether it added a ``new`` email)."""
    email = cells.get("email", "").strip().lower() or None
    phone = cells.get("phone", "").strip() or None
    if email is None and phone is None:
        raise _RowError("no_address", "Neither email nor phone given")
    if email is not None:
        if not EMAIL_RE.match(email):
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
    by_email = emu.contacts.get(emu.by_email.get(email or "", 0))
    by_phone = emu.contacts.get(emu.by_phone.get(phone or "", 0))
    if by_email and by_phone and by_email is not by_phone:  # §1.2 untyped error / item 10
        raise _RowError(
            "owned_by_different",
            f"Contacts {email} and {phone} already exist but owned by different subscribers",
        )
    contact = by_email or by_phone
    if cells.get("delete", "").strip().lower() in ("1", "true"):  # §1.4 delete=1 / item 11
        if contact is not None:  # [UNCONFIRMED] account-wide vs list-scoped: account-wide
            emu._remove(contact)
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
    ops, times = _row_lists(emu, cells)
    outcome = "updated" if contact else "inserted"  # §1.4 inserted/updated semantics
    contact = contact or emu._create()
    for ch, default in (("email", "new"), ("phone", "active")):  # §1.4 defaults / item 12
        address = email if ch == "email" else phone
        if address is None:
            continue
        if getattr(contact, ch) != address:  # a new address: any status, default by channel
            emu._set_address(contact, ch, address)
            setattr(contact, f"{ch}_status", statuses[ch] or default)
        elif statuses[ch] and getattr(contact, f"{ch}_status") in ("active", "inactive"):
            setattr(contact, f"{ch}_status", statuses[ch])  # §1.4 stickiness: else ignored
    contact.fields.update({k: v for k, v in cells.items() if k not in IMPORT_SYSTEM_FIELDS})
    if tags is not None:
        emu._set_tags(contact, tags)
    apply_lists(contact, ops, times, overwrite_lists, sticky=emu.sticky_list_unsubscribe)
    return outcome, email is not None and contact.email_status == "new"


def _row_lists(
    emu: UnisenderAccount, cells: dict[str, str]
) -> tuple[dict[str, list[int]], dict[int, str]]:
    """The row's list columns as {column: ids} plus subscribe times per list id."""
    ops: dict[str, list[int]] = {}
    times: dict[int, str] = {}
    try:
        for col in LIST_COLS:
            for ch in ("email", "phone"):
                if f"{ch}_{col}" in cells:
                    ops.setdefault(col, []).extend(ids_arg(cells[f"{ch}_{col}"]))
    except ApiError as exc:
        raise _RowError("list_unknown", exc.message) from exc
    missing = {i for ids in ops.values() for i in ids} - set(emu.lists)
    if missing:
        raise _RowError("list_unknown", f"List {min(missing)} not found")
    for ch in ("email", "phone"):  # §1.4 *_subscribe_times: same count/order as *_list_ids
        if f"{ch}_subscribe_times" not in cells:
            continue
        stamps = pp.comma_list(cells[f"{ch}_subscribe_times"])
        ids = ids_arg(cells.get(f"{ch}_list_ids", ""))
        if len(stamps) != len(ids) or not all(_DATE.match(s) for s in stamps):
            raise _RowError("times_mismatch", f"{ch}_subscribe_times must match list ids")
        times.update(
            {i: s if " " in s else f"{s} 00:00:00" for i, s in zip(ids, stamps, strict=True)}
        )
    return ops, times


def apply_lists(
    c: Contact,
    ops: dict[str, list[int]],
    times: dict[int, str],
    overwrite: bool,
    *,
    sticky: bool,
) -> None:
    """Apply list columns to a contact. ``sticky``: a per-list unsubscribe survives a later
    ``list_ids`` for that list ([INFERRED], see ``UnisenderAccount.sticky_list_unsubscribe``)."""
    if not ops:
        return
    old_unsubscribed = set(c.unsubscribed)
    if overwrite:  # §1.4 overwrite_lists=1: replace all list data with the row's
        c.lists, c.unsubscribed, c.excluded, c.subscribed_at = set(), set(), set(), {}
    for i in ops.get("list_ids", []):
        c.excluded.discard(i)
        if sticky and i in old_unsubscribed:
            c.unsubscribed.add(i)  # stays unsubscribed there
            continue
        c.lists.add(i)
        c.unsubscribed.discard(i)
        c.subscribed_at[i] = times.get(i) or c.subscribed_at.get(i) or now_utc()
    for i in ops.get("unsubscribed_list_ids", []):  # §1.4 per-list unsubscribe
        c.lists.discard(i)
        c.excluded.discard(i)
        c.unsubscribed.add(i)
    for i in ops.get("excluded_list_ids", []):  # §1.4 excluded from the list
        c.lists.discard(i)
        c.excluded.add(i)
