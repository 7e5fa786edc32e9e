"""The ingest API's routes: ``POST /v1/contacts`` and ``GET /v1/contacts/{key}``.

Both ask for ``Authorization: Bearer <[http] ingest_token>``, compared in constant time (a wrong
or missing token is 401; without a token configured the daemon does not mount these routes).
POST takes NDJSON or one JSON array of inbox records (``schemas/inbox-record.schema.json``) and
answers 200 with ``schemas/ingest-answer.schema.json``; a body over ``[http] max_body`` is
refused with 413 by the listener before it is read; ``Idempotency-Key`` makes a retry apply
once (its answer comes back with ``Idempotent-Replayed: true``). What a body does to the mirror
is ``syncd.local.intake``'s; ``on_applied`` hears which local lists changed, after the commit.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httpx
from sqlalchemy.engine import Engine

from syncd.config import Config
from syncd.emulators.kit.server import Handler
from syncd.local import intake

log = logging.getLogger("syncd.http")

PREFIX = "/v1/contacts"
METHODS = ("GET", "POST")
#: Media types a body may be declared as (none declared is read as NDJSON too).
BODY_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/json")


def answer(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    body = json.dumps(payload, ensure_ascii=False).encode() + b"\n"
    return httpx.Response(
        status,
        headers={
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
            **(headers or {}),
        },
        content=body,
    )


def authorised(request: httpx.Request, token: str) -> bool:
    """Whether the request carries ``Bearer <token>``; the comparison takes the same time
    however much of the token a guess gets right."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(given.strip().encode(), token.encode())


def routes(
    engine: Engine, config: Callable[[], Config], on_applied: Callable[[set[str]], None]
) -> Handler:
    """One handler for every request under ``PREFIX``."""

    def handle(request: httpx.Request) -> httpx.Response:
        current = config()
        secret = current.http.ingest_token
        if secret is None or not authorised(request, secret.get_secret_value()):
            return answer(
                401,
                {"status": "error", "reason": "a valid bearer token is required"},
                {"WWW-Authenticate": 'Bearer realm="syncd"'},
            )
        rest = request.url.path[len(PREFIX) :]
        if request.method == "POST" and rest in ("", "/"):
            return _post(engine, current, request, on_applied)
        if request.method == "GET" and rest.startswith("/") and len(rest) > 1:
            found = intake.read_contact(engine, current.ingest, unquote(rest[1:]))
            if found is None:
                return answer(404, {"status": "error", "reason": "no such contact"})
            return answer(200, found)
        return answer(405, {"status": "error", "reason": "method not allowed"})

    return handle


def _post(
    engine: Engine,
    config: Config,
    request: httpx.Request,
    on_applied: Callable[[set[str]], None],
) -> httpx.Response:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media and media not in BODY_TYPES:
        reason = f"Content-Type {media} is not taken; send {' or '.join(BODY_TYPES[::3])}"
        return answer(415, {"status": "error", "reason": reason})
    body = request.read()
    if len(body) > config.http.max_body:
        return answer(413, {"status": "error", "reason": "body too large ([http] max_body)"})
    key = request.headers.get("idempotency-key")
    if key is not None:
        problem = intake.key_problem(key)
        if problem is not None:
            return answer(400, {"status": "error", "reason": problem})
    outcome = intake.apply_body(engine, config.ingest, body, key)
    if outcome.status != 200:
        return answer(outcome.status, outcome.body)
    if outcome.replayed:
        return answer(200, outcome.body, {"Idempotent-Replayed": "true"})
    log.info(
        "ingest API: %d applied, %d rejected",
        outcome.body["applied"],
        len(outcome.body["rejected"]),
        extra={"lists": sorted(outcome.lists)},
    )
    if outcome.body["applied"] and outcome.lists:
        on_applied(set(outcome.lists))
    return answer(200, outcome.body)
