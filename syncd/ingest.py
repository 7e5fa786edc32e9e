"""Contact files into the mirror: the one way in.

Three steps, each callable on its own: ``read_rows`` streams records out of a file,
``validate`` turns them into ``ContactChange`` values or ``Rejection`` s, and ``apply`` writes
the changes in one transaction. ``ingest_file`` composes them.

Files
-----
- CSV (``.csv``): comma-separated, UTF-8 with or without a BOM, a header row. A line number is
  the physical line a record starts on (the header is line 1; quoted values may span lines).
- JSON (``.ndjson``, ``.jsonl``, ``.json``): one object per line, or one JSON array of objects.
  Values are strings, numbers, booleans or null; ``tags``/``lists`` are arrays of strings (a
  string is read as comma-separated, as in CSV).

Columns: ``email``, ``phone``, ``tags`` and ``lists`` (comma-separated in CSV), ``status``
(active | unsubscribed | blocked; empty = not given), ``delete`` (1/true/yes = delete; 0/false/no
or empty = no). These names are reserved: they are matched case-insensitively and always mean the
column, so no custom field can carry them. Every other column is a custom field.

A file that cannot be read at all (not UTF-8, broken CSV quoting, no usable header, not JSON)
raises ``IngestError`` and changes nothing. A bad row is rejected with its line and reason and
the good rows still apply (DESIGN §3 rules 6 and 8).

Limits
------
So that a broken or hostile file costs bounded memory and time, and is refused with a reason
rather than half-read: a physical line holds at most ``MAX_LINE_BYTES`` (a longer one refuses
the file, naming the line, without reading the rest of it into memory); a CSV header has at most
``MAX_COLUMNS`` columns; a JSON array file (read whole, see ``read_rows``) is at most
``MAX_JSON_ARRAY_BYTES``. Per row: at most ``MAX_COLUMNS`` keys, text values of at most
``MAX_VALUE_CHARS`` characters (the csv module's own field limit, so both formats agree), no NUL
character and no lone UTF-16 surrogate (JSON can spell one, ``"\\ud800"``; it is not text and
no database or provider can store it), numbers of at most 4300 digits (Python's limit).

What a row does
---------------
- Matching: by email when the row has one and a contact holds it, otherwise by phone. If the
  email and the phone belong to two different contacts the row is rejected. Tombstones match too.
- Identity: a row with both email and phone sets both, so a new email on a contact found by
  phone is an email change and the contact keeps its consent (DESIGN §8). An empty email or phone
  never removes one.
- Fields: only the columns a row carries change; an empty value (CSV) or null/"" (JSON) removes
  that field. Values are stored as text (JSON numbers and booleans as their JSON spelling).
- ``tags`` present: replaces the tag set. ``lists`` present: replaces the local list memberships.
- ``status`` present: sets it, except that a contact revived from a tombstone keeps an opted-out
  status (consent only moves towards opted-out automatically). ``status=active`` on a live
  contact is an explicit local decision and does set it.
- ``delete``: the contact becomes a tombstone: ``deleted``, no memberships, no fields or tags,
  but identity and status kept so an opt-out survives re-creation. Other columns of a delete row
  are checked but not applied. Deleting an unknown or already deleted contact counts as unchanged.
- Revival: a non-delete row for a tombstone un-deletes it, starting from its identity and status
  only; it counts as created.
- Order: rows apply one after another in file order. A key may appear once per file: a second
  row with an email or phone already used by an earlier row is rejected, naming that line.
- Counts: every row read is exactly one of created, updated, deleted, unchanged or rejected.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

from sqlalchemy import delete, insert, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from syncd.config import IngestConfig
from syncd.contacts import is_role_address, normalise_email, normalise_phone
from syncd.errors import IngestError
from syncd.projection import STATUSES, Status, is_opted_out
from syncd.store import mirror
from syncd.store.db import transaction
from syncd.store.models import Contact, Membership

RESERVED: tuple[str, ...] = ("email", "phone", "tags", "lists", "status", "delete")
CHUNK_SIZE = 1000  # keys looked up per IN query and rows written per bulk statement
JSON_SUFFIXES = (".ndjson", ".jsonl", ".json")

MAX_LINE_BYTES = 1 << 20  # one physical line; far above any real contact record
MAX_COLUMNS = 1000  # header columns (CSV) or keys (JSON record); providers take 30-50 fields
MAX_VALUE_CHARS = csv.field_size_limit()  # 131072: what the csv module accepts in one cell
MAX_JSON_ARRAY_BYTES = 32 << 20  # a JSON array is read whole; NDJSON and CSV stream
_SHOWN_CHARS = 60  # a value quoted in a reason is cut to this, so reports stay readable
_REPORTED_CHARS = 400  # a rejection's key and reason are cut to this

Outcome = Literal["created", "updated", "deleted", "unchanged"]


def canonical_json(value: Any) -> str:
    """The one text for a JSON value: equal content gives equal text (and equal digests)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class RawRow:
    """One record as read, before any checking.

    ``values`` maps column names (reserved ones folded to lower case) to the value as read: text
    for CSV, any JSON value for JSON. ``problem`` is set when the reader could already tell the
    record is unusable (a line that is not JSON, a CSV row with too few values, ...).
    """

    line: int
    values: Mapping[str, Any]
    problem: str | None = None


@dataclass(frozen=True, slots=True)
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


@dataclass(slots=True)
class IngestReport:
    """What one file did. Every record read is counted exactly once: applied or rejected."""

    file: str = ""
    rows: int = 0  # records read (blank lines are not records)
    created: int = 0  # includes contacts revived from a tombstone
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def count(self, outcome: Outcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: the counts at the top level, rejections by line."""
        return {
            "file": self.file,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "rejected": [r.to_dict() for r in self.rejected],
        }


# --------------------------------------------------------------------------------------------
# Reading


def read_rows(path: str | os.PathLike[str]) -> Iterator[RawRow]:
    """Stream the records of a CSV or JSON contact file; raise ``IngestError`` if it is unreadable.

    The file is read lazily, so an unreadable part late in the file raises only when reached:
    consume everything before writing anything (``ingest_file`` does). CSV and NDJSON stream
    line by line; a JSON array is read whole, as the standard library cannot stream one.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix != ".csv" and suffix not in JSON_SUFFIXES:
        raise IngestError(f"{file}: unknown file type {suffix or '(none)'!r}; use .csv or .ndjson")
    try:
        with file.open("rb") as handle:
            if suffix != ".csv" and _starts_a_json_array(handle):
                yield from _read_json_array(file, _whole_json_array(file, handle), 1)
                return
            lines = _decoded_lines(file, handle)
            if suffix == ".csv":
                yield from _read_csv(file, lines)
            else:
                yield from _read_json(file, lines)
    except OSError as exc:
        raise IngestError(f"{file}: cannot be read: {exc.strerror or exc}") from None


_UTF16_OR_32_BOMS = (
    codecs.BOM_UTF32_LE,
    codecs.BOM_UTF32_BE,
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
)


def _not_utf8(file: Path, line: int, raw: bytes, at: int) -> IngestError:
    """The error for line ``line`` (bytes ``raw``), whose byte ``at`` does not decode."""
    if line == 1 and raw.startswith(_UTF16_OR_32_BOMS):
        return IngestError(
            f"{file}: the file is UTF-16 or UTF-32 (it starts with that byte order mark); "
            "save it as UTF-8"
        )
    return IngestError(
        f"{file}: line {line} is not valid UTF-8 (byte 0x{raw[at]:02x} at byte {at + 1} of "
        "the line); save the file as UTF-8"
    )


def _decoded_lines(file: Path, handle: BinaryIO) -> Iterator[str]:
    """Physical lines as text, so that a decoding error can name its line.

    Splitting bytes on b"\\n" is safe in UTF-8: that byte never occurs inside a multi-byte
    character. Each yielded line keeps its line ending, as ``csv`` expects. A line is read at
    most ``MAX_LINE_BYTES`` at a time, so an endless line costs that much memory, not its length.
    """
    number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise IngestError(
                f"{file}: line {number} is longer than {MAX_LINE_BYTES:,} bytes; a contact "
                "file holds one record a line (or a CSV record over a few lines)"
            )
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(file, number, raw, exc.start) from None


def _starts_a_json_array(handle: BinaryIO) -> bool:
    """Whether the first character that is not a BOM or white space is ``[``; rewinds."""
    bom = codecs.BOM_UTF8
    handle.seek(len(bom) if handle.read(len(bom)) == bom else 0)
    found = b""
    while not found and (chunk := handle.read(1 << 16)):
        found = chunk.lstrip(b" \t\r\n")
    handle.seek(0)
    return found.startswith(b"[")


def _whole_json_array(file: Path, handle: BinaryIO) -> str:
    """A JSON array file as one text: the standard library cannot stream one."""
    data = handle.read(MAX_JSON_ARRAY_BYTES + 1)
    if len(data) > MAX_JSON_ARRAY_BYTES:
        raise IngestError(
            f"{file}: a JSON array file is read whole and may be at most "
            f"{MAX_JSON_ARRAY_BYTES >> 20} MiB; write bigger files as NDJSON (one object a line)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        raise _not_utf8(file, line, data[line_start : exc.end], exc.start - line_start) from None


def _column_name(raw: str) -> str:
    name = raw.strip()
    folded = name.lower()
    return folded if folded in RESERVED else name


def _read_csv(file: Path, lines: Iterator[str]) -> Iterator[RawRow]:
    # strict: broken quoting is an error, not a quote silently swallowing the rest of the file.
    reader = csv.reader(lines, strict=True)
    try:
        header: list[str] = []
        for header in reader:
            if any(cell.strip() for cell in header):
                break
        else:
            raise IngestError(f"{file}: the file is empty; the first line must be the header")
        columns = _csv_columns(file, header)
        done = reader.line_num  # physical lines consumed so far
        for cells in reader:
            line, done = done + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue  # blank line
            if len(cells) < len(columns) or any(c.strip() for c in cells[len(columns) :]):
                problem = f"row has {len(cells)} values but the header has {len(columns)} columns"
                yield RawRow(line, dict(zip(columns, cells, strict=False)), problem)
                continue
            yield RawRow(line, dict(zip(columns, cells, strict=False)))
    except csv.Error as exc:
        raise IngestError(
            f"{file}: line {reader.line_num}: not valid CSV: {_csv_problem(exc)}"
        ) from None


def _csv_problem(exc: csv.Error) -> str:
    """The csv module's message, in words a person who made the file can act on."""
    text = str(exc)
    if "field larger than field limit" in text:
        return f"a value is longer than {MAX_VALUE_CHARS:,} characters (an unclosed quote?)"
    if "new-line character seen in unquoted field" in text:
        return (
            "a carriage return inside an unquoted value: save the file with LF or CRLF line "
            "endings (not CR alone), or quote the value"
        )
    return text


def _csv_columns(file: Path, header: list[str]) -> list[str]:
    if len(header) > MAX_COLUMNS:
        raise IngestError(
            f"{file}: the header has {len(header):,} columns; at most {MAX_COLUMNS:,} are read"
        )
    columns = [_column_name(cell) for cell in header]
    seen: set[str] = set()
    for position, name in enumerate(columns, start=1):
        if not name:
            raise IngestError(f"{file}: header column {position} has no name")
        if name in seen:
            raise IngestError(f"{file}: column {name!r} appears twice in the header")
        seen.add(name)
    if "email" not in seen and "phone" not in seen:
        found = ", ".join(repr(c) for c in columns)
        raise IngestError(
            f"{file}: the header has no email or phone column (found {found}); "
            "the file must be comma-separated with a header row"
        )
    return columns


class _JsonObject(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs, so that repeated keys can be reported."""


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _read_json(file: Path, lines: Iterator[str]) -> Iterator[RawRow]:
    first_record = True
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text, object_pairs_hook=_JsonObject)
        except (ValueError, RecursionError) as exc:
            if first_record:
                # The first record decides whether this is JSON at all.
                raise IngestError(
                    f"{file}: line {number} is not JSON ({_json_problem(exc)}); expected one "
                    "JSON object per line or one JSON array of objects"
                ) from None
            yield RawRow(number, {}, f"not valid JSON: {_json_problem(exc)}")
            continue
        first_record = False
        yield _json_record(number, value)


def _json_problem(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "values nested too deeply"
    # int() refuses numbers of more than 4300 digits (CVE-2020-10735)
    return "a number has too many digits"


def _read_json_array(file: Path, text: str, first_line: int) -> Iterator[RawRow]:
    """Walk one JSON array element by element, so each record knows the line it starts on."""
    decoder = json.JSONDecoder(object_pairs_hook=_JsonObject)
    line, counted = first_line, 0

    def skip_space(at: int) -> int:
        match = _JSON_SPACE.match(text, at)
        return match.end() if match else at

    def line_of(at: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, at)
        counted = at
        return line

    def broken(at: int, what: str) -> IngestError:
        return IngestError(f"{file}: line {line_of(at)}: not a valid JSON array: {what}")

    pos = skip_space(text.index("[") + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise broken(exc.pos, exc.msg) from None
            except (ValueError, RecursionError) as exc:
                raise broken(pos, _json_problem(exc)) from None
            yield _json_record(line_of(pos), value)
            pos = skip_space(end)
            if text.startswith(",", pos):
                pos = skip_space(pos + 1)
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise broken(pos, "expected ',' or ']'")
    if skip_space(pos) != len(text):
        raise broken(skip_space(pos), "text after the closing ']'")


def _json_record(line: int, value: Any) -> RawRow:
    if not isinstance(value, _JsonObject):
        return RawRow(line, {}, "record is not a JSON object")
    if len(value) > MAX_COLUMNS:
        return RawRow(line, {}, f"record has {len(value):,} keys; at most {MAX_COLUMNS:,}")
    values: dict[str, Any] = {}
    for raw_key, item in value:
        name = _column_name(raw_key)
        if not name:
            return RawRow(line, values, "a key is empty")
        if _SURROGATE.search(name):
            return RawRow(line, values, _NOT_TEXT.format(what="a key"))
        if name in values:
            return RawRow(line, values, f"key {_shown(raw_key)} appears more than once")
        values[name] = _plain(item)
    return RawRow(line, values)


# JSON can spell a lone UTF-16 surrogate ("\\ud800"); it is no character and cannot be encoded.
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_TEXT = "{what} holds a lone UTF-16 surrogate, which is not a character"


def _plain(value: Any) -> Any:
    """Nested pair lists back to ordinary dicts (``validate`` rejects them as nested objects)."""
    if isinstance(value, _JsonObject):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Checking


class _RowProblem(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def validate(
    rows: Iterable[RawRow], config: IngestConfig
) -> tuple[list[ContactChange], list[Rejection]]:
    """Check every row: the good ones become changes, each bad one a rejection with its reason."""
    changes: list[ContactChange] = []
    rejections: list[Rejection] = []
    claimed: dict[str, int] = {}  # email or phone -> the line that used it first
    for row in rows:
        try:
            changes.append(_check_row(row, config, claimed))
        except _RowProblem as problem:
            key = _clipped(_display_key(row.values))
            rejections.append(Rejection(row.line, key, _clipped(problem.reason)))
    return changes, rejections


def _clipped(text: str) -> str:
    """A report line stays readable whatever the file held (a 100 KB "email", say)."""
    if len(text) <= _REPORTED_CHARS:
        return text
    return f"{text[:_REPORTED_CHARS]}... ({len(text):,} characters)"


def _shown(value: Any) -> str:
    """``repr`` of a value quoted in a reason, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}..."


def _display_key(values: Mapping[str, Any]) -> str:
    """The row's key for a report, normalised when possible so it matches what is stored."""
    for name, normalise in (("email", normalise_email), ("phone", _phone_as_written)):
        raw = values.get(name)
        if isinstance(raw, str | int) and not isinstance(raw, bool) and str(raw).strip():
            text = str(raw)
            if _SURROGATE.search(text):
                return text.encode("utf-8", "backslashreplace").decode("ascii", "replace")
            try:
                return normalise(text)
            except ValueError:
                return text.strip()
    return ""


def _phone_as_written(raw: str) -> str:
    return normalise_phone(raw, None) if raw.strip().startswith("+") else raw.strip()


def _check_row(row: RawRow, config: IngestConfig, claimed: dict[str, int]) -> ContactChange:
    if row.problem is not None:
        raise _RowProblem(row.problem)
    values = row.values
    for name, value in values.items():
        _check_text(name, value)
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
    for name, key in (("email", email), ("phone", phone)):
        if key is not None and key in claimed:
            raise _RowProblem(f"duplicate {name} {key}: already on line {claimed[key]}")
    # A row with a valid identity claims its keys even if it is rejected below, so a later
    # duplicate is never applied in its place.
    for key in (email, phone):
        if key is not None:
            claimed[key] = row.line

    status = _status(values.get("status"))
    delete = _delete_flag(values.get("delete"))
    tags = _names(values, "tags")
    lists = _names(values, "lists")
    fields = {name: _field_value(name, v) for name, v in values.items() if name not in RESERVED}
    if delete:
        return ContactChange(row.line, email, phone, delete=True)
    return ContactChange(row.line, email, phone, fields, tags, lists, status)


def _check_text(name: str, value: Any) -> None:
    """Text no store or provider can hold, refused before anything else looks at the row."""
    if "\x00" in name:
        raise _RowProblem(f"column {_shown(name)} holds a NUL character in its name")
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
        if _SURROGATE.search(item):
            raise _RowProblem(_NOT_TEXT.format(what=name))


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
            f"unknown status {_shown(value)} (expected active, unsubscribed or blocked)"
        )
    return cast(Status, text)


_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"", "0", "false", "no"})


def _delete_flag(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _RowProblem(f"delete must be 1/true or 0/empty, not {_shown(value)}")


def _names(values: Mapping[str, Any], column: str) -> frozenset[str] | None:
    """A tags or lists column: None when absent, else the set it replaces the old one with."""
    if column not in values:
        return None
    value = values[column]
    if value is None:
        return frozenset()
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise _RowProblem(f"{column} must be a list of names")
    names: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise _RowProblem(f"{column} must be a list of names, found {_shown(item)}")
        # A comma could not survive the comma-joined CSV column; refuse it here, not on export.
        if "," in item:
            raise _RowProblem(f"{column[:-1]} {_shown(item)} contains a comma")
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


# --------------------------------------------------------------------------------------------
# Writing


def apply(
    engine: Engine, changes: Sequence[ContactChange], *, chunk_size: int = CHUNK_SIZE
) -> IngestReport:
    """Apply every change in one transaction: all of them, or (on any error) none.

    The contact table is never loaded whole: each chunk of rows looks up only the contacts its
    keys name, then writes back with a few bulk statements. Rows that can only be refused
    against the mirror (email and phone of two different contacts) come back in ``rejected``.
    """
    report = IngestReport(rows=len(changes))
    with transaction(engine) as session:
        mirror.take_write_turn(session)  # a cycle re-reading contacts it will write waits
        for start in range(0, len(changes), chunk_size):
            chunk = changes[start : start + chunk_size]
            working = _Chunk.load(session, chunk)
            for change in chunk:
                outcome = working.apply(change)
                if isinstance(outcome, Rejection):
                    report.rejected.append(outcome)
                else:
                    report.count(outcome)
            working.write(session)
    return report


def ingest_file(engine: Engine, path: str | os.PathLike[str], config: IngestConfig) -> IngestReport:
    """Read, check and apply one file. Raises ``IngestError`` (changing nothing) if unreadable."""
    changes, rejected = validate(read_rows(path), config)
    report = apply(engine, changes)
    report.file = str(path)
    report.rows += len(rejected)
    report.rejected = sorted(rejected + report.rejected, key=lambda r: r.line)
    return report


@dataclass(slots=True)
class _Contact:
    """A working copy of one contact while a chunk is applied. New ones have negative ids."""

    id: int
    email: str | None
    phone: str | None
    fields: dict[str, Any]
    tags: frozenset[str]
    lists: frozenset[str]
    status: str
    deleted: bool

    def state(self) -> tuple[Any, ...]:
        return (
            self.email,
            self.phone,
            canonical_json(self.fields),
            sorted(self.tags),
            sorted(self.lists),
            self.status,
            self.deleted,
        )

    def columns(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "phone": self.phone,
            "fields": canonical_json(self.fields),
            "tags": canonical_json(sorted(self.tags)),
            "status": self.status,
            "deleted": self.deleted,
        }


class _Chunk:
    """The contacts one chunk of rows can reach, changed in memory, then written in bulk.

    Rows apply in order against this working set, so a later row sees an earlier row's effect
    (an email moved, a contact revived) exactly as it would across chunk boundaries.
    """

    def __init__(self, contacts: list[_Contact]) -> None:
        self.contacts = {c.id: c for c in contacts}
        self.original = {c.id: c.columns() for c in contacts}
        self.original_lists = {c.id: c.lists for c in contacts}
        self.by_email = {c.email: c.id for c in contacts if c.email is not None}
        self.by_phone = {c.phone: c.id for c in contacts if c.phone is not None}
        self.next_new_id = -1

    @classmethod
    def load(cls, session: Session, chunk: Sequence[ContactChange]) -> _Chunk:
        emails = [c.email for c in chunk if c.email is not None]
        phones = [c.phone for c in chunk if c.phone is not None]
        found = session.exec(
            select(Contact).where(
                or_(col(Contact.email).in_(emails), col(Contact.phone).in_(phones))
            )
        ).all()
        ids = [c.id for c in found if c.id is not None]
        lists: dict[int, set[str]] = {i: set() for i in ids}
        if ids:
            for contact_id, list_name in session.exec(
                select(Membership.contact_id, Membership.list_name).where(
                    col(Membership.contact_id).in_(ids)
                )
            ):
                lists[contact_id].add(list_name)
        contacts = [
            _Contact(
                id=c.id,
                email=c.email,
                phone=c.phone,
                fields=json.loads(c.fields) or {},
                tags=frozenset(json.loads(c.tags) or ()),
                lists=frozenset(lists[c.id]),
                status=c.status,
                deleted=c.deleted,
            )
            for c in found
            if c.id is not None
        ]
        # The ORM objects were only read. Dropping them keeps memory flat over a big file, and
        # keeps a later chunk from reusing a cached object that the bulk writes made stale.
        session.expunge_all()
        return cls(contacts)

    def apply(self, change: ContactChange) -> Outcome | Rejection:
        by_email = self.by_email.get(change.email) if change.email is not None else None
        by_phone = self.by_phone.get(change.phone) if change.phone is not None else None
        if by_email is not None and by_phone is not None and by_email != by_phone:
            return Rejection(
                change.line, change.key, "email and phone belong to different contacts"
            )
        found = by_email if by_email is not None else by_phone
        contact = None if found is None else self.contacts[found]

        if change.delete:
            if contact is None or contact.deleted:
                return "unchanged"
            # A tombstone keeps identity and consent only, so a re-created contact stays opted out.
            contact.deleted = True
            contact.fields, contact.tags, contact.lists = {}, frozenset(), frozenset()
            return "deleted"

        if contact is None:
            contact = _Contact(
                self.next_new_id, None, None, {}, frozenset(), frozenset(), "active", False
            )
            self.next_new_id -= 1
            self.contacts[contact.id] = contact
            outcome: Outcome = "created"
        elif contact.deleted:
            contact.deleted = False
            contact.fields, contact.tags, contact.lists = {}, frozenset(), frozenset()
            outcome = "created"
        else:
            outcome = "updated"
        revived_opted_out = outcome == "created" and is_opted_out(contact.status)
        before = contact.state()

        self._set_identity(contact, change.email, change.phone)
        for name, value in change.fields.items():
            if value is None:
                contact.fields.pop(name, None)
            else:
                contact.fields[name] = value
        if change.tags is not None:
            contact.tags = change.tags
        if change.lists is not None:
            contact.lists = change.lists
        # Never re-subscribe automatically (DESIGN §8): a revived opted-out contact only takes a
        # status that is opted-out too; a live contact takes any explicit status.
        if change.status is not None and (not revived_opted_out or is_opted_out(change.status)):
            contact.status = change.status

        if outcome == "updated" and contact.state() == before:
            return "unchanged"
        return outcome

    def _set_identity(self, contact: _Contact, email: str | None, phone: str | None) -> None:
        # Any value set here is free: a holder other than `contact` would have been found by
        # `apply` and the row rejected as belonging to two contacts.
        if email is not None and email != contact.email:
            if contact.email is not None:
                del self.by_email[contact.email]
            contact.email = email
            self.by_email[email] = contact.id
        if phone is not None and phone != contact.phone:
            if contact.phone is not None:
                del self.by_phone[contact.phone]
            contact.phone = phone
            self.by_phone[phone] = contact.id

    def write(self, session: Session) -> None:
        current = {cid: contact.columns() for cid, contact in self.contacts.items()}
        changed = [row for cid, row in current.items() if cid > 0 and row != self.original[cid]]
        moved = [
            {"id": row["id"], "email": None, "phone": None}
            for row in changed
            if (row["email"], row["phone"])
            != (self.original[row["id"]]["email"], self.original[row["id"]]["phone"])
        ]
        if moved:
            # Keys can pass from one contact to another within a chunk; clearing the moved keys
            # first means the unique indexes never see two holders, whatever the update order.
            session.exec(update(Contact), params=moved)
        if changed:
            session.exec(update(Contact), params=changed)

        relisted = [
            cid
            for cid, contact in self.contacts.items()
            if cid > 0 and contact.lists != self.original_lists[cid]
        ]
        if relisted:
            session.exec(delete(Membership).where(col(Membership.contact_id).in_(relisted)))
        memberships = [
            {"contact_id": cid, "list_name": name}
            for cid in relisted
            for name in sorted(self.contacts[cid].lists)
        ]

        new = [contact for cid, contact in self.contacts.items() if cid < 0]
        if new:
            rows = [{k: v for k, v in current[c.id].items() if k != "id"} for c in new]
            ids = session.exec(
                insert(Contact).returning(col(Contact.id), sort_by_parameter_order=True),
                params=rows,
            ).scalars()
            for contact, real_id in zip(new, ids, strict=True):
                memberships.extend(
                    {"contact_id": real_id, "list_name": name} for name in sorted(contact.lists)
                )
        if memberships:
            session.exec(insert(Membership), params=memberships)
