"""The listener routes a provider calls: batch files it fetches and callbacks it posts.

``routes`` is one ``httpx.Request -> httpx.Response`` handler for everything under ``/jobs``:
``syncd run`` mounts it beside its status routes (``syncd.daemon.http``), ``syncd run-once``
serves it alone while it waits (``syncd.commands.cycles``). The paths carry the job's id, the
part number and a per-part secret (``JobTicket``); ``syncd.engine.confirm_later`` checks the
secret in constant time and does the rest. Answers say little: a caller without the secret learns
only "not found" or "forbidden".
"""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
from sqlalchemy.engine import Engine

from syncd.commands.listener import json_answer
from syncd.config import Config
from syncd.emulators.kit.server import Handler
from syncd.engine import confirm_later
from syncd.providers import callback_reader

#: Where the routes live, and the methods they answer (HEAD answers as GET).
PREFIX = "/jobs"
METHODS = ("GET", "POST")

_PATH = re.compile(r"^/jobs/(?P<job>[0-9a-f]{32})/(?P<part>\d{1,4})/(?P<kind>file|callback)/"
                   r"(?P<secret>[A-Za-z0-9_-]{16,64})$")  # fmt: skip


def routes(db: Engine, config: Callable[[], Config]) -> Handler:
    """Serve job files (GET) and take callbacks (POST); ``config`` gives the current configuration
    (it follows reloads)."""

    def reader_for(target: str) -> confirm_later.CallbackReader | None:
        chosen = [t for t in config().target if t.name == target]
        return callback_reader(chosen[0]) if chosen else None

    def file(job: str, part: int, secret: str) -> httpx.Response:
        answer = confirm_later.serve_file(db, job, part, secret)
        if answer.status != 200:
            return _answer(answer)
        headers = {"Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store"}
        return httpx.Response(200, headers=headers, content=answer.body)

    def callback(job: str, part: int, secret: str, request: httpx.Request) -> httpx.Response:
        answer = confirm_later.receive_callback(
            db,
            job,
            part,
            secret,
            request.content,
            request.headers.get("Content-Type", ""),
            reader_for,
        )
        return _answer(answer)

    def handle(request: httpx.Request) -> httpx.Response:
        method = "GET" if request.method == "HEAD" else request.method
        if method not in METHODS:
            return json_answer(405, {"status": "error", "reason": "method not allowed"})
        match = _PATH.match(request.url.path)
        if match is None or match["kind"] != ("file" if method == "GET" else "callback"):
            return _answer(confirm_later.Answer(404, "not found"))
        job, part, secret = match["job"], int(match["part"]), match["secret"]
        return file(job, part, secret) if method == "GET" else callback(job, part, secret, request)

    return handle


def _answer(answer: confirm_later.Answer) -> httpx.Response:
    status = "ok" if answer.status == 200 else "error"
    return json_answer(answer.status, {"status": status, "reason": answer.reason})
