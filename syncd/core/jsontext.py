"""Compact JSON texts of flat values, straight from the C encoder made once; and JSON text
read straight by the C scanner.

``JSONEncoder.encode`` builds its C encoder again on every call (``iterencode``), most of its
cost for the few items of a contact's fields or a projection, which syncd encodes once per
contact on its busiest paths (a million-row ingest, a first push). ``flat_encoder`` builds it
once, with the arguments ``iterencode`` passes less the check for circular references: these
values are flat. ``read_json`` is ``json.loads`` for the short texts syncd stored itself (a
contact's fields and tags, a projection), read a few times per contact on the same paths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def flat_encoder(*, sort_keys: bool) -> Callable[[Any], str]:
    """``JSONEncoder(sort_keys=sort_keys, ensure_ascii=False, separators=(",", ":")).encode``,
    the same text; a dict or a list goes straight to the C encoder where there is one."""
    plain = json.JSONEncoder(sort_keys=sort_keys, ensure_ascii=False, separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return plain.encode
    encode_c = make(
        None,  # markers: no check for circular references
        plain.default,
        json.encoder.encode_basestring,  # ensure_ascii off
        None,  # indent
        plain.key_separator,
        plain.item_separator,
        sort_keys,
        False,  # skipkeys
        True,  # allow_nan
    )
    encode_other = plain.encode

    def encode(value: Any) -> str:
        if type(value) is dict or type(value) is list:
            return "".join(encode_c(value, 0))
        return encode_other(value)

    return encode


# the C scanner where there is one (typeshed does not declare the attribute)
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def read_json(text: str) -> Any:
    """``json.loads(text)``: the same value, or the same error. ``loads`` wraps the scanner in
    three calls and two regular-expression passes for the whitespace around the value, more
    than the scan of a short text costs (1.0-1.1 µs against 0.4-0.5 for a projection); text
    with whitespace around it, more after it or no value goes to ``loads`` itself."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)  # not a value where it starts: json's own error
    if end != len(text):
        return json.loads(text)  # whitespace after it, or more: json's own answer
    return value
