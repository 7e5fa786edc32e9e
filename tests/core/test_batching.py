"""The planner (``syncd.core.batching``): which rows share a call, and which columns each call
writes.

An update at a provider with ``partial_update`` writes only the fields that differ from the
export, and its tags only when they differ; rows with different changed sets never share a
header (that would write one row's untouched field, or put back a tag removed at the provider,
with what the export showed). Creates, and updates at a provider without partial updates, carry
every mapped field and the tags.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.core.batching import Batch, Batcher, changed_columns, tags_changed
from syncd.core.projection import Projection
from syncd.providers.base import Capabilities, Op, RowChange

COLUMNS = ("Name", "City", "Phone2", "Company")
PARTIAL = Capabilities(rows_per_call=3, fields_per_call=50, partial_update=True)
WHOLE = replace(PARTIAL, partial_update=False)

BEFORE = {"Name": "Ann", "City": "Minsk", "Phone2": "1", "Company": "Acme"}


def change(
    n: int,
    op: Op = "update",
    *changed: str,
    tags: Iterable[str] = (),
    new_tags: Iterable[str] | None = None,
) -> RowChange:
    """Contact ``n``: the remote row as exported (with ``tags``), and the desired one with
    ``changed`` edited (and ``new_tags`` instead, if given)."""
    key = f"p{n}@example.com"
    remote = Projection.build(key, BEFORE, tags)
    fields = {**BEFORE, **{c: f"new {c}" for c in changed}}
    row = Projection.build(key, fields, tags if new_tags is None else new_tags)
    return RowChange(op, row, None if op == "create" else remote)


def plan(
    caps: Capabilities, changes: Iterable[RowChange], *, overwrite_tags: bool = False
) -> list[Batch]:
    batcher = Batcher(caps, COLUMNS)
    batches: list[Batch] = []
    for rc in changes:
        batches += batcher.add(rc, with_status=False, overwrite_tags=overwrite_tags)
    return batches + list(batcher.flush())


def calls_of(batches: list[Batch]) -> list[tuple[tuple[str, ...], list[str]]]:
    """Each call as (its columns, the contacts it carries)."""
    return [(c.columns, [rc.row.key[:-12] for rc in c.rows]) for b in batches for c in b.calls]


def tagged_calls_of(batches: list[Batch]) -> list[tuple[tuple[str, ...], bool, bool, list[str]]]:
    """Each call as (its columns, whether it carries tags, overwrite_tags, its contacts)."""
    return [
        (c.columns, c.with_tags, c.overwrite_tags, [rc.row.key[:-12] for rc in c.rows])
        for b in batches
        for c in b.calls
    ]


def test_changed_columns_are_the_fields_that_differ_in_mapping_order() -> None:
    rc = change(0, "update", "Company", "Name")
    assert changed_columns(rc, COLUMNS) == ("Name", "Company")
    cleared = RowChange("update", rc.row.replace(fields={**BEFORE, "City": None}), rc.remote)
    assert changed_columns(cleared, COLUMNS) == ("City",)  # a cleared field goes, as ""
    assert changed_columns(replace(rc, remote=None), COLUMNS) == COLUMNS


def test_updates_are_grouped_by_their_changed_columns() -> None:
    sets = [("Name",), ("City",), ("Name", "City")]
    changes = [change(n, "update", *sets[n % 3]) for n in range(9)]
    assert calls_of(plan(PARTIAL, changes)) == [
        (("Name",), ["p0", "p3", "p6"]),
        (("City",), ["p1", "p4", "p7"]),
        (("Name", "City"), ["p2", "p5", "p8"]),
    ]


def test_a_full_group_goes_at_once_and_groups_fill_independently() -> None:
    batcher = Batcher(PARTIAL, COLUMNS)
    assert (
        list(batcher.add(change(0, "update", "Name"), with_status=False, overwrite_tags=False))
        == []
    )
    assert (
        list(batcher.add(change(1, "update", "City"), with_status=False, overwrite_tags=False))
        == []
    )
    assert (
        list(batcher.add(change(2, "update", "Name"), with_status=False, overwrite_tags=False))
        == []
    )
    (full,) = batcher.add(change(3, "update", "Name"), with_status=False, overwrite_tags=False)
    assert calls_of([full]) == [(("Name",), ["p0", "p2", "p3"])]
    assert calls_of(list(batcher.flush())) == [(("City",), ["p1"])]


def test_tags_changed_compares_the_sets_and_counts_without_a_remote_row() -> None:
    assert not tags_changed(change(0, "update", "Name", tags=["a", "b"]))
    assert tags_changed(change(0, "update", tags=["a", "b"], new_tags=["b"]))
    assert tags_changed(change(0, "update", tags=["a"], new_tags=["a", "c"]))
    assert tags_changed(change(0, "create", tags=["a"]))


def test_an_update_carries_the_tags_only_when_they_changed() -> None:
    """Rows whose tags changed and rows whose tags did not never share a call: the tags column
    would put back, for the second kind, a tag removed at the provider since the export."""
    changes = [
        change(0, "update", "Name", tags=["a", "b"]),
        change(1, "update", "Name", tags=["a"], new_tags=["a", "c"]),
        change(2, "update", "Name", tags=["a", "b"]),
        change(3, "update", "City", tags=["a"], new_tags=["a", "c"]),
    ]
    assert tagged_calls_of(plan(PARTIAL, changes)) == [
        (("Name",), False, False, ["p0", "p2"]),
        (("Name",), True, False, ["p1"]),
        (("City",), True, False, ["p3"]),
    ]


def test_a_tags_only_change_goes_alone_with_overwrite_when_a_tag_is_removed() -> None:
    added = change(0, "update", tags=["a"], new_tags=["a", "b"])
    removed = change(1, "update", tags=["a", "b"], new_tags=["a"])
    batcher = Batcher(PARTIAL, COLUMNS)
    out = [
        *batcher.add(added, with_status=False, overwrite_tags=False),
        *batcher.add(removed, with_status=False, overwrite_tags=True),
        *batcher.flush(),
    ]
    assert tagged_calls_of(out) == [((), True, False, ["p0"]), ((), True, True, ["p1"])]


def test_creates_and_updates_without_partial_updates_always_carry_the_tags() -> None:
    same = [change(0, "create", tags=["a"]), change(1, "update", "Name", tags=["a"])]
    assert [(c.op, c.with_tags) for c in plan(PARTIAL, same[:1])[0].calls] == [("create", True)]
    assert [(c.op, c.with_tags) for b in plan(WHOLE, same) for c in b.calls] == [
        ("create", True),
        ("update", True),
    ]


def test_without_tags_at_the_provider_no_call_carries_them() -> None:
    caps = replace(PARTIAL, tags=False)
    changes = [change(0, "create", tags=["a"]), change(1, "update", tags=["a"], new_tags=["b"])]
    assert [(c.op, c.columns, c.with_tags) for b in plan(caps, changes) for c in b.calls] == [
        ("create", COLUMNS, False),
        ("update", (), False),
    ]


def test_columns_split_within_a_group_and_tags_go_with_the_first_part() -> None:
    narrow = replace(PARTIAL, fields_per_call=2)
    changes = [
        change(i, "update", "Name", "City", "Company", tags=["vip", "old"], new_tags=["vip"])
        for i in range(2)
    ]
    (batch,) = plan(narrow, changes, overwrite_tags=True)
    assert [(c.columns, len(c.rows)) for c in batch.calls] == [
        (("Name", "City"), 2),
        (("Company",), 2),
    ]
    assert [(c.with_tags, c.overwrite_tags) for c in batch.calls] == [(True, True), (False, False)]


def test_an_update_of_tags_only_carries_no_field() -> None:
    rc = change(0, "update")
    rc = replace(rc, row=rc.row.replace(tags=["new"]))
    (batch,) = plan(PARTIAL, [rc])
    assert [(c.columns, c.with_tags) for c in batch.calls] == [((), True)]


def test_creates_carry_every_field_and_share_calls_whatever_they_hold() -> None:
    changes = [change(i, "create") for i in range(4)]
    assert calls_of(plan(PARTIAL, changes)) == [
        (COLUMNS, ["p0", "p1", "p2"]),
        (COLUMNS, ["p3"]),
    ]
    narrow = replace(PARTIAL, fields_per_call=3)
    assert [c.columns for c in plan(narrow, changes[:1])[0].calls] == [COLUMNS[:3], COLUMNS[3:]]


def test_without_partial_updates_every_update_carries_every_field() -> None:
    changes = [change(0, "update", "Name"), change(1, "update", "City"), change(2, "update")]
    assert calls_of(plan(WHOLE, changes)) == [(COLUMNS, ["p0", "p1", "p2"])]
    narrow = replace(WHOLE, fields_per_call=2)
    (batch,) = plan(narrow, changes)
    assert [c.columns for c in batch.calls] == [COLUMNS[:2], COLUMNS[2:]]


def test_scattered_changed_sets_go_one_call_per_column_instead_of_one_per_set() -> None:
    """Six pairs of four fields: six groups of one row each, or four calls by column."""
    pairs = [(a, b) for i, a in enumerate(COLUMNS) for b in COLUMNS[i + 1 :]]
    caps = replace(PARTIAL, rows_per_call=500)
    (batch,) = plan(caps, [change(n, "update", *pair) for n, pair in enumerate(pairs)])
    assert len(batch.rows) == 6
    assert [(c.columns, len(c.rows)) for c in batch.calls] == [((c,), 3) for c in COLUMNS]
    for call in batch.calls:
        assert all(call.columns[0] in pairs[int(rc.row.key[1])] for rc in call.rows)
        assert not call.with_tags  # no row changed its tags


def test_packed_by_column_the_tags_are_a_part_of_their_own() -> None:
    """Scattered sets, some with new tags: the tags go in one call of no column for the rows
    that changed them, never in a column's call (it also carries rows that did not)."""
    pairs = [(a, b) for i, a in enumerate(COLUMNS) for b in COLUMNS[i + 1 :]]
    caps = replace(PARTIAL, rows_per_call=500)
    changes = [
        change(n, "update", *pair, tags=["a"], new_tags=["a", "b"] if n % 2 else None)
        for n, pair in enumerate(pairs)
    ]
    (batch,) = plan(caps, changes)
    assert [(c.columns, c.with_tags, len(c.rows)) for c in batch.calls] == [
        ((), True, 3),
        *(((c,), False, 3) for c in COLUMNS),
    ]
    assert [rc.row.key[:2] for rc in batch.calls[0].rows] == ["p1", "p3", "p5"]


def test_the_tail_is_packed_by_column_only_when_that_makes_fewer_calls() -> None:
    as_sets = [
        change(0, "update", "Name"),
        change(1, "update", "City"),
        change(2, "update", "Name"),
    ]
    assert calls_of(plan(PARTIAL, as_sets)) == [(("Name",), ["p0", "p2"]), (("City",), ["p1"])]
    both = [
        change(0, "update", "Name"),
        change(1, "update", "City"),
        change(2, "update", "Name", "City"),
    ]
    (batch,) = plan(PARTIAL, both)  # three sets, but two columns: p2 travels in both calls
    assert calls_of([batch]) == [(("Name",), ["p0", "p2"]), (("City",), ["p1", "p2"])]
    assert [rc.row.key[:2] for rc in batch.rows] == ["p0", "p1", "p2"]


def test_held_rows_are_bounded_and_sent_packed() -> None:
    """Past ``hold_limit`` rows waiting in part-filled groups, they go out at once."""
    batcher = Batcher(replace(PARTIAL, rows_per_call=500), COLUMNS, hold_limit=5)
    sent: list[Batch] = []
    for n in range(6):
        sent += batcher.add(
            change(n, "update", COLUMNS[n % 4], COLUMNS[(n + 1) % 4]),
            with_status=False,
            overwrite_tags=False,
        )
    assert sum(len(b.rows) for b in sent) == 6  # the sixth row went over the limit
    assert list(batcher.flush()) == []


def test_flags_still_split_calls_and_deletes_carry_no_field() -> None:
    batcher = Batcher(PARTIAL, COLUMNS)
    out = [
        *batcher.add(change(0, "update", "Name"), with_status=False, overwrite_tags=False),
        *batcher.add(
            change(1, "update", "Name", tags=["a"], new_tags=[]),
            with_status=False,
            overwrite_tags=True,
        ),
        *batcher.add(change(2, "delete"), with_status=False, overwrite_tags=False),
        *batcher.flush(),
    ]
    assert sorted((c.op, c.columns, c.overwrite_tags) for b in out for c in b.calls) == [
        ("delete", (), False),
        ("update", ("Name",), False),
        ("update", ("Name",), True),
    ]


# How a row's tags change: not at all, by an addition, or by a removal (which needs overwrite).
TAG_CHANGES: dict[str, tuple[list[str], list[str] | None]] = {
    "same": (["a"], None),
    "add": (["a"], ["a", "b"]),
    "remove": (["a", "b"], ["a"]),
}


# The invariants, for any mix of rows, changed sets, tag changes and limits.
@settings(max_examples=150, deadline=None)
@given(
    sets=st.lists(
        st.tuples(
            st.sampled_from(["create", "update"]),
            st.lists(st.sampled_from(COLUMNS), unique=True),
            st.sampled_from(sorted(TAG_CHANGES)),
        ),
        max_size=40,
    ),
    rows_per_call=st.integers(1, 6),
    fields_per_call=st.integers(1, 5),
    hold_limit=st.integers(1, 30),
    partial=st.booleans(),
)
def test_every_row_writes_exactly_its_changed_fields(
    sets: list[tuple[Op, list[str], str]],
    rows_per_call: int,
    fields_per_call: int,
    hold_limit: int,
    partial: bool,
) -> None:
    """...and its tags exactly when they changed (always for a create, or without partial
    updates), with ``overwrite_tags`` exactly when a tag is removed."""
    caps = Capabilities(
        rows_per_call=rows_per_call, fields_per_call=fields_per_call, partial_update=partial
    )
    batcher = Batcher(caps, COLUMNS, hold_limit=hold_limit)
    batches: list[Batch] = []
    for n, (op, changed, tagging) in enumerate(sets):
        tags, new_tags = TAG_CHANGES[tagging]
        rc = change(n, op, *changed, tags=tags, new_tags=new_tags)
        # as the decision sets it: overwrite only where a tag the remote holds must go
        overwrite = rc.remote is not None and bool(rc.remote.tags - rc.row.tags)
        batches += batcher.add(rc, with_status=False, overwrite_tags=overwrite)
    batches += batcher.flush()

    wanted = {
        change(n, op).row.key: (
            set(COLUMNS) if op == "create" or not partial else set(changed),
            op == "create" or not partial or tagging != "same",
            op == "update" and tagging == "remove",
        )
        for n, (op, changed, tagging) in enumerate(sets)
    }
    written: dict[str, set[str]] = {}
    tagged: set[str] = set()
    for batch in batches:
        keys = [rc.row.key for rc in batch.rows]
        assert not set(keys) & set(written), "a row in two batches"
        written.update({k: set() for k in keys})
        for call in batch.calls:
            assert 0 < len(call.rows) <= rows_per_call and len(call.columns) <= fields_per_call
            for rc in call.rows:
                cols, with_tags, overwrite = wanted[rc.row.key]
                assert rc.row.key in keys
                assert set(call.columns) <= cols, "a field written that did not change"
                written[rc.row.key] |= set(call.columns)
                if call.with_tags:
                    assert with_tags, "tags written that did not change"
                    tagged.add(rc.row.key)
                    assert call.overwrite_tags == overwrite
                else:
                    assert not call.overwrite_tags
    assert written == {k: cols for k, (cols, _, _) in wanted.items()}
    assert tagged == {k for k, (_, with_tags, _) in wanted.items() if with_tags}


def test_create_of_is_a_plain_create_row_change() -> None:
    """``create_of`` sets the slots one by one: a field added to ``RowChange`` must be set there
    too (this list is what it sets)."""
    import dataclasses

    from syncd.core.calls import create_of

    assert {f.name for f in dataclasses.fields(RowChange)} == {"op", "row", "remote"}
    row = Projection.build("a@example.com", {"City": "Minsk"}, ["t"])
    made = create_of(row)
    assert made == RowChange("create", row) and hash(made) == hash(RowChange("create", row))
    assert repr(made) == repr(RowChange("create", row, None))
