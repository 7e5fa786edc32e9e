"""The one interface every provider adapter implements.

Terminology:

- KEY: the normalised email or phone a target matches contacts on.
- PROJECTION: one contact as the target sees it (``syncd.projection.Projection``), with custom
  fields under their *remote* names.
- CALL: one write request to the provider. The planner (``syncd.plan``) builds calls from the
  adapter's declared ``Capabilities`` — never from the provider's name — and the adapter only
  translates one call to the wire and reads the answer back row by row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from syncd.projection import Projection

Op = Literal["create", "update", "delete", "exclude"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do; the engine plans from this alone."""

    rows_per_call: int
    fields_per_call: int
    delete: bool = True  # can remove a contact
    exclude: bool = True  # can take a contact off the list without deleting it
    tags: bool = True
    max_tags: int | None = None
    export: bool = True  # can the remote list be read back? If not, remote is taken as the base
    # Statuses the provider can hold for a contact on the list, in syncd's vocabulary. Statuses
    # outside this set fold onto the nearest one (blocked -> unsubscribed) on both sides.
    statuses: frozenset[str] = frozenset({"active", "unsubscribed"})

    def fold_status(self, status: str) -> str:
        if status in self.statuses:
            return status
        return "unsubscribed" if status != "active" else "active"


@dataclass(frozen=True, slots=True)
class RowChange:
    """One contact in one call: what the remote should hold afterwards."""

    op: Op
    row: Projection  # the desired remote state (for delete/exclude: the last known state)
    remote: Projection | None = None  # the remote state the change starts from (None: absent)


@dataclass(frozen=True, slots=True)
class PushCall:
    """One write call: rows that share an operation, a header and a pair of flags."""

    op: Op
    columns: tuple[str, ...]  # the remote custom-field names this call carries, besides the key
    rows: tuple[RowChange, ...]
    with_status: bool = False  # carries a status column
    with_tags: bool = False  # carries a tags column
    overwrite_tags: bool = False  # tags replace rather than add (only when a removal needs it)
    overwrite_lists: bool = False  # never set for single-list targets; see README


@dataclass(slots=True)
class RowOutcome:
    """The provider's verdict on one row of a call."""

    key: str
    ok: bool
    code: str = ""
    message: str = ""
    retryable: bool = False


class RemoteContact(NamedTuple):
    projection: Projection
    raw_status: str  # the provider's own status word, before folding
    remote_id: str | None = None


@dataclass
class CallStats:
    """Calls made, by method and outcome (feeds summaries and metrics)."""

    by_method: Counter[tuple[str, str]] = field(default_factory=Counter)
    writes: int = 0

    def record(self, method: str, outcome: str, *, write: bool) -> None:
        self.by_method[(method, outcome)] += 1
        if write:
            self.writes += 1

    def total(self) -> int:
        return sum(self.by_method.values())


class Provider(ABC):
    """A provider account plus one remote list."""

    name: str
    capabilities: Capabilities

    def __init__(self) -> None:
        self.stats = CallStats()

    @abstractmethod
    def prepare(self, fields: Sequence[str], *, create_missing: bool) -> None:
        """Check the list exists and the mapped fields exist (creating them when allowed)."""

    @abstractmethod
    def export(self) -> Iterator[RemoteContact]:
        """Stream the whole remote list; raise ExportIncomplete when it cannot finish."""

    @abstractmethod
    def push(self, call: PushCall) -> list[RowOutcome]:
        """Make exactly one write call; return one outcome per row, in the call's order."""

    @abstractmethod
    def method_name(self, call: PushCall) -> str:
        """The provider method a call goes to (for plans and summaries)."""

    def wire_rows(self, call: PushCall, limit: int) -> list[dict[str, str]]:
        """The first ``limit`` rows as they would go on the wire (for ``syncd plan``)."""
        return [{"key": rc.row.key} for rc in call.rows[:limit]]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
