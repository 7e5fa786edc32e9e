"""The one interface every provider adapter implements.

Terminology:

- KEY: the normalised email or phone a target matches contacts on.
- PROJECTION: one contact as the target sees it (``syncd.core.projection.Projection``), with custom
  fields under their *remote* names.
- CALL: one write request to the provider. The planner (``syncd.core.batching``) builds calls from
  the adapter's declared ``Capabilities`` — never from the provider's name — and the adapter only
  translates one call to the wire and reads the answer back row by row. The call's vocabulary
  (``Capabilities``, ``RowChange``, ``PushCall``, ``JobTicket``) is pure data in
  ``syncd.core.calls``; it is re-exported here for the adapters.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from syncd.core.calls import Capabilities, JobTicket, Op, PushCall, RowChange
from syncd.core.projection import Projection

__all__ = [
    "CallStats",
    "CallbackReport",
    "Capabilities",
    "ContactRead",
    "JobTicket",
    "Op",
    "Provider",
    "PushCall",
    "RemoteContact",
    "RowChange",
    "RowOutcome",
    "fingerprinter",
]


def fingerprinter(salt: bytes) -> Callable[[str], int]:
    """A 64-bit fingerprint of a raw export row, keyed by ``salt`` (what else shapes the row's
    reading). 64 bits: two different rows of a million-row list share one with odds of about
    one in 10^7 per cycle's worth of new rows, and the key is hashed once, then copied."""
    keyed = hashlib.blake2b(key=hashlib.blake2b(salt).digest(), digest_size=8)

    def fingerprint(raw: str) -> int:
        h = keyed.copy()
        h.update(raw.encode())
        return int.from_bytes(h.digest(), "big", signed=True)

    return fingerprint


@dataclass(frozen=True, slots=True)
class CallbackReport:
    """What a provider's callback says about one call it had accepted."""

    processed: bool  # False: the provider says the whole call failed
    message: str = ""
    failed: Mapping[str, str] = field(default_factory=dict)  # key -> reason, rows refused


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
    # the provider records an opt-out of this contact from another list: deleting the contact
    # (an account-wide delete) would erase that record, so it only ever leaves this list
    opted_out_elsewhere: bool = False


class ContactRead(NamedTuple):
    """One contact read by its key (``Provider.read_one``). A single-contact read may give less
    than the export: what it does not give is unknown, never empty."""

    contact: RemoteContact
    fields_read: frozenset[str]  # remote field names the read gave (the others: unknown)
    tags_read: bool  # whether the read gave the contact's tags


@dataclass
class CallStats:
    """Calls made, by method and outcome (feeds summaries and metrics), and the time spent
    waiting for the provider's rate limit before them."""

    by_method: Counter[tuple[str, str]] = field(default_factory=Counter)
    writes: int = 0
    waited: float = 0.0  # seconds, in all
    # told of each wait before it starts (seconds), so that progress can show it as such
    on_wait: Callable[[float], None] | None = None

    def waiting(self, seconds: float) -> None:
        self.waited += seconds
        if self.on_wait is not None:
            self.on_wait(seconds)

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

    def export_raw(self, salt: bytes) -> Iterator[tuple[int, Any]]:
        """The export as raw rows, each with its fingerprint (``fingerprinter(salt)`` over the
        row's raw cells), so that a row read before unchanged need not be read again;
        ``read_raw`` reads one. Raises ExportIncomplete as ``export`` does. This default reads
        every row as it comes (no saving); an adapter that can fingerprint the wire form
        before reading it overrides both."""
        fingerprint = fingerprinter(salt)
        for contact in self.export():
            yield fingerprint(repr(contact)), contact

    def read_raw(self, raw: Any) -> RemoteContact | None:
        """The contact of one of ``export_raw``'s rows (None: a row with no usable key)."""
        contact: RemoteContact = raw
        return contact

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

    def read_one(self, key: str) -> ContactRead | None:
        """One contact of the list by its key (``Capabilities.read_one``); None when the provider
        does not show it on this list, which proves nothing (only an export does)."""
        raise NotImplementedError(f"{type(self).__name__} cannot read one contact")

    def set_hook(self, url: str, events: Sequence[str]) -> dict[str, object]:
        """Ask the provider to POST its events to ``url`` (``Capabilities.hooks == "api"``);
        the same URL again replaces (and re-activates) the handler."""
        raise NotImplementedError(f"{type(self).__name__} has no hook API")

    def list_hooks(self) -> list[dict[str, object]]:
        """The handlers the account has, as the provider shows them (``hook_url``, ``status``)."""
        raise NotImplementedError(f"{type(self).__name__} has no hook API")

    def remove_hook(self, url: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no hook API")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
