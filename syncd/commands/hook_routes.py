"""Provider webhooks in: ``POST /hooks/{target}/{token}``.

The route does only what can be done in the provider's few seconds (Unisender waits 3 s,
Octopush about 1 s) and nothing that calls a provider: it checks what can be checked, queues
the keys the notification names in the store (``syncd.store.hooks``) and answers 200; the
daemon's hook worker re-reads and reconciles them (``syncd.engine.single``).

What is checked, and why each failure is 403 with nothing queued:

- the target exists and has ``hooks = true``, and ``{token}`` is its store-kept token
  (compared in constant time). Octopush signs nothing: the unguessable path is its only proof;
- Unisender/Selzy's ``auth``: the MD5 hex digest of the body with its ``auth`` value replaced by
  the API key ([ASSUMED], confirmed only for the sister transactional API). Both readings of
  that recipe are accepted: the value replaced inside the raw body, and the body re-serialised
  compactly with the key in ``auth`` (a published client's). ``hook_auth = "off"`` turns the
  check off for an account whose recipe turns out different: a hook is only a prompt to re-read,
  so a forged one costs a read and changes nothing.

Retries are deduplicated twice: a body identical to the target's last one is a repeated delivery
(``_LastBody``), and a key already queued is queued once (``syncd.store.hooks``).

Unisender's events name the contact by ``event_data.email`` (every event is a prompt, whatever
its name); a phone-keyed target cannot re-read by email, so its events ask for a full cycle
instead. Octopush's STOP callback (``number``, ``stop_date``) queues that number as an opt-out;
its delivery receipts and replies, which may share the URL, are answered 200 and ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from syncd.commands.listener import json_answer
from syncd.config import Config, TargetConfig
from syncd.core.contacts import normalise_email, normalise_phone
from syncd.emulators.kit.server import Handler
from syncd.logs import register_secret
from syncd.providers import PROVIDERS
from syncd.store import hooks as store_hooks

log = logging.getLogger("syncd.http")

PREFIX = "/hooks"
METHODS = ("POST",)
#: the metric label of a request for no target with hooks (keeps made-up names out of it)
NO_TARGET = "(none)"

#: (target, outcome): outcome is queued, duplicate, ignored, forbidden, bad_request
Observe = Callable[[str, str], None]
#: a target's keys were queued (wake the worker), or it needs a full cycle (``full``)
Prompt = Callable[[str, bool], None]


def hook_url(public_url: str, target: str, token: str) -> str:
    return f"{public_url.rstrip('/')}{PREFIX}/{target}/{token}"


#: seconds within which a body identical to the target's last one is a repeated delivery
REPEAT_WINDOW = 60.0


class _LastBody:
    """Each target's last accepted body: a provider that delivers one notification twice (a
    network retry, a duplicate) sends the same bytes again, and the copy is answered 200 without
    queueing anything. Only the very last body counts: a contact that left, came back and left
    again sends a different body in between, so its second leaving is read again. The bodies
    carry no timestamp, so an identical body after ``REPEAT_WINDOW`` is taken as new."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, tuple[bytes, float]] = {}

    def repeated(self, target: str, body: bytes) -> bool:
        digest = hashlib.sha256(body).digest()
        now = time.monotonic()
        with self._lock:
            last = self._last.get(target)
            self._last[target] = (digest, now)
        return last is not None and last[0] == digest and now - last[1] < REPEAT_WINDOW


def routes(
    engine: Engine,
    config: Callable[[], Config],
    on_prompt: Prompt,
    observe: Observe | None = None,
) -> Handler:
    """One handler for every request under ``PREFIX``."""
    seen = observe or (lambda _t, _o: None)
    recent = _LastBody()

    def handle(request: httpx.Request) -> httpx.Response:
        parts = request.url.path[len(PREFIX) :].strip("/").split("/")
        target = _hooked(config(), parts[0]) if len(parts) == 2 else None
        token = store_hooks.known_token(engine, target.name) if target is not None else None
        if token is not None:
            register_secret(token)  # the path holds it: never in a log line
        if (
            target is None
            or token is None
            or not hmac.compare_digest(parts[1].encode(), token.encode())
        ):
            seen(NO_TARGET if target is None else target.name, "forbidden")
            return json_answer(403, {"status": "error", "reason": "forbidden"})
        body = request.read()
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            seen(target.name, "bad_request")
            return json_answer(400, {"status": "error", "reason": "the body is not a JSON object"})
        kind = PROVIDERS[target.provider].capabilities.hooks
        key = target.api_key.get_secret_value()
        if kind != "opt_out" and target.hook_auth == "on" and not auth_holds(body, payload, key):
            log.warning("webhook refused: its auth does not match", extra={"target": target.name})
            seen(target.name, "forbidden")
            return json_answer(403, {"status": "error", "reason": "forbidden"})
        if recent.repeated(target.name, body):
            seen(target.name, "duplicate")
            return json_answer(200, {"status": "ok", "queued": "0"})
        if kind == "opt_out":
            region = config().ingest.default_region
            return _opt_out(engine, target, payload, region, on_prompt, seen)
        return _events(engine, target, payload, on_prompt, seen)

    return handle


def auth_holds(raw: bytes, payload: dict[str, Any], key: str) -> bool:
    """Unisender's ``auth`` recipe, in either reading (see the module docstring)."""
    given = payload.get("auth")
    if not isinstance(given, str) or not given or not key:
        return False
    quoted = json.dumps(given).encode()
    candidates = [
        raw.replace(b'"auth":' + quoted, b'"auth":' + json.dumps(key).encode(), 1),
        raw.replace(b'"auth": ' + quoted, b'"auth": ' + json.dumps(key).encode(), 1),
        json.dumps({**payload, "auth": key}, separators=(",", ":"), ensure_ascii=False).encode(),
    ]
    ok = False
    for text in candidates:
        digest = hashlib.md5(text, usedforsecurity=False).hexdigest()
        ok |= hmac.compare_digest(digest.encode(), given.lower().encode())
    return ok


def _hooked(config: Config, name: str) -> TargetConfig | None:
    for t in config.target:
        if t.name == name and t.hooks:
            return t
    return None


def _events(
    engine: Engine, target: TargetConfig, payload: dict[str, Any], on_prompt: Prompt, seen: Observe
) -> httpx.Response:
    emails: list[str] = []
    for user in _list(payload.get("events_by_user")):
        for event in _list(user.get("events") if isinstance(user, dict) else None):
            data = event.get("event_data") if isinstance(event, dict) else None
            raw = data.get("email") if isinstance(data, dict) else None
            if not isinstance(raw, str):
                continue
            try:
                emails.append(normalise_email(raw))
            except ValueError:
                log.info("webhook event: unreadable email ignored", extra={"target": target.name})
    if not emails:
        seen(target.name, "ignored")
        return json_answer(200, {"status": "ok", "queued": "0"})
    if target.key != "email":  # getContact reads by email: the export reads the phones
        seen(target.name, "queued")
        on_prompt(target.name, True)
        return json_answer(200, {"status": "ok", "queued": "0"})
    added = store_hooks.enqueue(engine, target.name, emails, store_hooks.REREAD)
    seen(target.name, "queued" if added else "duplicate")
    on_prompt(target.name, False)
    return json_answer(200, {"status": "ok", "queued": str(added)})


def _opt_out(
    engine: Engine,
    target: TargetConfig,
    payload: dict[str, Any],
    region: str | None,
    on_prompt: Prompt,
    seen: Observe,
) -> httpx.Response:
    number = payload.get("number")
    if not isinstance(number, str) or "stop_date" not in payload:
        seen(target.name, "ignored")  # a delivery receipt or a reply on the same URL
        return json_answer(200, {"status": "ok", "queued": "0"})
    try:
        key = normalise_phone(number, region)
    except ValueError:
        seen(target.name, "bad_request")
        return json_answer(400, {"status": "error", "reason": "number is not a phone number"})
    added = store_hooks.enqueue(engine, target.name, [key], store_hooks.OPT_OUT)
    seen(target.name, "queued" if added else "duplicate")
    on_prompt(target.name, False)
    return json_answer(200, {"status": "ok", "queued": str(added)})


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
