"""Compact JSON texts of flat values, straight from the C encoder made once.

``JSONEncoder.encode`` builds its C encoder again on every call (``iterencode``), most of its
cost for the few items of a contact's fields or a projection, which syncd encodes once per
contact on its busiest paths (a million-row ingest, a first push). ``flat_encoder`` builds it
once, with the arguments ``iterencode`` passes less the check for circular references: these
values are flat.
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
