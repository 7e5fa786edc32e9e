"""The change event: what the outbox tells the company's systems about a change that came from a
provider, and the JSON Schema of one event (``schemas/change-event.schema.json``).

A ``ChangeEvent`` is built from the ``RemoteChange`` the engine hands over
(``syncd.core.projection``): its ``kind`` (consent first, then signup, delete or update), only
the fields that changed, and the whole contact before and after. It writes nothing:
``syncd.local.outbox`` records it and writes it to the hourly files, and
``syncd schemas show change-event`` prints its schema.

Consent is said twice over (DESIGN §9, consent per list): ``status`` is the contact's own, for
every list; ``list_status`` its consent on the target's list alone (``unsubscribed``: the person
left this list and stays on others). The kind ranks the changes, opt-outs before opt-ins and the
whole contact before one list: ``block``/``unsubscribe`` > ``list_unsubscribe`` > ``resubscribe``
> ``list_resubscribe`` > ``signup`` > ``delete`` > ``update``, so a consumer that acts on
opt-outs alone never misses one. ``list_status`` and ``list`` were added to the format later:
an event without them is still valid (``list_status`` then reads ``active``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer
from pydantic import Field as PydanticField
from pydantic.json_schema import SkipJsonSchema

from syncd.clock import stamp
from syncd.core.projection import OPTED_OUT, ListStatus, Projection, RemoteChange, Status

Kind = Literal[
    "signup",
    "update",
    "unsubscribe",
    "block",
    "resubscribe",
    "delete",
    "list_unsubscribe",
    "list_resubscribe",
]
#: Names the event's own parts take in ``changes``; a custom field of that name is not repeated.
_OWN = ("tags", "status", "list_status")

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


class ListStatusChange(BaseModel):
    """The consent on the target's list before and after (null when the contact did not exist)."""

    model_config = ConfigDict(frozen=True)

    before: ListStatus | None
    after: ListStatus | None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class ChangeSet(BaseModel):
    """Only what changed: custom fields by their remote name, 'tags', 'status', 'list_status'."""

    # Fields are open-ended (each target maps its own), so they are typed extras; ``tags`` and
    # ``status`` are the two names the config also reserves in its conflict table.
    model_config = ConfigDict(frozen=True, extra="allow")

    __pydantic_extra__: dict[str, FieldChange] = PydanticField(init=False)
    # SkipJsonSchema and no default in the schema: None only means "unchanged" and is never
    # written (see the serializer), so the documented format must not offer null.
    tags: TagsChange | SkipJsonSchema[None] = PydanticField(None, json_schema_extra=_no_default)
    status: StatusChange | SkipJsonSchema[None] = PydanticField(None, json_schema_extra=_no_default)
    list_status: ListStatusChange | SkipJsonSchema[None] = PydanticField(
        None, json_schema_extra=_no_default
    )

    @model_serializer(mode="wrap")
    def _only_what_changed(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        out = {k: v for k, v in data.items() if k not in _OWN}
        for name in _OWN:
            if data.get(name) is not None:
                out[name] = data[name]
        return out


class ProjectionState(BaseModel):
    """The whole contact as the target sees it (custom fields under their remote names)."""

    model_config = ConfigDict(frozen=True)

    fields: dict[str, str]
    tags: list[str]
    status: Status = PydanticField(description="The contact's own consent, for every list.")
    list_status: ListStatus = PydanticField(
        "active",
        description="Its consent on the target's list alone: unsubscribed when the person left "
        "this list and stays on others. Always written; absent (older events): active.",
    )

    @classmethod
    def of(cls, p: Projection) -> ProjectionState:
        return cls(
            fields=dict(p.fields), tags=sorted(p.tags), status=p.status, list_status=p.list_status
        )


class ChangeEvent(BaseModel):
    """A change that came from a provider and was applied to the mirror."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, serialize_by_alias=True)

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
    list_name: str | SkipJsonSchema[None] = PydanticField(
        None,
        alias="list",
        description="The local list the target feeds; absent when the event was recorded "
        "without it.",
        json_schema_extra=_no_default,
    )
    provider: str = PydanticField(description="The provider, e.g. 'unisender'.")
    key: str = PydanticField(description="The contact's key on this target: email or phone.")
    kind: Kind = PydanticField(
        description="unsubscribe / block / resubscribe: the contact's own consent status "
        "changed; list_unsubscribe / list_resubscribe: its consent on the target's list alone "
        "(list_status) changed. Consent outranks the rest, opt-outs first: block, unsubscribe, "
        "list_unsubscribe, resubscribe, list_resubscribe. signup: the contact was born at the "
        "provider; delete: removed at the provider; update: fields or tags edited at the "
        "provider."
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

    @model_serializer(mode="wrap")
    def _list_when_known(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("list", "") is None:
            del data["list"]  # never null: absent means the recorder did not know it
        return data

    @classmethod
    def from_remote_change(
        cls,
        change: RemoteChange,
        provider: str,
        cycle: str,
        now: datetime | None = None,
        list_name: str | None = None,
    ) -> ChangeEvent:
        before, after = change.before, change.after
        if before is None and after is None:
            raise ValueError(f"{change.target}/{change.key}: a change needs a before or an after")
        return cls(
            id=uuid.uuid4().hex,
            time=stamp(now),  # a naive time is taken as UTC, never local
            target=change.target,
            list_name=list_name,
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
    # Consent comes first, opt-outs before opt-ins and the whole contact before one list: a
    # consumer that acts only on unsubscribes must never miss one, even for a contact first seen
    # already unsubscribed (before None, after unsubscribed) or one that came back to the
    # provider as a whole while leaving this list.
    old = None if before is None else before.status
    old_list = None if before is None else before.list_status
    if after is not None:
        status_changed = after.status != old
        list_changed = after.list_status != old_list
        if status_changed and after.status == "blocked":
            return "block"
        if status_changed and after.status == "unsubscribed":
            return "unsubscribe"
        if list_changed and after.list_status == "unsubscribed":
            return "list_unsubscribe"
        if status_changed and old in OPTED_OUT:
            return "resubscribe"
        if list_changed and old_list == "unsubscribed":
            return "list_resubscribe"
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
        # A field literally named tags/status/list_status would be shadowed by the contact's
        # own; its values are still in before/after.
        if old.get(name) != new.get(name) and name not in _OWN
    }
    old_tags = [] if before is None else sorted(before.tags)
    new_tags = [] if after is None else sorted(after.tags)
    old_status = None if before is None else before.status
    new_status = None if after is None else after.status
    old_list = None if before is None else before.list_status
    new_list = None if after is None else after.list_status
    return ChangeSet.model_validate(
        {
            **fields,
            "tags": TagsChange(before=old_tags, after=new_tags) if old_tags != new_tags else None,
            "status": (
                StatusChange(before=old_status, after=new_status)
                if old_status != new_status
                else None
            ),
            "list_status": (
                ListStatusChange(before=old_list, after=new_list) if old_list != new_list else None
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
