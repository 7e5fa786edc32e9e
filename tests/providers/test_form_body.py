"""The form body syncd writes itself is byte for byte the one httpx would have written."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.providers.http import FormTable, form_body

values = st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3)


@given(st.dictionaries(st.text(max_size=12), values, max_size=6))
def test_the_body_is_urlencode_with_doseq(form: dict[str, str | list[str]]):
    assert form_body(form) == urlencode(form, doseq=True).encode("ascii")


ascii_text = st.text(st.characters(max_codepoint=127), max_size=20)


@given(st.lists(ascii_text, max_size=12))
def test_ascii_values_escaped_together_are_urlencode_with_doseq(cells: list[str]) -> None:
    # ASCII values take the joined way (each character to escape replaced in all at once),
    # unless one holds the newline that joins them
    form = {"data": cells, "note": "100% + more"}
    assert form_body(form) == urlencode(form, doseq=True).encode("ascii")


def test_the_body_is_what_httpx_sends():
    form = {
        "format": "json",
        "field_names[0]": "email",
        "data[0][0]": "ann+x@example.com",
        "data[0][1]": "Ann Müller & Co",
        "list_ids[]": ["1", "2"],
    }
    sent = httpx.Request("POST", "http://127.0.0.1/", data=form).read()
    assert form_body(form) == sent


@given(
    st.integers(1, 4).flatmap(
        lambda width: st.tuples(
            st.just(width),
            st.lists(st.lists(st.text(max_size=8), min_size=width, max_size=width), max_size=4),
        )
    )
)
def test_a_table_is_its_cells_one_by_one_as_name_i_j(shape: tuple[int, list[list[str]]]) -> None:
    width, rows = shape
    cells = [cell for row in rows for cell in row]
    table = FormTable(width, cells)
    expanded = {f"data[{i}][{j}]": cell for i, row in enumerate(rows) for j, cell in enumerate(row)}
    form = {"format": "json", "data": table, "overwrite_tags": "1"}
    plain = {"format": "json", **expanded, "overwrite_tags": "1"}
    assert form_body(form) == urlencode(plain).encode("ascii")
    assert form_body(form) == form_body(form)  # the names, kept for the shape, are the same


def test_a_table_of_more_rows_than_kept_and_a_ragged_one() -> None:
    cells = [str(i) for i in range(3 * 700)]
    body = form_body({"data": FormTable(3, cells)}).decode()
    assert body.endswith("data%5B699%5D%5B2%5D=2099")
    with pytest.raises(ValueError, match="no whole number of rows"):
        form_body({"data": FormTable(3, ["a", "b"])})
