"""`syncd explain KEY` and `syncd runs`: why a contact changed (or did not), and what cycles did.

``explain`` reads one contact from the store: per target, the mirror's contact as that target
sees it (local), the state both sides last agreed on (base), the provider's side as last known
(the base: a cycle's export is not kept once it ends), what is pending (a write whose answer was
lost, a refusal, an open conflict), and its history (``syncd.store.history``), oldest first.
``runs`` lists the run records, newest first. Both answer in the shapes of ``Explanation`` and
``RunRecord``, whose JSON Schemas are in ``schemas/`` (``syncd.schemas``).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from syncd.commands.cycles import build_provider, open_store
from syncd.config import Config, TargetConfig
from syncd.core.contacts import normalise_email, normalise_phone
from syncd.core.projection import ListStatus, Projection, Status
from syncd.engine.stage import project_local
from syncd.errors import UnknownKey
from syncd.store import history, mirror
from syncd.store.models import Base, Conflict, Contact, InFlight, Rejection, Run

EXPLAIN_ID = "urn:syncd:schema:explain:1"
RUNS_ID = "urn:syncd:schema:runs:1"


# -- what explain answers -----------------------------------------------------------------


class ContactState(BaseModel):
    """One contact as one target sees it (custom fields under their remote names)."""

    model_config = ConfigDict(frozen=True)

    fields: dict[str, str]
    tags: list[str]
    status: Status
    list_status: ListStatus

    @classmethod
    def of(cls, p: Projection | None) -> ContactState | None:
        if p is None:
            return None
        return cls(
            fields=p.field_map, tags=sorted(p.tags), status=p.status, list_status=p.list_status
        )


class Refusal(BaseModel):
    code: str
    message: str
    retryable: bool
    at: str


class TargetView(BaseModel):
    """The contact on one target now."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    key: str | None = Field(description="The contact's key on this target (email or phone).")
    local: ContactState | None = Field(
        description="The mirror's contact as this target sees it; null: not on its list."
    )
    base: ContactState | None = Field(
        description="What both sides last agreed on; null: never agreed (or forgotten)."
    )
    remote: ContactState | None = Field(
        description="The provider's side as last known: the base (an export is not kept)."
    )
    remote_as_of: str | None = Field(
        description="When the last cycle of this target that read the whole export ended."
    )
    in_flight: ContactState | None = Field(
        description="A write sent whose answer was lost; the next export settles it."
    )
    rejection: Refusal | None = Field(description="The provider's refusal of the row, if held.")
    conflict: list[dict[str, Any]] | None = Field(
        description="Fields changed on both sides, held for `syncd resolve`."
    )


class Step(BaseModel):
    """One cycle's decision about the contact on one target."""

    model_config = ConfigDict(extra="forbid")

    at: str = Field(description="When it was written, UTC, ISO-8601 to the millisecond.")
    cycle: int | None = Field(description="The run record's id (`syncd runs`); null: local.")
    target: str | None = Field(description="null: a local write (inbox file, ingest, API).")
    case: str = Field(description="The reconciliation table's case that applied.")
    sent: dict[str, Any] | None = Field(
        description="What was sent: op, call (the provider's method), calls, fields (remote "
        "names and values), tags and status where carried, flags. Null: no call."
    )
    outcome: dict[str, Any] = Field(
        description="result: confirmed | rejected | held | applied | settled | deferred | "
        "awaiting | not_sent; with reason, code and message, local (the mirror's write), "
        "conflicts (each field and the side it took) and event (the outbox event's id, kind)."
    )


class Explanation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    targets: dict[str, TargetView]
    history: list[Step]


class RunRecord(BaseModel):
    """One cycle of one target, as its run record keeps it."""

    model_config = ConfigDict(extra="forbid")

    id: int
    target: str
    started_at: str
    finished_at: str | None
    outcome: str
    message: str
    holder: str | None
    counts: dict[str, Any] = Field(description="The cycle's summary (as `run-once --json`).")


# -- explain ------------------------------------------------------------------------------


def normalise_key(config: Config, raw: str) -> str:
    """An email or phone as the store keeps it (ValueError: neither)."""
    raw = raw.strip()
    if "@" in raw:
        return normalise_email(raw)
    return normalise_phone(raw, config.ingest.default_region)


def explain(
    config: Config, raw_key: str, target: str | None = None, db: Engine | None = None
) -> Explanation:
    try:
        key = normalise_key(config, raw_key)
    except ValueError as exc:
        raise UnknownKey(f"{raw_key!r} is not an email or phone syncd can read: {exc}") from None
    targets = config.targets(target)
    db = db or open_store(config)
    with Session(db) as session:
        column = col(Contact.email) if "@" in key else col(Contact.phone)
        contact = session.execute(select(Contact).where(column == key)).scalar_one_or_none()
        keys = {key}
        if contact is not None:
            keys |= {k for k in (contact.email, contact.phone) if k}
        views = {t.name: _target_view(config, session, t, contact, key) for t in targets}
        steps = history.for_key(session, sorted(keys), target)
    if contact is None and not steps and all(v.base is None for v in views.values()):
        raise UnknownKey(
            f"no contact {key!r} in the store: not in the mirror, at no target's base, and "
            "in no history kept (check the spelling; [history] keep says how long it lasts)"
        )
    return Explanation(
        key=key,
        targets=views,
        history=[Step(**s.to_dict()) for s in steps],
    )


def _target_view(
    config: Config, session: Session, target: TargetConfig, contact: Contact | None, key: str
) -> TargetView:
    provider = build_provider(config, target)
    caps = provider.capabilities
    provider.close()
    view = mirror.LocalView.of(target, list_consent=caps.list_consent)
    own_key = key if contact is None else getattr(contact, target.key) or None
    local = None
    if own_key is not None:
        members = mirror.local_members(session, view, [own_key])
        local = project_local(members[0], view, caps) if members else None
    base = _one(session, Base, target.name, own_key)
    flying = _one(session, InFlight, target.name, own_key)
    refused = _one(session, Rejection, target.name, own_key)
    conflict = _one(session, Conflict, target.name, own_key)
    base_state = ContactState.of(Projection.from_json(base.data)) if base else None
    return TargetView(
        provider=target.provider,
        key=own_key,
        local=ContactState.of(local),
        base=base_state,
        remote=base_state,
        remote_as_of=_last_export(session, target.name),
        in_flight=ContactState.of(Projection.from_json(flying.data)) if flying else None,
        rejection=_refusal(refused),
        conflict=json.loads(conflict.fields) if conflict else None,
    )


def _refusal(r: Rejection | None) -> Refusal | None:
    if r is None:
        return None
    return Refusal(code=r.code, message=r.message, retryable=r.retryable, at=r.at)


def _one(session: Session, table: Any, target: str, key: str | None) -> Any:
    if key is None:
        return None
    return session.get(table, (target, key))


def _last_export(session: Session, target: str) -> str | None:
    """The end of the target's latest cycle that saw the provider's whole list."""
    rows = session.execute(
        select(col(Run.finished_at), col(Run.summary))
        .where(col(Run.target) == target, col(Run.finished_at).is_not(None))
        .order_by(col(Run.id).desc())
        .limit(50)
    )
    for finished_at, summary in rows:
        counts = json.loads(summary)
        if counts.get("export_complete") and counts.get("outcome") not in ("failed", "unreachable"):
            return str(finished_at)
    return None


# -- runs ---------------------------------------------------------------------------------


def runs(
    config: Config, target: str | None = None, limit: int = 20, db: Engine | None = None
) -> list[RunRecord]:
    """The latest run records, newest first."""
    names = [t.name for t in config.targets(target)]
    db = db or open_store(config)
    stmt = select(Run).where(col(Run.target).in_(names)).order_by(col(Run.id).desc()).limit(limit)
    with Session(db) as session:
        return [
            RunRecord(
                id=r.id or 0,
                target=r.target,
                started_at=r.started_at,
                finished_at=r.finished_at,
                outcome=r.outcome,
                message=r.message,
                holder=r.holder,
                counts=json.loads(r.summary),
            )
            for r in session.execute(stmt).scalars()
        ]


# -- schemas ------------------------------------------------------------------------------


def _schema(model: type[BaseModel], schema_id: str, title: str, description: str) -> Any:
    generated = model.model_json_schema()
    generated.pop("title", None)
    generated.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id,
        "title": title,
        "description": description,
        **generated,
    }


def explain_schema() -> dict[str, Any]:
    """The JSON Schema of ``syncd explain KEY --json``."""
    return dict(
        _schema(
            Explanation,
            EXPLAIN_ID,
            "syncd explain",
            "What `syncd explain KEY --json` prints: the contact on each target now, and every "
            "cycle that decided something about it (kept for [history] keep), oldest first.",
        )
    )


def runs_schema() -> dict[str, Any]:
    """The JSON Schema of ``syncd runs --json``: an array of run records, newest first."""
    item = RunRecord.model_json_schema()
    item.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": RUNS_ID,
        "title": "syncd runs",
        "description": "What `syncd runs --json` prints: the latest cycles, newest first.",
        "type": "array",
        "items": item,
    }
