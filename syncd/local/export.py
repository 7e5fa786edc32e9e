"""The mirror out to a file: the one way out, in the shape ``syncd.local.ingest`` reads.

Guarantee: ingesting an exported file changes nothing (every row counts as unchanged).

- Only live contacts (not tombstones) are written, ordered by id; with ``list_name`` only the
  members of that local list, each still with all of its lists.
- NDJSON: one object per contact: ``email``, ``phone``, ``status``, ``tags`` and ``lists`` (arrays),
  then each custom field as a top-level key, as in a CSV column. A missing email or phone is null.
- CSV: header ``email, phone, status, tags, lists``, then every custom field name in use, sorted;
  tags and lists are comma-joined. A contact without a field has an empty cell, which ingest reads
  as "remove the field": a no-op for that contact.
- Reserved names (email, phone, tags, lists, status, delete; any case) always mean the column, so
  a stored custom field with such a name (ingest never stores one) is left out of the export
  rather than let it be read back as the column.

Contacts are read in chunks by id (keyset paging), so memory does not grow with the mirror. The
CSV header needs one extra streamed pass over the ``fields`` column. A field that first appears
between the two passes is left out of that export; re-ingesting the file leaves it untouched.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from syncd.local.ingest.read import RESERVED
from syncd.store.models import Contact, Membership

Format = Literal["ndjson", "csv"]
CHUNK_SIZE = 1000
HEADER: tuple[str, ...] = ("email", "phone", "status", "tags", "lists")


@dataclass(frozen=True, slots=True)
class _Row:
    email: str | None
    phone: str | None
    status: str
    tags: list[str]
    lists: list[str]
    fields: dict[str, Any]  # custom fields worth writing: no reserved names, no empty values


def export_contacts(
    engine: Engine, out: TextIO, fmt: Format = "ndjson", list_name: str | None = None
) -> int:
    """Write the live contacts (of ``list_name``, if given) to ``out``; return how many.

    For CSV, open ``out`` with ``newline=""`` so values holding line breaks survive.
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
            writer.writerow([*HEADER, *names])
            for row in _live_rows(session, list_name):
                cells = [row.email or "", row.phone or "", row.status]
                cells += [",".join(row.tags), ",".join(row.lists)]
                cells += [_cell(row.fields.get(name)) for name in names]
                writer.writerow(cells)
                written += 1
        else:
            for row in _live_rows(session, list_name):
                record: dict[str, Any] = {
                    "email": row.email,
                    "phone": row.phone,
                    "status": row.status,
                    "tags": row.tags,
                    "lists": row.lists,
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
        memberships = select(Membership.contact_id, Membership.list_name).where(
            col(Membership.contact_id).in_(ids)
        )
        for contact_id, name in session.exec(memberships.order_by(col(Membership.list_name))):
            lists[contact_id].append(name)
        for contact in chunk:
            yield _Row(
                email=contact.email,
                phone=contact.phone,
                status=contact.status,
                tags=sorted(json.loads(contact.tags) or ()),
                lists=lists[contact.id],
                fields=_writable(json.loads(contact.fields) or {}),
            )
        last_id = chunk[-1].id or last_id
        session.expunge_all()  # keep the identity map from growing with the export


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
