"""The form body syncd writes itself is byte for byte the one httpx would have written."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
from hypothesis import given
from hypothesis import strategies as st

from syncd.providers.http import form_body

values = st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3)


@given(st.dictionaries(st.text(max_size=12), values, max_size=6))
def test_the_body_is_urlencode_with_doseq(form: dict[str, str | list[str]]):
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
