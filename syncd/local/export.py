"""The mirror out to a file: the one way out, in the shape ``syncd.local.ingest`` reads.

Guarantee: ingesting an exported file changes nothing (every row counts as unchanged), list
states included, for NDJSON and for CSV as written by default.

- Only live contacts (not tombstones) are written, ordered by id; with ``list_name`` only the
  members of that local list (in either state), each still with all of its lists.
- NDJSON: one object per contact: ``email``, ``phone``, ``status``, ``tags``, ``lists`` and
  ``unsubscribed_lists`` (arrays), then each custom field as a top-level key, as in a CSV column.
  A missing email or phone is null.
- ``lists`` holds every list the contact is on, ``unsubscribed_lists`` those of them it has left
  (membership state ``unsubscribed``, DESIGN §9): ingest reads the pair back as the same
  memberships and states.
- CSV: header ``email, phone, status, tags, lists, unsubscribed_lists``, then every custom field
  name in use, sorted; the list columns are comma-joined. A contact without a field has an empty
  cell, which ingest reads as "remove the field": a no-op for that contact.
- CSV cells are neutralised for spreadsheets (OWASP, CSV injection): a cell starting with ``=``,
  ``+``, ``-``, ``@``, a tab or a carriage return, possibly after apostrophes, gets one more
  apostrophe in front (``syncd.local.ingest.read.neutralised``), so a phone reads ``'+375...``
  and stays text. Ingest removes exactly that apostrophe, so the file still round-trips, and a
  spreadsheet shows the cell without it and saves it without it. ``raw=True`` writes the stored
  text as it is, for programs that read the CSV themselves; ingest reads such a file back
  unchanged but for a value that itself starts with apostrophes before one of those characters
  (it loses one), so the round trip is the default form's or NDJSON's.
- Reserved names (email, phone, tags, lists, unsubscribed_lists, status, delete; any case)
  always mean the column, so a stored custom field with such a name (ingest never stores one) is
  left out of the export rather than let it be read back as the column.

Contacts are read in chunks by id (keyset paging), so memory does not grow with the mirror. The
CSV header needs one extra streamed pass over the ``fields`` column. A field that first appears
between the two passes is left out of that export; re-ingesting the file leaves it untouched.

``list_problem`` says why a list asked for names nothing (no contact is on it and no target
names it), so that ``syncd export --list`` refuses a misspelt name instead of printing nothing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from syncd.local.ingest.read import RESERVED, neutralised
from syncd.store.models import Contact, Membership

Format = Literal["ndjson", "csv"]
CHUNK_SIZE = 1000
HEADER: tuple[str, ...] = ("email", "phone", "status", "tags", "lists", "unsubscribed_lists")
_LISTS_SHOWN = 10  # known list names an unknown-list message shows


@dataclass(frozen=True, slots=True)
class _Row:
    email: str | None
    phone: str | None
    status: str
    tags: list[str]
    lists: list[str]  # every list the contact is on
    unsubscribed_lists: list[str]  # those of them it has left
    fields: dict[str, Any]  # custom fields worth writing: no reserved names, no empty values


def export_contacts(
    engine: Engine,
    out: TextIO,
    fmt: Format = "ndjson",
    list_name: str | None = None,
    *,
    raw: bool = False,
) -> int:
    """Write the live contacts (of ``list_name``, if given) to ``out``; return how many.

    For CSV, open ``out`` with ``newline=""`` so values holding line breaks survive; ``raw``
    leaves its cells as stored instead of neutralising them for spreadsheets.
    """
    if fmt not in ("ndjson", "csv"):
        raise ValueError(f"unknown export format {fmt!r} (expected ndjson or csv)")
    written = 0
    with Session(engine) as session:
        if fmt == "csv":
            names = _field_names(session, list_name)
            # The default "\r\n" terminator matters: the writer quotes a value holding any
            # character of the terminator, and a bare "\r" left unquoted would split the row.
            writer = csv.writer(out)
            safe: Callable[[str], str] = _as_stored if raw else neutralised
            writer.writerow([safe(name) for name in (*HEADER, *names)])
            for row in _live_rows(session, list_name):
                cells = [row.email or "", row.phone or "", row.status]
                cells += [",".join(row.tags), ",".join(row.lists)]
                cells += [",".join(row.unsubscribed_lists)]
                cells += [_cell(row.fields.get(name)) for name in names]
                writer.writerow([safe(cell) for cell in cells])
                written += 1
        else:
            for row in _live_rows(session, list_name):
                record: dict[str, Any] = {
                    "email": row.email,
                    "phone": row.phone,
                    "status": row.status,
                    "tags": row.tags,
                    "lists": row.lists,
                    "unsubscribed_lists": row.unsubscribed_lists,
                }
                record.update(sorted(row.fields.items()))
                out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
                written += 1
    return written


def _live(statement: SelectOfScalar[Any], list_name: str | None) -> SelectOfScalar[Any]:
    statement = statement.where(col(Contact.deleted).is_(False))
    if list_name is not None:
        members = select(Membership.contact_id).where(Membership.list_name == list_name)
        statement = statement.where(col(Contact.id).in_(members))
    return statement


def _field_names(session: Session, list_name: str | None) -> list[str]:
    names: set[str] = set()
    statement = _live(select(Contact.fields), list_name).execution_options(yield_per=CHUNK_SIZE)
    for text in session.exec(statement):
        names.update(_writable(json.loads(text) or {}))
    return sorted(names)


def _live_rows(session: Session, list_name: str | None) -> Iterator[_Row]:
    last_id = 0
    while True:
        statement = _live(select(Contact), list_name).where(col(Contact.id) > last_id)
        chunk = session.exec(statement.order_by(col(Contact.id)).limit(CHUNK_SIZE)).all()
        if not chunk:
            return
        ids = [c.id for c in chunk]
        lists: dict[int | None, list[str]] = {i: [] for i in ids}
        left: dict[int | None, list[str]] = {i: [] for i in ids}
        memberships = select(Membership.contact_id, Membership.list_name, Membership.state).where(
            col(Membership.contact_id).in_(ids)
        )
        for contact_id, name, state in session.exec(
            memberships.order_by(col(Membership.list_name))
        ):
            lists[contact_id].append(name)
            if state == "unsubscribed":
                left[contact_id].append(name)
        for contact in chunk:
            yield _Row(
                email=contact.email,
                phone=contact.phone,
                status=contact.status,
                tags=sorted(json.loads(contact.tags) or ()),
                lists=lists[contact.id],
                unsubscribed_lists=left[contact.id],
                fields=_writable(json.loads(contact.fields) or {}),
            )
        last_id = chunk[-1].id or last_id
        session.expunge_all()  # keep the identity map from growing with the export


def list_problem(engine: Engine, list_name: str, named: Collection[str] = ()) -> str | None:
    """Why exporting ``list_name`` would print nothing that could be meant; None if it is known.

    A list is known when a target names it (``named``: the targets' local lists) or a contact is
    on it. Anything else is most likely a misspelling, better refused than exported as nothing.
    """
    if list_name in named:
        return None
    with Session(engine) as session:
        on_it = select(Membership.contact_id).where(Membership.list_name == list_name).limit(1)
        if session.exec(on_it).first() is not None:
            return None
        in_use = select(Membership.list_name).distinct().order_by(col(Membership.list_name))
        known = sorted({*named, *session.exec(in_use.limit(_LISTS_SHOWN + 1))})
    shown = ", ".join(known[:_LISTS_SHOWN]) + (", ..." if len(known) > _LISTS_SHOWN else "")
    return f"no list {list_name!r}: no contact is on it and no target names it" + (
        f" (lists: {shown})" if known else " (the mirror has no lists)"
    )


def _as_stored(cell: str) -> str:
    return cell


def _writable(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value
        for name, value in fields.items()
        if value not in (None, "") and name.strip().lower() not in RESERVED
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
