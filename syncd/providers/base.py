"""The one interface every provider adapter implements.

Terminology:

- KEY: the normalised email or phone a target matches contacts on.
- PROJECTION: one contact as the target sees it (``syncd.core.projection.Projection``), with custom
  fields under their *remote* names.
- CALL: one write request to the provider. The planner (``syncd.core.batching``) builds calls from
  the adapter's declared ``Capabilities`` — never from the provider's name — and the adapter only
  translates one call to the wire and reads the answer back row by row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from syncd.core.projection import Projection

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
    # can keep syncd's stable reference in a custom field and give it back in the export
    # (``reference_field``): needs both custom fields and an export
    reference: bool = False
    # Statuses the provider can hold for a contact on the list, in syncd's vocabulary. Statuses
    # outside this set fold onto the nearest one (blocked -> unsubscribed) on both sides.
    statuses: frozenset[str] = frozenset({"active", "unsubscribed"})
    # Some writes are only accepted by the answer and confirmed later by the provider calling
    # syncd back (Netcore's bulk upload). The engine then hosts the call's file and keeps the
    # rows waiting (``syncd.engine.confirm_later``) instead of moving the base on the answer.
    confirms_later: bool = False
    # An import names its columns, and the provider leaves the fields of an existing contact
    # that a call does not name as they are: an update then carries only the fields that
    # changed, and the tags only if they changed (``syncd.core.batching``), so an edit made at the
    # provider meanwhile to another field, or a tag removed there, survives. False (the safe
    # default): the provider may replace or reset what it is not given, so every update
    # carries every mapped field and the tags.
    partial_update: bool = False

    def fold_status(self, status: str) -> str:
        if status in self.statuses:
            return status
        return "unsubscribed" if status != "active" else "active"


@dataclass(frozen=True, slots=True)
class RowChange:
    """One contact in one call: what the remote should hold afterwards."""

    op: Op
    row: Projection  # the desired remote state (for delete/exclude: the last known state)
    # the remote state the change starts from (None: absent); with ``partial_update`` an
    # update writes only the fields (and tags) in which ``row`` differs from it
    remote: Projection | None = None


@dataclass(slots=True)
class JobTicket:
    """One call of a batch the provider confirms later: where it fetches the call's file and
    where it reports back. The secrets exist only here, in memory; the store keeps their hashes.
    """

    job_id: str
    part: int
    file_secret: str
    callback_secret: str
    requestid: str | None = None  # filled in by the adapter from the provider's answer

    @property
    def file_path(self) -> str:
        """The listener path serving the file (behind the target's ``public_url``)."""
        return f"/jobs/{self.job_id}/{self.part}/file/{self.file_secret}"

    @property
    def callback_path(self) -> str:
        return f"/jobs/{self.job_id}/{self.part}/callback/{self.callback_secret}"


@dataclass(frozen=True, slots=True)
class CallbackReport:
    """What a provider's callback says about one call it had accepted."""

    processed: bool  # False: the provider says the whole call failed
    message: str = ""
    failed: Mapping[str, str] = field(default_factory=dict)  # key -> reason, rows refused


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
    job: JobTicket | None = None  # set for calls the provider confirms later


@dataclass(slots=True)
class RowOutcome:
    """The provider's verdict on one row of a call."""

    key: str
    ok: bool
    code: str = ""
    message: str = ""
    retryable: bool = False
    pending: bool = False  # accepted; the provider's callback will confirm it (or not)


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

    def hosted_file(self, call: PushCall) -> bytes | None:
        """The file the provider fetches for ``call`` (only with ``confirms_later``); None: the
        call needs no file and is confirmed by its answer."""
        return None

    @classmethod
    def read_callback(cls, body: bytes, content_type: str, key: str) -> CallbackReport:
        """Read the provider's callback for a call it confirms later (``key``: the target's key
        kind, email or phone, to name refused rows by their syncd keys). ValueError: unreadable.
        """
        raise NotImplementedError(f"{cls.__name__} confirms every call by its answer")

    def wire_rows(self, call: PushCall, limit: int) -> list[dict[str, str]]:
        """The first ``limit`` rows as they would go on the wire (for ``syncd plan``)."""
        return [{"key": rc.row.key} for rc in call.rows[:limit]]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
