"""The canonical shape of one contact as one target sees it.

A *projection* is what reconciliation compares: the contact's key (normalised email or phone),
the mapped custom fields under their remote names, its tags and its consent: the contact's own
``status`` (every list at once) and ``list_status``, its consent on the target's list alone
(DESIGN §9: a person can leave one list and stay on another). Local
contacts, the base and the provider's export are all turned into projections so that the three
can be compared by a digest, and only the keys whose digests differ need Python's attention.

A ``RemoteChange`` is a pair of them: a contact before and after a change that came from the
provider, as the engine applies it to the mirror and the outbox turns it into an event.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from syncd.core.jsontext import flat_encoder, read_json

Status = Literal["active", "unsubscribed", "blocked"]
STATUSES: tuple[Status, ...] = ("active", "unsubscribed", "blocked")
OPTED_OUT: frozenset[str] = frozenset({"unsubscribed", "blocked"})
#: consent on one list: blocking is the contact's own status, never one list's
ListStatus = Literal["active", "unsubscribed"]
LIST_STATUSES: tuple[ListStatus, ...] = ("active", "unsubscribed")


def is_opted_out(status: str) -> bool:
    return status in OPTED_OUT


@dataclass(frozen=True, slots=True)
class Projection:
    """One contact as one target sees it. Empty field values are dropped: '' means unset.

    ``status`` is the contact's own consent, for every list; ``list_status`` its consent on
    this target's list only (``unsubscribed``: the person left this list and stays on others).
    A contact opted out as a whole is unsubscribed from every list, this one included: ``build``
    sets that, so the two sides compare alike however each records it (a provider that keeps an
    address-level status and one that can only mark the list).
    """

    key: str
    fields: tuple[tuple[str, str], ...] = ()
    tags: frozenset[str] = field(default_factory=frozenset)
    status: Status = "active"
    list_status: ListStatus = "active"
    # ``to_json``'s text, kept once made: a create is journalled, sent and made the base from
    # the same projection, and each of those wanted the text (and the base its digest) again
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        key: str,
        fields: Mapping[str, str | None] | None = None,
        tags: Iterable[str] = (),
        status: str = "active",
        list_status: str = "active",
    ) -> Projection:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        if status in OPTED_OUT:
            list_status = "unsubscribed"
        if list_status not in LIST_STATUSES:
            raise ValueError(f"unknown list status {list_status!r}")
        kept = tuple(sorted((k, v) for k, v in (fields or {}).items() if v not in (None, "")))
        return cls(
            key=key,
            fields=kept,
            tags=frozenset(t for t in tags if t),
            status=status,
            list_status=list_status,
        )

    @property
    def mailable(self) -> bool:
        """May be mailed on this list: opted out neither as a whole nor from this list."""
        return not is_opted_out(self.status) and self.list_status == "active"

    @property
    def field_map(self) -> dict[str, str]:
        return dict(self.fields)

    def replace(
        self,
        *,
        fields: Mapping[str, str | None] | None = None,
        tags: Iterable[str] | None = None,
        status: str | None = None,
        list_status: str | None = None,
    ) -> Projection:
        return Projection.build(
            self.key,
            self.field_map if fields is None else fields,
            self.tags if tags is None else tags,
            self.status if status is None else status,
            self.list_status if list_status is None else list_status,
        )

    def to_json(self) -> str:
        """Canonical JSON: equal projections give equal text (and so equal digests).

        ``[key, [[field, value], ...], [tag, ...], status]`` with fields and tags sorted: a
        list, not an object, because it is written for every contact of every cycle and this
        form needs no key sorting. A list opt-out of a contact not opted out as a whole adds a
        fifth item, ``"unsubscribed"``; otherwise the text is the one stores kept before consent
        per list existed, so their bases keep their digests.
        """
        text = self._json
        if text is None:
            if self.list_status == "active" or is_opted_out(self.status):
                text = compact_json([self.key, self.fields, sorted(self.tags), self.status])
            else:
                parts = [self.key, self.fields, sorted(self.tags), self.status, self.list_status]
                text = compact_json(parts)
            object.__setattr__(self, "_json", text)  # frozen: set once, on first use
        return text

    @classmethod
    def from_json(cls, text: str, *, keep_text: bool = False) -> Projection:
        """The projection ``to_json`` wrote. Its text is canonical (fields sorted and none
        empty, tags sorted), so it is taken as it is rather than built again; a status
        ``build`` would refuse still goes through it, and is refused. ``keep_text``: the text
        is ``to_json``'s own (as ``local_seen`` stores it), kept so that it is not encoded
        again."""
        parts = read_json(text)
        if len(parts) == 4:  # no list status of its own: the contact's status says it
            key, fields, tags, status = parts
            if status not in STATUSES:
                return cls.build(key, dict(fields), tags, status)
            list_status: ListStatus = "unsubscribed" if status in OPTED_OUT else "active"
        else:
            key, fields, tags, status, *rest = parts
            if status not in STATUSES or (rest and rest[0] not in LIST_STATUSES):
                return cls.build(key, dict(fields), tags, status, rest[0] if rest else "active")
            list_status = rest[0]
        # the fields set through their slots, as ``__init__`` does but without looking each
        # one up on the class (a first push reads one projection per contact)
        p = _new(cls)
        _set_key(p, key)
        _set_fields(p, tuple(map(tuple, fields)))
        _set_tags(p, frozenset(tags) if tags else _NO_TAGS)
        _set_status(p, status)
        _set_list_status(p, list_status)
        _set_json(p, text if keep_text else None)
        return p

    def digest(self) -> str:
        return digest_of(self.to_json())


#: ``from_json``'s way in: a new object and the descriptor of each of its slots
_new = object.__new__
_NO_TAGS: frozenset[str] = frozenset()
_slots = vars(Projection)
_set_key = _slots["key"].__set__
_set_fields = _slots["fields"].__set__
_set_tags = _slots["tags"].__set__
_set_status = _slots["status"].__set__
_set_list_status = _slots["list_status"].__set__
_set_json = _slots["_json"].__set__


@dataclass(frozen=True, slots=True)
class RemoteChange:
    """A change that came from the provider and was applied to the mirror (for the outbox)."""

    target: str
    key: str
    kind: str  # the reconciliation case: pull, create_local, remote_deleted, merge, ...
    before: Projection | None
    after: Projection | None


#: ``items`` as compact JSON (no spaces, text not escaped to ASCII): the text of a projection
#: (``to_json``); a first push encodes one per member (0.9 µs against 2.3 through
#: ``JSONEncoder.encode``).
compact_json: Callable[[list[Any]], str] = flat_encoder(sort_keys=False)


def digest_of(canonical_json: str) -> str:
    return hashlib.blake2b(canonical_json.encode(), digest_size=16).hexdigest()
