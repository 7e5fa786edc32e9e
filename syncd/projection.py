"""The canonical shape of one contact as one target sees it.

A *projection* is what reconciliation compares: the contact's key (normalised email or phone),
the mapped custom fields under their remote names, its tags and its consent status. Local
contacts, the base and the provider's export are all turned into projections so that the three
can be compared by a digest, and only the keys whose digests differ need Python's attention.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["active", "unsubscribed", "blocked"]
STATUSES: tuple[Status, ...] = ("active", "unsubscribed", "blocked")
OPTED_OUT: frozenset[str] = frozenset({"unsubscribed", "blocked"})


def is_opted_out(status: str) -> bool:
    return status in OPTED_OUT


@dataclass(frozen=True, slots=True)
class Projection:
    """One contact as one target sees it. Empty field values are dropped: '' means unset."""

    key: str
    fields: tuple[tuple[str, str], ...] = ()
    tags: frozenset[str] = field(default_factory=frozenset)
    status: Status = "active"

    @classmethod
    def build(
        cls,
        key: str,
        fields: Mapping[str, str | None] | None = None,
        tags: Iterable[str] = (),
        status: str = "active",
    ) -> Projection:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        kept = tuple(sorted((k, v) for k, v in (fields or {}).items() if v not in (None, "")))
        return cls(
            key=key,
            fields=kept,
            tags=frozenset(t for t in tags if t),
            status=status,
        )

    @property
    def field_map(self) -> dict[str, str]:
        return dict(self.fields)

    def replace(
        self,
        *,
        fields: Mapping[str, str | None] | None = None,
        tags: Iterable[str] | None = None,
        status: str | None = None,
    ) -> Projection:
        return Projection.build(
            self.key,
            self.field_map if fields is None else fields,
            self.tags if tags is None else tags,
            self.status if status is None else status,
        )

    def to_json(self) -> str:
        """Canonical JSON: equal projections give equal text (and so equal digests)."""
        return json.dumps(
            {"k": self.key, "f": dict(self.fields), "t": sorted(self.tags), "s": self.status},
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Projection:
        data: dict[str, Any] = json.loads(text)
        return cls.build(
            data["k"], data.get("f") or {}, data.get("t") or (), data.get("s", "active")
        )

    def digest(self) -> str:
        return digest_of(self.to_json())


def digest_of(canonical_json: str) -> str:
    return hashlib.blake2b(canonical_json.encode(), digest_size=16).hexdigest()
