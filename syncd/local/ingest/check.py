"""Checking rows: each raw record becomes a ``ContactChange`` or a ``Rejection`` with its reason.

``validate`` looks at the rows alone, never at the mirror: keys are normalised (an email
trimmed, checked and lower-cased, a phone made E.164), the reserved columns parsed, every other
column read as a custom field's text, and refused: text no store or provider can hold (the
limits are in ``syncd.local.ingest.read``), and a key an earlier row of the file already used. What
a good row then does to the mirror is ``syncd.local.ingest.write``'s ("What a row does").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from syncd.config import IngestConfig
from syncd.core.contacts import is_role_address, normalise_email, normalise_phone
from syncd.core.projection import STATUSES, Status
from syncd.local.ingest.read import (
    MAX_VALUE_CHARS,
    NOT_TEXT,
    RESERVED,
    SURROGATE,
    RawRow,
    shown,
)

_REPORTED_CHARS = 400  # a rejection's key and reason are cut to this
_RESERVED = frozenset(RESERVED)


# ContactChange, Claim and read.RawRow are made once a row, a million times for a big file:
# they are not frozen, since a frozen dataclass's __init__ costs several times as much. Nothing
# changes them after they are made (``dataclasses.replace`` makes a new one).
@dataclass(slots=True)
class ContactChange:
    """One checked row: normalised keys, and only what the row carries (None = not carried)."""

    line: int
    email: str | None = None
    phone: str | None = None
    fields: Mapping[str, str | None] = field(default_factory=dict)  # None = remove the field
    tags: frozenset[str] | None = None
    lists: frozenset[str] | None = None
    status: Status | None = None
    delete: bool = False
    unsubscribed_lists: frozenset[str] | None = None  # the lists the contact has left

    @property
    def key(self) -> str:
        return self.email or self.phone or ""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row that was not applied, and why."""

    line: int
    key: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "key": self.key, "reason": self.reason}


class _RowProblem(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Claim:
    """A row whose email and phone are valid keys: it claims them for the rest of the file.

    ``then`` is what the row is (a change, or a rejection for a later column) unless an earlier
    row of the file already used one of its ``keys``; ``settle_claims`` decides which.
    """

    line: int
    values: Mapping[str, Any]  # the row as read, for a rejection's key
    keys: tuple[tuple[str, str], ...]  # ("email", key) and/or ("phone", key), in that order
    then: ContactChange | Rejection


Checked = Claim | Rejection


def validate(
    rows: Iterable[RawRow], config: IngestConfig
) -> tuple[list[ContactChange], list[Rejection]]:
    """Check every row: the good ones become changes, each bad one a rejection with its reason.

    Holds the whole file's changes; ``checked`` and ``settle_claims`` are the streaming parts.
    """
    changes: list[ContactChange] = []
    rejections: list[Rejection] = []
    claimed: dict[str, int] = {}  # email or phone -> the line that used it first
    for item in checked(rows, config):
        (outcome,), new = settle_claims([item], lambda keys: claimed)
        claimed.update(new)
        if isinstance(outcome, Rejection):
            rejections.append(outcome)
        else:
            changes.append(outcome)
    return changes, rejections


def checked(rows: Iterable[RawRow], config: IngestConfig) -> Iterator[Checked]:
    """Each row checked on its own, lazily: a ``Rejection``, or a ``Claim`` on its keys."""
    for row in rows:
        try:
            yield _check_row(row, config)
        except _RowProblem as problem:
            key = _clipped(_display_key(row.values))
            yield Rejection(row.line, key, _clipped(problem.reason))


def settle_claims(
    batch: Sequence[Checked | ContactChange],
    earlier: Callable[[list[str]], Mapping[str, int]],
) -> tuple[list[ContactChange | Rejection], list[tuple[str, int]]]:
    """Decide a batch of rows in file order against the keys earlier rows claimed.

    ``earlier(keys)`` gives, for those of ``keys`` that rows before the batch claimed, the line
    that claimed each. Returns each row's outcome and the (key, line) claims the batch adds. A
    row whose key was claimed is rejected naming that line, and claims nothing; any other
    ``Claim`` claims its keys even if it is rejected for a later column, so a later duplicate is
    never applied in its place. A ``ContactChange`` passes as it is.
    """
    keys = [key for item in batch if isinstance(item, Claim) for _, key in item.keys]
    before = earlier(keys) if keys else {}
    claimed: dict[str, int] = {}
    outcomes: list[ContactChange | Rejection] = []
    for item in batch:
        if not isinstance(item, Claim):
            outcomes.append(item)
            continue
        for name, key in item.keys:
            line = claimed.get(key) or before.get(key)
            if line is not None:
                reason = f"duplicate {name} {key}: already on line {line}"
                shown_key = _clipped(_display_key(item.values))
                outcomes.append(Rejection(item.line, shown_key, _clipped(reason)))
                break
        else:
            for _, key in item.keys:
                claimed[key] = item.line
            outcomes.append(item.then)
    return outcomes, list(claimed.items())


def _clipped(text: str) -> str:
    """A report line stays readable whatever the file held (a 100 KB "email", say)."""
    if len(text) <= _REPORTED_CHARS:
        return text
    return f"{text[:_REPORTED_CHARS]}... ({len(text):,} characters)"


def _display_key(values: Mapping[str, Any]) -> str:
    """The row's key for a report, normalised when possible so it matches what is stored."""
    for name, normalise in (("email", normalise_email), ("phone", _phone_as_written)):
        raw = values.get(name)
        if isinstance(raw, str | int) and not isinstance(raw, bool) and str(raw).strip():
            text = str(raw)
            if SURROGATE.search(text):
                return text.encode("utf-8", "backslashreplace").decode("ascii", "replace")
            try:
                return normalise(text)
            except ValueError:
                return text.strip()
    return ""


def _phone_as_written(raw: str) -> str:
    return normalise_phone(raw, None) if raw.strip().startswith("+") else raw.strip()


def _check_row(row: RawRow, config: IngestConfig) -> Claim:
    if row.problem is not None:
        raise _RowProblem(row.problem)
    values = row.values
    _check_texts(values)
    email = _identity(values.get("email"), "email", allow_int=False)
    phone = _identity(values.get("phone"), "phone", allow_int=True)
    if email is None and phone is None:
        raise _RowProblem("row has neither email nor phone")
    try:
        email = None if email is None else normalise_email(email)
        phone = None if phone is None else normalise_phone(phone, config.default_region)
    except ValueError as exc:
        raise _RowProblem(str(exc)) from None
    if email is not None and config.reject_role_addresses and is_role_address(email):
        raise _RowProblem(
            f"role address {email}: providers refuse addresses that reach a function, not a person"
        )
    keys: tuple[tuple[str, str], ...] = (("email", email),) if email is not None else ()
    if phone is not None:
        keys += (("phone", phone),)
    try:
        then: ContactChange | Rejection = _change(row, email, phone)
    except _RowProblem as problem:
        then = Rejection(row.line, _clipped(_display_key(values)), _clipped(problem.reason))
    return Claim(row.line, values, keys, then)


def _change(row: RawRow, email: str | None, phone: str | None) -> ContactChange:
    """The rest of a row whose keys are good: the reserved columns and the custom fields."""
    values = row.values
    # Most files carry neither column: their absence is told here, without a call.
    status = None if (given := values.get("status")) is None else _status(given)
    delete = False if (given := values.get("delete")) is None else flag(given)
    if delete is None:
        raise _RowProblem(f"delete must be 1/true or 0/empty, not {shown(values['delete'])}")
    # Inline tests for the common case (a column absent, a field's text) spare a call per row.
    tags = _names(values, "tags") if "tags" in values else None
    lists = _names(values, "lists") if "lists" in values else None
    left = "unsubscribed_lists"
    unsubscribed_lists = _names(values, left) if left in values else None
    fields = {
        name: v if type(v) is str and v else _field_value(name, v)
        for name, v in values.items()
        if name not in _RESERVED
    }
    if delete:
        return ContactChange(row.line, email, phone, delete=True)
    return ContactChange(
        row.line, email, phone, fields, tags, lists, status, unsubscribed_lists=unsubscribed_lists
    )


def _check_texts(values: Mapping[str, Any]) -> None:
    """``_check_text`` for every column; one pass over the row's text when it is all plain."""
    try:
        text = "".join(values.values()) + "".join(values)
    except TypeError:  # a JSON value that is not text: look at each one
        text = None
    # isascii() reads a flag the string already has: ASCII text holds no surrogate.
    if text is not None and (
        len(text) <= MAX_VALUE_CHARS
        and "\x00" not in text
        and (text.isascii() or not SURROGATE.search(text))
    ):
        return
    for name, value in values.items():
        _check_text(name, value)


def _check_text(name: str, value: Any) -> None:
    """Text no store or provider can hold, refused before anything else looks at the row."""
    if "\x00" in name:
        raise _RowProblem(f"column {shown(name)} holds a NUL character in its name")
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str):
            continue
        if len(item) > MAX_VALUE_CHARS:
            raise _RowProblem(
                f"{name} is {len(item):,} characters long; at most {MAX_VALUE_CHARS:,}"
            )
        if "\x00" in item:
            raise _RowProblem(f"{name} holds a NUL character")
        if SURROGATE.search(item):
            raise _RowProblem(NOT_TEXT.format(what=name))


def _identity(value: Any, name: str, *, allow_int: bool) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and allow_int:
        return str(value)
    if not isinstance(value, str):
        raise _RowProblem(f"{name} must be text")
    return value if value.strip() else None


def _status(value: Any) -> Status | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in STATUSES:
        raise _RowProblem(
            f"unknown status {shown(value)} (expected active, unsubscribed or blocked)"
        )
    return cast(Status, text)


#: the texts a yes/no column reads as yes and as no (``delete``), case and spaces aside
FLAG_WORDS = (frozenset({"1", "true", "yes"}), frozenset({"", "0", "false", "no"}))


def flag(value: Any, words: tuple[frozenset[str], frozenset[str]] = FLAG_WORDS) -> bool | None:
    """A yes/no value: a boolean, 0 or 1, null (no), or text among ``words`` (yes ones, no ones).

    None when it is none of these: the caller names the column in its own refusal. Also reads a
    source's ``unsubscribed`` column (``syncd.local.source.read``), with its own words.
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str):
        word = value.strip().lower()
        if word in words[0]:
            return True
        if word in words[1]:
            return False
    return None


#: The set each column text of good names made, for the next row with the same text: a file
#: names the same few lists and tags on row after row. Bounded, whatever the file holds.
_NAMES_OF_TEXT: dict[str, frozenset[str]] = {}
_KEPT_NAME_TEXTS = 1024
_KEPT_NAME_CHARS = 256


def _names(values: Mapping[str, Any], column: str) -> frozenset[str] | None:
    """A tags or lists column: None when absent, else the set it replaces the old one with."""
    if column not in values:
        return None
    value = values[column]
    if value is None:
        return frozenset()
    if type(value) is str:
        # The names a text makes do not depend on the column; a text with a bad name raises
        # below and is never kept.
        known = _NAMES_OF_TEXT.get(value)
        if known is not None:
            return known
        names = _split_names(value.split(","), column)
        if len(_NAMES_OF_TEXT) < _KEPT_NAME_TEXTS and len(value) <= _KEPT_NAME_CHARS:
            _NAMES_OF_TEXT[value] = names
        return names
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise _RowProblem(f"{column} must be a list of names")
    return _split_names(items, column)


def _split_names(items: list[Any], column: str) -> frozenset[str]:
    names: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise _RowProblem(f"{column} must be a list of names, found {shown(item)}")
        # A comma could not survive the comma-joined CSV column; refuse it here, not on export.
        if "," in item:
            raise _RowProblem(f"{column[:-1]} {shown(item)} contains a comma")
        if item.strip():
            names.add(item.strip())
    return frozenset(names)


def _field_value(name: str, value: Any) -> str | None:
    """A custom field's value as stored text; None removes the field."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _RowProblem(f"field {name!r}: {value} is not a usable number")
        return json.dumps(value)
    if isinstance(value, dict):
        raise _RowProblem(f"field {name!r} holds a nested object; custom fields take one value")
    raise _RowProblem(f"field {name!r} holds a list; custom fields take one value")
