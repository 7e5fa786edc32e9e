"""Decisions -> provider calls, from the adapter's declared capabilities alone.

Rows that share an operation, a pair of flags and a set of columns go into the same call, up to
the provider's rows-per-call limit; when a row has more custom fields than one call may carry,
the columns are split over several calls for the same rows, each repeating the key (DESIGN §4).
A row counts as confirmed only when every call that carried part of it confirmed it.

Which columns a row carries:

- a create, and an update at a provider that replaces what it is not given
  (``Capabilities.partial_update`` False), carry every mapped field and the tags;
- an update at a provider that keeps the fields a call does not name carries only the fields
  whose desired value differs from the exported one (``changed_columns``), and the tags only
  when the desired set differs from the exported one (``tags_changed``). Sending the others
  would be more than the minimum, and would overwrite an edit made at the provider between the
  export and the push with the value the export showed: for the tags, put back a tag removed
  there meanwhile (an additive import adds every tag it names);
- deletes and excludes carry none.

The status travels only where the decision records an opt-out (``with_status``).

Updates of a partial-update provider are grouped by their exact changed set; why, and how the
part-filled groups go out, is argued at ``Batcher._pack``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from syncd.core.calls import Capabilities, Op, PushCall, RowChange

#: Part-filled partial-update groups are packed and sent once this many calls' worth of rows
#: wait in them: memory stays bounded however scattered the changed sets are.
HOLD_CALLS = 16


@dataclass(frozen=True, slots=True)
class Signature:
    """What rows must share to travel in one call."""

    op: Op
    with_status: bool
    overwrite_tags: bool  # only with with_tags: a removal needs the full set to replace
    columns: tuple[str, ...] = ()  # the custom fields every row of the call writes
    with_tags: bool = False  # every row of the call writes its tags


#: What a call packed by column writes for its rows: its columns, and whether the tags.
Part = tuple[tuple[str, ...], bool]


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows confirmed together, and the one or more calls that carry them (each call carries
    all of them, or, for a batch packed by column, those that changed its column)."""

    rows: tuple[RowChange, ...]
    calls: tuple[PushCall, ...]


def changed_columns(change: RowChange, columns: Iterable[str]) -> tuple[str, ...]:
    """The columns whose desired value differs from the remote one (in ``columns`` order).

    A field the desired row clears counts: it goes as an empty value. Without a remote row
    (nothing to compare with) every column counts.
    """
    columns = tuple(columns)
    if change.remote is None:
        return columns
    want, have = change.row.field_map, change.remote.field_map
    return tuple(c for c in columns if want.get(c) != have.get(c))


def tags_changed(change: RowChange) -> bool:
    """Whether the desired tags differ from the remote ones (without a remote row: they do)."""
    return change.remote is None or change.row.tags != change.remote.tags


@dataclass
class Batcher:
    """Collects row changes and hands back full batches as soon as they are full."""

    capabilities: Capabilities
    columns: tuple[str, ...]  # every mapped remote field, in a stable order
    hold_limit: int = 0  # rows held in part-filled partial-update groups; 0: HOLD_CALLS calls
    _groups: dict[Signature, list[RowChange]] = field(default_factory=dict)
    _held: int = 0  # rows waiting in partial-update groups

    def __post_init__(self) -> None:
        if self.hold_limit <= 0:
            self.hold_limit = HOLD_CALLS * self.capabilities.rows_per_call

    def signature(self, change: RowChange, *, with_status: bool, overwrite_tags: bool) -> Signature:
        caps = self.capabilities
        if change.op in ("delete", "exclude"):
            columns: tuple[str, ...] = ()
            with_tags = False
        elif change.op == "update" and caps.partial_update:
            columns = changed_columns(change, self.columns)
            with_tags = caps.tags and tags_changed(change)
        else:
            columns = self.columns
            with_tags = caps.tags
        # a tag to remove means the tags differ, so the flag never goes without its column
        return Signature(
            change.op, with_status, overwrite_tags and with_tags, columns, with_tags=with_tags
        )

    def add(self, change: RowChange, *, with_status: bool, overwrite_tags: bool) -> Iterator[Batch]:
        sig = self.signature(change, with_status=with_status, overwrite_tags=overwrite_tags)
        group = self._groups.setdefault(sig, [])
        group.append(change)
        partial = self._partial(sig)
        self._held += partial
        if len(group) >= self.capabilities.rows_per_call:
            del self._groups[sig]
            self._held -= len(group) if partial else 0
            yield self._batch(sig, group)
        elif partial and self._held > self.hold_limit:
            held = {s: rows for s, rows in self._groups.items() if self._partial(s)}
            for s in held:
                del self._groups[s]
            self._held = 0
            yield from self._pack(held)

    def whole_calls(self, changes: list[RowChange]) -> tuple[list[Batch], list[RowChange]]:
        """Creates that send no status and remove no tag (one signature, whatever the row),
        cut straight into full batches without going through the groups one by one; returns
        those and the rows left over (fewer than a call's worth)."""
        if not changes:
            return [], []
        assert all(change.op == "create" for change in changes)
        sig = self.signature(changes[0], with_status=False, overwrite_tags=False)
        size = self.capabilities.rows_per_call
        whole = len(changes) - len(changes) % size
        batches = [self._batch(sig, changes[i : i + size]) for i in range(0, whole, size)]
        return batches, changes[whole:]

    def flush(self) -> Iterator[Batch]:
        groups, self._groups, self._held = self._groups, {}, 0
        for sig, rows in groups.items():
            if rows and not self._partial(sig):
                yield self._batch(sig, rows)
        yield from self._pack({s: rows for s, rows in groups.items() if self._partial(s)})

    def _partial(self, sig: Signature) -> bool:
        return sig.op == "update" and self.capabilities.partial_update

    def _batch(self, sig: Signature, rows: list[RowChange]) -> Batch:
        frozen = tuple(rows)
        return Batch(frozen, tuple(split_columns(sig, frozen, self.capabilities)))

    def _pack(self, groups: dict[Signature, list[RowChange]]) -> Iterator[Batch]:
        """Part-filled partial-update groups, each as it is or all by column: the fewer calls.

        A call has one header, so every row in it writes every column it names: rows with
        different changed sets cannot share a call without writing someone's untouched
        field, or re-sending someone's unchanged tags. Updates are therefore grouped by
        their exact changed set -- the changed fields, and whether the tags changed -- which
        is part of the signature. In a typical workload (a large list where most updates
        change the same one or two fields) there are few sets, each group fills whole calls,
        and the cost over sending every field is at most one part-filled call per set.
        Scattered sets (many fields, each update touching a different few) would instead
        leave many small groups, each its own call, all held in memory. So part-filled
        update groups -- at the end, or whenever more than ``hold_limit`` rows wait in them
        -- go out the cheaper of two ways: each group as it is, or one call per
        column carrying every held row that changed that column, and one call of no column
        for the rows whose tags changed (a row then travels in as many calls as it changed
        parts, its status in each; the answers of all of them confirm it). The second bounds
        the tail at about one call per mapped field, whatever the number of sets.

        Rows go by column only among rows of the same flags (one status / overwrite_tags
        setting per call).
        """
        by_flags: dict[tuple[bool, bool], dict[Signature, list[RowChange]]] = {}
        for sig, rows in groups.items():
            if rows:
                by_flags.setdefault((sig.with_status, sig.overwrite_tags), {})[sig] = rows
        for (with_status, overwrite_tags), same in by_flags.items():
            as_groups = [self._batch(sig, rows) for sig, rows in same.items()]
            by_column = self._by_column(same, with_status, overwrite_tags)
            if len(by_column.calls) < sum(len(b.calls) for b in as_groups):
                yield by_column
            else:
                yield from as_groups

    def _by_column(
        self, groups: dict[Signature, list[RowChange]], with_status: bool, overwrite_tags: bool
    ) -> Batch:
        """One call per part (and per ``rows_per_call`` rows) carrying the rows that changed it:
        a column, or the tags (a call of no column); rows that changed neither (status only) go
        in calls of no column and no tags. The tags are a part like a column, so no call names
        them for a row whose tags did not change."""
        caps = self.capabilities
        nothing: Part = ((), False)
        tags: Part = ((), True)
        per_part: dict[Part, list[RowChange]] = {}
        for sig, rows in groups.items():
            parts = [((name,), False) for name in sig.columns] + ([tags] if sig.with_tags else [])
            for part in parts or [nothing]:
                per_part.setdefault(part, []).extend(rows)
        calls = []
        for part in (nothing, tags, *(((name,), False) for name in self.columns)):
            rows = per_part.get(part, [])
            columns, with_tags = part
            for i in range(0, len(rows), caps.rows_per_call):
                calls.append(
                    PushCall(
                        op="update",
                        columns=columns,
                        rows=tuple(rows[i : i + caps.rows_per_call]),
                        with_status=with_status,
                        with_tags=with_tags,
                        overwrite_tags=with_tags and overwrite_tags,
                    )
                )
        rows_all = tuple(rc for rows in groups.values() for rc in rows)
        return Batch(rows_all, tuple(calls))


def split_columns(
    sig: Signature, rows: tuple[RowChange, ...], caps: Capabilities
) -> Iterator[PushCall]:
    """One call per group of at most ``fields_per_call`` of the signature's custom fields.

    The first call carries the tags (when the signature does) and status with the first column
    group; later calls carry only the key and their fields. Deletes and excludes carry no fields
    at all, and an update that changes no field (only tags or status) one call of no field.
    """
    columns = sig.columns
    if not columns:
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
            with_tags=carries_row_state and sig.with_tags,
            overwrite_tags=carries_row_state and sig.overwrite_tags,
        )
