"""A projection's text comes straight from the C encoder: the text ``json.dumps`` gives."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncd.core.jsontext import read_json
from syncd.core.projection import Projection, compact_json

pairs = st.lists(st.tuples(st.text(max_size=8), st.text(max_size=12)), max_size=4)


@given(st.text(max_size=20), pairs, st.lists(st.text(max_size=6), max_size=3), st.text(max_size=12))
def test_compact_json_is_json_dumps_compact(key: str, fields: list, tags: list, status: str):
    items = [key, fields, sorted(tags), status]
    assert compact_json(items) == json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def test_a_projection_reads_back_from_its_text():
    p = Projection.build("ann@example.com", {"Name": 'Ann "Ü" Lee\n', "City": "Minsk"}, ["b", "a"])
    assert Projection.from_json(p.to_json()) == p
    assert p.to_json() == (
        '["ann@example.com",[["City","Minsk"],["Name","Ann \\"Ü\\" Lee\\n"]],["a","b"],"active"]'
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


def _loaded(read: Any, text: str) -> tuple[str, Any]:
    try:
        return "value", read(text)
    except json.JSONDecodeError as exc:
        return "error", (exc.msg, exc.pos)


@given(json_values, st.sampled_from(["", " ", "\n", "x", "]", " 1"]), st.sampled_from(["", " "]))
def test_read_json_gives_what_json_loads_gives_value_or_error(
    value: Any, after: str, before: str
) -> None:
    text = before + json.dumps(value, ensure_ascii=False) + after
    assert _loaded(read_json, text) == _loaded(json.loads, text)


@given(st.text(max_size=12))
def test_read_json_of_any_text_is_json_loads(text: str) -> None:
    assert _loaded(read_json, text) == _loaded(json.loads, text)


def test_from_json_sets_every_field_of_a_projection() -> None:
    """``from_json`` sets the slots one by one: a field added to ``Projection`` must be set
    there too (this list is what it sets)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(Projection)}
    assert names == {"key", "fields", "tags", "status", "list_status", "_json"}
    p = Projection.build("b@example.com", {"City": "Brest"}, ["x"], "active", "unsubscribed")
    kept = Projection.from_json(p.to_json(), keep_text=True)
    plain = Projection.from_json(p.to_json())
    assert kept == plain == p and hash(kept) == hash(p) and repr(kept) == repr(p)
    assert kept.to_json() == plain.to_json() == p.to_json()
