"""Reading contact files: records out of CSV and JSON, within limits, before any checking.

``read_rows`` streams ``RawRow`` values; ``syncd.local.ingest.check`` decides what each one means.

Files
-----
- CSV (``.csv``): a header row, then one record a line. The delimiter is whichever of ``,``,
  ``;`` and tab the header line holds most (Excel writes ``;`` where the decimal mark is a
  comma), else ``,``. A line number is the physical line a record starts on (the header is
  line 1; quoted values may span lines).
- Text: UTF-8 with or without a BOM, unless ``encoding`` says otherwise (``[ingest] encoding``,
  e.g. ``cp1251`` for a Russian Excel export); a UTF-16 or UTF-32 byte order mark wins over
  both, since it says what the file is.
- A cell (header included) that starts with one or more apostrophes and then ``=``, ``+``,
  ``-``, ``@``, a tab or a carriage return loses its first apostrophe: that one is the
  spreadsheet's mark of text, which ``syncd export`` puts before such a cell so that no
  spreadsheet runs it as a formula (``neutralised``); ``restored`` undoes exactly that.
- JSON (``.ndjson``, ``.jsonl``, ``.json``): one object per line, or one JSON array of objects.
  Values are strings, numbers, booleans or null; ``tags``, ``lists`` and ``unsubscribed_lists``
  are arrays of strings (a string is read as comma-separated, as in CSV).

Columns: ``email``, ``phone``, ``tags``, ``lists`` and ``unsubscribed_lists`` (comma-separated in
CSV), ``status`` (active | unsubscribed | blocked; empty = not given), ``delete`` (1/true/yes =
delete; 0/false/no or empty = no). These names are reserved: they are matched case-insensitively
and always mean the column, so no custom field can carry them. Every other column is a custom
field.

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
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import itertools
import json
import os
import re
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from syncd.errors import IngestError

RESERVED: tuple[str, ...] = (
    "email",
    "phone",
    "tags",
    "lists",
    "unsubscribed_lists",
    "status",
    "delete",
)
JSON_SUFFIXES = (".ndjson", ".jsonl", ".json")

MAX_LINE_BYTES = 1 << 20  # one physical line; far above any real contact record
MAX_COLUMNS = 1000  # header columns (CSV) or keys (JSON record); providers take 30-50 fields
MAX_VALUE_CHARS = csv.field_size_limit()  # 131072: what the csv module accepts in one cell
MAX_JSON_ARRAY_BYTES = 32 << 20  # a JSON array is read whole; NDJSON and CSV stream
_SHOWN_CHARS = 60  # a value quoted in a reason is cut to this, so reports stay readable

# OWASP's "CSV injection": a spreadsheet runs a cell starting with one of these as a formula.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_NEUTRALISED = re.compile(r"'+[=+\-@\t\r]")


def neutralised(cell: str) -> str:
    """A CSV cell no spreadsheet reads as a formula: an apostrophe before a formula's start.

    A cell that already starts with apostrophes before such a character gets one more, so that
    ``restored`` gives back every cell exactly: ``restored(neutralised(c)) == c`` for any ``c``.
    """
    return f"'{cell}" if _FORMULA.match(cell) else cell


def restored(cell: str) -> str:
    """A CSV cell as it was before ``neutralised``: without the apostrophe that one added."""
    return cell[1:] if cell.startswith("'") and _NEUTRALISED.match(cell) else cell


@dataclass(slots=True)  # not frozen: see check.ContactChange
class RawRow:
    """One record as read, before any checking.

    ``values`` maps column names (reserved ones folded to lower case) to the value as read: text
    for CSV, any JSON value for JSON. ``problem`` is set when the reader could already tell the
    record is unusable (a line that is not JSON, a CSV row with too few values, ...).
    """

    line: int
    values: Mapping[str, Any]
    problem: str | None = None


def read_rows(
    path: str | os.PathLike[str], handle: BinaryIO | None = None, encoding: str | None = None
) -> Iterator[RawRow]:
    """Stream the records of a CSV or JSON contact file; raise ``IngestError`` if it is unreadable.

    ``encoding`` is the text encoding of a file without a byte order mark (None: UTF-8).

    ``handle``, when given, is the file already open for reading at its start (the inbox opens
    files itself, never following a link or blocking); ``path`` then only names it and tells its
    type, and the caller closes it.

    The file is read lazily, so an unreadable part late in the file raises only when reached:
    consume everything before writing anything (``ingest_file`` does). CSV and NDJSON stream
    line by line; a JSON array is read whole, as the standard library cannot stream one.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix != ".csv" and suffix not in JSON_SUFFIXES:
        raise IngestError(
            f"{file}: unknown file type {suffix or '(none)'!r}; use .csv, .ndjson, .jsonl or .json"
        )
    try:
        with contextlib.ExitStack() as stack:
            stream = handle if handle is not None else stack.enter_context(file.open("rb"))
            unicode = _unicode_bom(stream)
            if unicode is not None or (encoding and codecs.lookup(encoding).name != "utf-8"):
                decoded = _lines_in(file, stream, unicode or str(encoding))
                stack.callback(decoded.close)  # hands the handle back before it is closed
                lines: Iterator[str] = decoded
                if suffix != ".csv":
                    lines, array = _json_array_text(file, lines)
                    if array is not None:
                        yield from _read_json_array(file, array, 1)
                        return
            elif suffix != ".csv" and _starts_a_json_array(stream):
                yield from _read_json_array(file, _whole_json_array(file, stream), 1)
                return
            else:
                lines = _decoded_lines(file, stream)
            if suffix == ".csv":
                yield from _read_csv(file, lines)
            else:
                yield from _read_json(file, lines)
    except OSError as exc:
        raise IngestError(f"{file}: cannot be read: {exc.strerror or exc}") from None


def _not_utf8(file: Path, line: int, raw: bytes, at: int) -> IngestError:
    """The error for line ``line`` (bytes ``raw``), whose byte ``at`` does not decode."""
    return IngestError(
        f"{file}: line {line} is not valid UTF-8 (byte 0x{raw[at]:02x} at byte {at + 1} of "
        "the line); save the file as UTF-8, or name its encoding in [ingest] encoding "
        '(e.g. "cp1251" for a Russian Excel export)'
    )


def _decoded_lines(file: Path, handle: BinaryIO) -> Iterator[str]:
    """Physical lines as text, so that a decoding error can name its line.

    Splitting bytes on b"\\n" is safe in UTF-8: that byte never occurs inside a multi-byte
    character. Each yielded line keeps its line ending, as ``csv`` expects (only b"\\n" ends a
    line, as ``readline`` has it). A line is read at most ``MAX_LINE_BYTES`` (and a block) at a
    time, so an endless line costs that much memory, not its length.

    The file is decoded a block of whole lines at a time and each block split in C: a line at a
    time cost a million ``readline`` and ``decode`` calls for a million rows. A block holding a
    line that is too long or not UTF-8 is taken line by line (``_lines_one_by_one``), so the
    lines before that one are still yielded first and the error is the same as without blocks.
    """
    return itertools.chain.from_iterable(_decoded_blocks(file, handle))


_BLOCK_BYTES = 1 << 16


def _decoded_blocks(file: Path, handle: BinaryIO) -> Iterator[Iterable[str]]:
    """The lines of ``_decoded_lines``, a block of whole lines at a time."""
    limit = MAX_LINE_BYTES
    # A block no longer than a line may be: only a block's first line (its start carried over
    # from earlier blocks) can then be too long.
    size = min(_BLOCK_BYTES, limit)
    number = 0  # lines yielded so far
    carry = b""  # the start of a line whose end has not been read yet
    while block := handle.read(size):
        data = carry + block if carry else block
        end = data.rfind(b"\n") + 1
        if end == 0:
            if len(data) > limit:
                raise _too_long(file, number + 1)
            carry = data
            continue
        whole, carry = data[:end], data[end:]
        lines = whole.count(b"\n")
        if len(whole) > limit and whole.index(b"\n") > limit:
            yield _lines_one_by_one(file, whole, number)
            return  # not reached: that raises
        try:
            text = whole.decode("utf-8-sig" if number == 0 else "utf-8")
        except UnicodeDecodeError:
            yield _lines_one_by_one(file, whole, number)
            return  # not reached: that raises
        # newline="\\n": split at "\\n" only, line endings kept, nothing translated.
        yield io.StringIO(text, newline="\n")
        number += lines
    if carry:  # the last line, without a line ending
        yield _lines_one_by_one(file, carry, number)


def _lines_one_by_one(file: Path, data: bytes, number: int) -> Iterator[str]:
    """The lines of ``data`` (those after line ``number``), each length-checked and decoded on
    its own: the error names the line it is on."""
    parts = data.split(b"\n")
    raws = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        raws.append(parts[-1])
    for raw in raws:
        number += 1
        if len(raw) - raw.endswith(b"\n") > MAX_LINE_BYTES:
            raise _too_long(file, number)
        # the first line's byte order mark is dropped here rather than by "utf-8-sig", whose
        # error positions would not count it: the error names the byte as the file holds it
        bom = len(codecs.BOM_UTF8) if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
        try:
            yield raw[bom:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(file, number, raw, bom + exc.start) from None


def _too_long(file: Path, number: int) -> IngestError:
    return IngestError(
        f"{file}: line {number} is longer than {MAX_LINE_BYTES:,} bytes; a contact "
        "file holds one record a line (or a CSV record over a few lines)"
    )


def _unicode_bom(handle: BinaryIO) -> str | None:
    """The codec a UTF-16 or UTF-32 byte order mark names (which it then reads); rewinds."""
    start = handle.read(4)
    handle.seek(0)
    if start.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _lines_in(file: Path, handle: BinaryIO, encoding: str) -> Generator[str, None, None]:
    """Physical lines of a file in ``encoding`` (a UTF-8 BOM, if any, dropped), line endings
    kept; at most ``MAX_LINE_BYTES`` characters a line, like ``_decoded_lines``."""
    text = io.TextIOWrapper(handle, encoding=encoding, newline="")
    number = 0
    try:
        while True:
            try:
                line = text.readline(MAX_LINE_BYTES + 1)
            except UnicodeDecodeError as exc:
                raise IngestError(
                    f"{file}: line {number + 1} is not valid {encoding} ({exc.reason}); "
                    "check [ingest] encoding"
                ) from None
            if not line:
                return
            number += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith("\n"):
                raise IngestError(
                    f"{file}: line {number} is longer than {MAX_LINE_BYTES:,} characters; a "
                    "contact file holds one record a line (or a CSV record over a few lines)"
                )
            yield line.removeprefix("\ufeff") if number == 1 else line
    finally:
        with contextlib.suppress(ValueError):  # already closed: nothing left to hand back
            text.detach()  # the handle is the caller's (or the ExitStack's) to close


def _json_array_text(file: Path, lines: Iterator[str]) -> tuple[Iterator[str], str | None]:
    """For a JSON file read through ``_lines_in``: the whole text when it is one array (read
    whole, at most ``MAX_JSON_ARRAY_BYTES``), else the lines again, unread."""
    head: list[str] = []
    for line in lines:
        head.append(line)
        if line.strip():
            break
    if not head or not head[-1].lstrip().startswith("["):
        return itertools.chain(head, lines), None
    text, size = [], 0
    for line in itertools.chain(head, lines):
        size += len(line)
        if size > MAX_JSON_ARRAY_BYTES:
            raise IngestError(
                f"{file}: a JSON array file is read whole and may be at most "
                f"{MAX_JSON_ARRAY_BYTES >> 20} MiB; write bigger files as NDJSON"
            )
        text.append(line)
    return iter(()), "".join(text)


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


DELIMITERS = (",", ";", "\t")


def _read_csv(file: Path, lines: Iterator[str]) -> Iterator[RawRow]:
    head: list[str] = []  # blank lines before the header, then the header line
    for text in lines:
        head.append(text)
        if text.strip():
            break
    header_line = head[-1] if head else ""
    delimiter = max(DELIMITERS, key=header_line.count)  # the first of equals: "," for none
    # strict: broken quoting is an error, not a quote silently swallowing the rest of the file.
    reader = csv.reader(itertools.chain(head, lines), delimiter=delimiter, strict=True)
    try:
        header: list[str] = []
        for header in reader:
            if any(cell.strip() for cell in header):
                break
        else:
            raise IngestError(f"{file}: the file is empty; the first line must be the header")
        columns = _csv_columns(file, [restored(cell) for cell in header])
        done = reader.line_num  # physical lines consumed so far
        width = len(columns)
        # The loop runs once a record (a million times for a big file): the row's cells are
        # looked at joined, and one by one only where that shows something to do.
        for cells in reader:
            line, done = done + 1, reader.line_num
            text = "".join(cells)
            if "'" in text:
                cells = [restored(cell) for cell in cells]
                text = "".join(cells)
            if not text.strip():
                continue  # blank line
            if len(cells) != width and (len(cells) < width or "".join(cells[width:]).strip()):
                problem = f"row has {len(cells)} values but the header has {width} columns"
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
            "the file must have a header row, its columns separated by ',', ';' or tabs"
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
        if SURROGATE.search(name):
            return RawRow(line, values, NOT_TEXT.format(what="a key"))
        if name in values:
            return RawRow(line, values, f"key {shown(raw_key)} appears more than once")
        values[name] = _plain(item)
    return RawRow(line, values)


# JSON can spell a lone UTF-16 surrogate ("\\ud800"); it is no character and cannot be encoded.
SURROGATE = re.compile("[\ud800-\udfff]")
NOT_TEXT = "{what} holds a lone UTF-16 surrogate, which is not a character"


def _plain(value: Any) -> Any:
    """Nested pair lists back to ordinary dicts (``validate`` rejects them as nested objects)."""
    if isinstance(value, _JsonObject):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def shown(value: Any) -> str:
    """``repr`` of a value quoted in a reason, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}..."
