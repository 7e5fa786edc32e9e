"""The change event: what the outbox tells the company's systems about a change that came from a
provider, and the JSON Schema of one event (``schemas/change-event.schema.json``).

A ``ChangeEvent`` is built from the ``RemoteChange`` the engine hands over
(``syncd.core.projection``): its ``kind`` (consent first, then signup, delete or update), only
the fields that changed, and the whole contact before and after. It writes nothing:
``syncd.local.outbox`` records it and writes it to the hourly files, and
``syncd schemas show change-event`` prints its schema.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer
from pydantic import Field as PydanticField
from pydantic.json_schema import SkipJsonSchema

from syncd.clock import stamp
from syncd.core.projection import OPTED_OUT, Projection, RemoteChange, Status

Kind = Literal["signup", "update", "unsubscribe", "block", "resubscribe", "delete"]

SCHEMA_ID = "urn:syncd:schema:change-event:1"
_TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"


# -- the event ----------------------------------------------------------------------------


class FieldChange(BaseModel):
    """One custom field: its value before and after (null: not set)."""

    model_config = ConfigDict(frozen=True)

    before: str | None
    after: str | None


class TagsChange(BaseModel):
    """The contact's tags before and after, sorted ([] when the contact did not exist)."""

    model_config = ConfigDict(frozen=True)

    before: list[str]
    after: list[str]


class StatusChange(BaseModel):
    """The consent status before and after (null when the contact did not exist)."""

    model_config = ConfigDict(frozen=True)

    before: Status | None
    after: Status | None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class ChangeSet(BaseModel):
    """Only what changed: custom fields by their remote name, plus 'tags' and 'status'."""

    # Fields are open-ended (each target maps its own), so they are typed extras; ``tags`` and
    # ``status`` are the two names the config also reserves in its conflict table.
    model_config = ConfigDict(frozen=True, extra="allow")

    __pydantic_extra__: dict[str, FieldChange] = PydanticField(init=False)
    # SkipJsonSchema and no default in the schema: None only means "unchanged" and is never
    # written (see the serializer), so the documented format must not offer null.
    tags: TagsChange | SkipJsonSchema[None] = PydanticField(None, json_schema_extra=_no_default)
    status: StatusChange | SkipJsonSchema[None] = PydanticField(None, json_schema_extra=_no_default)

    @model_serializer(mode="wrap")
    def _only_what_changed(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        out = {k: v for k, v in data.items() if k not in ("tags", "status")}
        for name in ("tags", "status"):
            if data.get(name) is not None:
                out[name] = data[name]
        return out


class ProjectionState(BaseModel):
    """The whole contact as the target sees it (custom fields under their remote names)."""

    model_config = ConfigDict(frozen=True)

    fields: dict[str, str]
    tags: list[str]
    status: Status

    @classmethod
    def of(cls, p: Projection) -> ProjectionState:
        return cls(fields=dict(p.fields), tags=sorted(p.tags), status=p.status)


class ChangeEvent(BaseModel):
    """A change that came from a provider and was applied to the mirror."""

    model_config = ConfigDict(frozen=True)

    id: str = PydanticField(
        pattern=r"^[0-9a-f]{32}$",
        description="Unique event id (uuid4, hex); the same event may be delivered twice.",
    )
    time: str = PydanticField(
        pattern=_TIME_PATTERN,
        json_schema_extra={"format": "date-time"},
        description="When the change was applied to the mirror, UTC, ISO-8601.",
    )
    target: str = PydanticField(description="The configured target (provider list) it came from.")
    provider: str = PydanticField(description="The provider, e.g. 'unisender'.")
    key: str = PydanticField(description="The contact's key on this target: email or phone.")
    kind: Kind = PydanticField(
        description="unsubscribe / block / resubscribe: the consent status changed (this "
        "outranks the rest); signup: the contact was born at the provider; delete: removed at "
        "the provider; update: fields or tags edited at the provider."
    )
    changes: ChangeSet = PydanticField(description="Only what changed, each as before/after.")
    before: ProjectionState | None = PydanticField(
        description="The contact before the change; null for a signup."
    )
    after: ProjectionState | None = PydanticField(
        description="The contact after the change; null for a delete."
    )
    cycle: str = PydanticField(
        description="Id of the sync cycle that applied it (the 'cycle' of that run's summary)."
    )

    @classmethod
    def from_remote_change(
        cls, change: RemoteChange, provider: str, cycle: str, now: datetime | None = None
    ) -> ChangeEvent:
        before, after = change.before, change.after
        if before is None and after is None:
            raise ValueError(f"{change.target}/{change.key}: a change needs a before or an after")
        return cls(
            id=uuid.uuid4().hex,
            time=stamp(now),  # a naive time is taken as UTC, never local
            target=change.target,
            provider=provider,
            key=change.key,
            kind=_kind(before, after),
            changes=_changes(before, after),
            before=None if before is None else ProjectionState.of(before),
            after=None if after is None else ProjectionState.of(after),
            cycle=cycle,
        )

    @property
    def hour(self) -> str:
        """``YYYY-MM-DDTHH``: which hourly file the event belongs to."""
        return self.time[:13]


def _kind(before: Projection | None, after: Projection | None) -> Kind:
    # Consent comes first: a consumer that acts only on unsubscribes must never miss one, even
    # for a contact first seen already unsubscribed (before None, after unsubscribed).
    old = None if before is None else before.status
    if after is not None and after.status != old:
        if after.status == "unsubscribed":
            return "unsubscribe"
        if after.status == "blocked":
            return "block"
        if old in OPTED_OUT:
            return "resubscribe"
    if before is None:
        return "signup"
    if after is None:
        return "delete"
    return "update"


def _changes(before: Projection | None, after: Projection | None) -> ChangeSet:
    old = {} if before is None else before.field_map
    new = {} if after is None else after.field_map
    fields = {
        name: FieldChange(before=old.get(name), after=new.get(name))
        for name in sorted(old.keys() | new.keys())
        # A field literally named tags/status would be shadowed by the contact's own; its values
        # are still in before/after.
        if old.get(name) != new.get(name) and name not in ("tags", "status")
    }
    old_tags = [] if before is None else sorted(before.tags)
    new_tags = [] if after is None else sorted(after.tags)
    old_status = None if before is None else before.status
    new_status = None if after is None else after.status
    return ChangeSet.model_validate(
        {
            **fields,
            "tags": TagsChange(before=old_tags, after=new_tags) if old_tags != new_tags else None,
            "status": (
                StatusChange(before=old_status, after=new_status)
                if old_status != new_status
                else None
            ),
        }
    )


# -- the schema ---------------------------------------------------------------------------


def event_schema() -> dict[str, Any]:
    """The JSON Schema of one NDJSON line, as checked in at schemas/change-event.schema.json."""
    generated = ChangeEvent.model_json_schema()
    generated.pop("title", None)
    generated.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "syncd change event",
        "description": "One line of an outbox file (<outbox>/changes-YYYY-MM-DDTHH.ndjson, UTC "
        "hour of the event): a change that came from a provider and was applied to the mirror. "
        "Events are delivered at least once: drop duplicates by id.",
        **generated,
    }
