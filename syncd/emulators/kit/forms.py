"""Request parameters the way a PHP API server reads them.

Unisender/Selzy is a PHP service: its clients send PHP bracket arrays (``a[0]``, ``a[]``,
``a[i][j]``, ``a[key]``), raw or percent-encoded, in the query string, a form body or a multipart
body, and the server merges them (wire facts 1.1 "Array encoding", "Content types seen";
checklist 2, 3). This module turns an ``httpx.Request`` into a tree of strings and offers the few
readers an API handler needs.
"""

from __future__ import annotations

import bz2
import gzip
import re
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import TypeAlias
from urllib.parse import parse_qsl

import httpx

PhpValue: TypeAlias = "str | dict[str, PhpValue]"
Params: TypeAlias = dict[str, PhpValue]

_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_TRUE = frozenset({"1", "true", "on", "yes"})
_FALSE = frozenset({"0", "false", "off", "no", ""})


def split_key(key: str) -> list[str]:
    """``a[0][x]`` -> ``["a", "0", "x"]``; a name without brackets is one segment."""
    start = key.find("[")
    if start <= 0:
        return [key]
    segments = [key[:start]]
    pos = start
    while (m := _SEGMENT.match(key, pos)) is not None:
        segments.append(m.group(1))
        pos = m.end()
    return segments if len(segments) > 1 else [key]  # PHP drops trailing junk after the last ]


def is_index(key: str) -> bool:
    return key.isdigit() and (key == "0" or not key.startswith("0"))


def _next_index(node: dict[str, PhpValue]) -> str:
    used = [int(k) for k in node if is_index(k)]
    return str(max(used) + 1) if used else "0"


def build(pairs: list[tuple[str, str]]) -> Params:
    """Fold decoded (name, value) pairs into a tree; later scalars win, as in PHP."""
    tree: Params = {}
    for name, value in pairs:
        path = split_key(name)
        node = tree
        for i, seg in enumerate(path):
            key = _next_index(node) if seg == "" else seg  # a[] appends (checklist 3)
            if i == len(path) - 1:
                node[key] = value
                break
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
    return tree


def _multipart_pairs(content_type: str, body: bytes) -> list[tuple[str, str]]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    pairs = []
    for part in message.iter_parts() if message.is_multipart() else ():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            pairs.append((name, payload.decode("utf-8", "replace")))
    return pairs


def _body_pairs(request: httpx.Request, query: Params) -> list[tuple[str, str]]:
    body = request.content
    if not body:
        return []
    try:
        if request.headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)  # wire facts 1.1 "Encoding"
        if query.get("request_compression") == "bzip2":
            body = bz2.decompress(body)  # official PHP wrapper's compression mode (checklist 4)
    except (OSError, ValueError, EOFError):
        return []
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    if kind == "multipart/form-data":
        return _multipart_pairs(content_type, body)
    return []  # PHP parses no other body type: a JSON/junk body leaves the query alone (item 2)


def request_params(request: httpx.Request) -> Params:
    """Query and body merged like PHP's ``$_REQUEST``: top-level names from the body win."""
    query = build(parse_qsl(request.url.query.decode("utf-8", "replace"), keep_blank_values=True))
    return {**query, **build(_body_pairs(request, query))}


def scalar(params: Params, name: str, default: str = "") -> str:
    value = params.get(name, default)
    return value if isinstance(value, str) else default


def indexed(value: PhpValue | None) -> list[tuple[int, PhpValue]]:
    """The numeric cells of an array, by index (never by arrival order; checklist 3)."""
    if not isinstance(value, dict):
        return []
    return sorted((int(k), v) for k, v in value.items() if is_index(k))


def string_list(value: PhpValue | None) -> list[str]:
    """``a[0]=x&a[1]=y`` or ``a[]=x&a[]=y`` -> ``["x", "y"]``; a lone scalar is one item."""
    if isinstance(value, str):
        return [value] if value else []
    return [v for _, v in indexed(value) if isinstance(v, str)]


def comma_list(value: str) -> list[str]:
    """``list_ids=1,2,3`` and the comma cells of importContacts (wire facts 1.1 "Comma lists")."""
    return [part.strip() for part in value.split(",") if part.strip()]


def as_bool(value: str | None, default: bool = False) -> bool:
    """1/0, true/false, True/False, on/off, "" (checklist 5); anything else raises ValueError."""
    if value is None:
        return default
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(value)
