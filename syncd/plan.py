"""Decisions -> provider calls, from the adapter's declared capabilities alone.

Rows that share an operation and a pair of flags go into the same call, up to the provider's
rows-per-call limit; when a target maps more custom fields than one call may carry, the columns
are split over several calls for the same rows, each repeating the key (DESIGN §4). A row counts
as confirmed only when every call that carried part of it confirmed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from syncd.providers.base import Capabilities, Op, PushCall, RowChange


@dataclass(frozen=True, slots=True)
class Signature:
    """What rows must share to travel in one call."""

    op: Op
    with_status: bool
    overwrite_tags: bool


@dataclass(frozen=True, slots=True)
class Batch:
    """Up to rows-per-call rows, and the one or more calls (column groups) that carry them."""

    rows: tuple[RowChange, ...]
    calls: tuple[PushCall, ...]


@dataclass
class Batcher:
    """Collects row changes and hands back full batches as soon as they are full."""

    capabilities: Capabilities
    columns: tuple[str, ...]  # every mapped remote field, in a stable order
    _groups: dict[Signature, list[RowChange]] = field(default_factory=dict)

    def add(self, change: RowChange, *, with_status: bool, overwrite_tags: bool) -> Iterator[Batch]:
        sig = Signature(change.op, with_status, overwrite_tags)
        group = self._groups.setdefault(sig, [])
        group.append(change)
        if len(group) >= self.capabilities.rows_per_call:
            del self._groups[sig]
            yield self._batch(sig, group)

    def flush(self) -> Iterator[Batch]:
        groups, self._groups = self._groups, {}
        for sig, rows in groups.items():
            if rows:
                yield self._batch(sig, rows)

    def _batch(self, sig: Signature, rows: list[RowChange]) -> Batch:
        frozen = tuple(rows)
        return Batch(frozen, tuple(split_columns(sig, frozen, self.columns, self.capabilities)))


def split_columns(
    sig: Signature, rows: tuple[RowChange, ...], columns: tuple[str, ...], caps: Capabilities
) -> Iterator[PushCall]:
    """One call per group of at most ``fields_per_call`` custom fields.

    The first call carries the tags and status with the first column group; later calls carry
    only the key and their fields. Deletes and excludes carry no fields at all.
    """
    if sig.op in ("delete", "exclude") or not columns:
        groups: list[tuple[str, ...]] = [()]
    else:
        size = max(1, caps.fields_per_call)
        groups = [columns[i : i + size] for i in range(0, len(columns), size)]
    for n, cols in enumerate(groups):
        first = n == 0
        carries_row_state = first and sig.op in ("create", "update")
        yield PushCall(
            op=sig.op,
            columns=cols,
            rows=rows,
            with_status=carries_row_state and sig.with_status,
            with_tags=carries_row_state and caps.tags,
            overwrite_tags=carries_row_state and sig.overwrite_tags,
        )
