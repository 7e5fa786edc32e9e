"""The ingest API's side of the mirror: a request body of contact records applied once, and one
contact read back.

:func:`apply_body` takes the body of ``POST /v1/contacts`` (NDJSON, or one JSON array of
objects, in the inbox-record schema) through the very steps an inbox file takes: the records
are read by ``syncd.local.ingest.read`` (the same limits), checked by ``ingest.checked`` and
written by ``ingest.apply_stream``, so the API and files share one validation and one write path
(a bad line rejected with its reason while the good ones apply; consent never re-activated by a
revival; keys normalised the same way). The whole request is ONE transaction, together with
the answer kept under its ``Idempotency-Key``: a retried request finds that answer under the
mirror's write lock and gets it again, without applying anything twice, whatever crashed in
between. A key is kept for ``IDEMPOTENCY_SECONDS``; the same key with a different body is
refused (422) rather than answered with another request's result.

The answer (:class:`IntakeAnswer`, ``schemas/ingest-answer.schema.json``) counts what applied
and lists each rejected line; the local lists the request touched go back to the caller, who
syncs their targets at once (the daemon's inbox hook). The HTTP side (token, size, methods) is
``syncd.commands.api_routes``'s.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from syncd.config import IngestConfig
from syncd.core.contacts import normalise_email, normalise_phone
from syncd.errors import IngestError
from syncd.local.ingest.check import checked
from syncd.local.ingest.read import read_rows
from syncd.local.ingest.write import apply_stream
from syncd.store import mirror
from syncd.store.models import Contact, IngestRequest, Membership

#: How long an answer stays findable by its Idempotency-Key (a client's retries span minutes).
IDEMPOTENCY_SECONDS = 24 * 3600
MAX_KEY_CHARS = 255
ANSWER_SCHEMA_ID = "urn:syncd:schema:ingest-answer:1"

# The reader names a file in its messages and tells NDJSON from CSV by the suffix: the body is
# read as an NDJSON "file" of this name, which the messages then lose.
_BODY_NAME = "request.ndjson"


class RejectedLine(BaseModel):
    """A record that was not applied, and why."""

    model_config = ConfigDict(frozen=True)

    line: int = PydanticField(ge=1, description="Line of the body it starts on, from 1.")
    key: str = PydanticField(description="Its email or phone as far as it could be read, or ''.")
    reason: str


class IntakeAnswer(BaseModel):
    """The answer of POST /v1/contacts: what applied, and each rejected line."""

    model_config = ConfigDict(frozen=True)

    applied: int = PydanticField(ge=0, description="Records applied: created + updated + ...")
    created: int = PydanticField(ge=0, description="Including contacts revived from deletion.")
    updated: int = PydanticField(ge=0)
    deleted: int = PydanticField(ge=0)
    unchanged: int = PydanticField(ge=0)
    rejected: list[RejectedLine] = PydanticField(description="Each record not applied, by line.")


def answer_schema() -> dict[str, Any]:
    """The JSON Schema of the answer, as checked in at schemas/ingest-answer.schema.json."""
    generated = IntakeAnswer.model_json_schema()
    generated.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": ANSWER_SCHEMA_ID,
        "title": "syncd ingest API answer",
        **generated,
    }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the route answers: a status, a JSON body, and the local lists that changed."""

    status: int
    body: dict[str, Any]
    lists: frozenset[str] = frozenset()
    replayed: bool = False  # the stored answer of an earlier request with the same key


def key_problem(key: str) -> str | None:
    """Why an ``Idempotency-Key`` header cannot be used (None: it can)."""
    if not key or len(key) > MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        return f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters"
    return None


def apply_body(
    engine: Engine,
    config: IngestConfig,
    body: bytes,
    idempotency_key: str | None = None,
    now: float | None = None,
) -> Outcome:
    """Read, check and apply one request body in one transaction (see the module docstring)."""
    at = time.time() if now is None else now
    try:
        # A body is small (the route caps its size): it is read and checked whole first, so
        # that an unreadable body is answered 400 before the store is touched.
        items = list(checked(read_rows(_BODY_NAME, io.BytesIO(body)), config))
    except IngestError as exc:
        reason = str(exc).removeprefix(f"{Path(_BODY_NAME)}: ")
        return Outcome(400, {"status": "error", "reason": f"body: {reason}"})
    digest = hashlib.sha256(body).hexdigest()
    with engine.begin() as conn:
        # The write lock first: a retry arriving while the first request is applied waits for
        # it and then finds its answer.
        mirror.take_write_turn(conn)
        if idempotency_key is not None:
            conn.execute(
                delete(IngestRequest).where(
                    col(IngestRequest.created_at) < at - IDEMPOTENCY_SECONDS
                )
            )
            earlier = conn.execute(
                select(IngestRequest).where(col(IngestRequest.key) == idempotency_key)
            ).first()
            if earlier is not None:
                if earlier.body_sha256 != digest:
                    reason = "this Idempotency-Key was used with a different body"
                    return Outcome(422, {"status": "error", "reason": reason})
                return Outcome(200, json.loads(earlier.answer), replayed=True)
        # Joins this transaction: nothing of it commits before the answer is stored with it.
        report = apply_stream(conn, items, source="POST /v1/contacts")
        answer = IntakeAnswer(
            applied=report.applied,
            created=report.created,
            updated=report.updated,
            deleted=report.deleted,
            unchanged=report.unchanged,
            rejected=[
                RejectedLine(line=r.line, key=r.key, reason=r.reason) for r in report.rejected
            ],
        ).model_dump(mode="json")
        if idempotency_key is not None:
            conn.execute(
                insert(IngestRequest).values(
                    key=idempotency_key,
                    body_sha256=digest,
                    answer=json.dumps(answer, ensure_ascii=False),
                    created_at=at,
                )
            )
    return Outcome(200, answer, frozenset(report.lists))


def read_contact(engine: Engine, config: IngestConfig, raw_key: str) -> dict[str, Any] | None:
    """The mirror's live contact with this email or phone, as the ingest schema spells it."""
    try:
        if "@" in raw_key:
            column, key = Contact.email, normalise_email(raw_key)
        else:
            column, key = Contact.phone, normalise_phone(raw_key, config.default_region)
    except ValueError:
        return None
    with Session(engine) as session:
        contact = session.execute(
            select(Contact).where(col(column) == key, col(Contact.deleted).is_(False))
        ).scalar_one_or_none()
        if contact is None:
            return None
        memberships = session.execute(
            select(col(Membership.list_name), col(Membership.state))
            .where(col(Membership.contact_id) == contact.id)
            .order_by(col(Membership.list_name))
        ).all()
    return {
        "email": contact.email,
        "phone": contact.phone,
        "status": contact.status,
        "fields": json.loads(contact.fields),
        "tags": json.loads(contact.tags),
        "lists": [name for name, _state in memberships],
        "unsubscribed_lists": [name for name, state in memberships if state == "unsubscribed"],
    }
