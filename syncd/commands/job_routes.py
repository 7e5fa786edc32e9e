"""The listener routes a provider calls: batch files it fetches and callbacks it posts.

Mounted on the daemon's listener (and on ``run-once``'s while it waits). The paths carry the
job's id, the part number and a per-part secret (``JobTicket``); ``syncd.engine.confirm_later``
checks the secret in constant time and does the rest. Answers say little: a caller without the
secret learns only "not found" or "forbidden".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from sqlalchemy.engine import Engine

from syncd.config import Config
from syncd.daemon.http import Request, Response, StatusServer
from syncd.engine import confirm_later
from syncd.providers import callback_reader

_PATH = re.compile(r"^/jobs/(?P<job>[0-9a-f]{32})/(?P<part>\d{1,4})/(?P<kind>file|callback)/"
                   r"(?P<secret>[A-Za-z0-9_-]{16,64})$")  # fmt: skip


def mount(server: StatusServer, db: Engine, config: Callable[[], Config]) -> None:
    """Serve job files and callbacks; ``config`` gives the current configuration (reloads)."""

    def reader_for(target: str) -> confirm_later.CallbackReader | None:
        chosen = [t for t in config().target if t.name == target]
        return callback_reader(chosen[0]) if chosen else None

    def file(request: Request) -> Response:
        match = _PATH.match(request.path)
        if match is None or match["kind"] != "file":
            return _answer(confirm_later.Answer(404, "not found"))
        answer = confirm_later.serve_file(db, match["job"], int(match["part"]), match["secret"])
        if answer.status != 200:
            return _answer(answer)
        headers = {"Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store"}
        return 200, headers, answer.body

    def callback(request: Request) -> Response:
        match = _PATH.match(request.path)
        if match is None or match["kind"] != "callback":
            return _answer(confirm_later.Answer(404, "not found"))
        answer = confirm_later.receive_callback(
            db,
            match["job"],
            int(match["part"]),
            match["secret"],
            request.body,
            request.headers.get("Content-Type", ""),
            reader_for,
        )
        return _answer(answer)

    server.add_route("GET", "/jobs", file)
    server.add_route("POST", "/jobs", callback)


def _answer(answer: confirm_later.Answer) -> Response:
    status = "ok" if answer.status == 200 else "error"
    body = json.dumps({"status": status, "reason": answer.reason}).encode() + b"\n"
    return answer.status, {"Content-Type": "application/json", "Cache-Control": "no-store"}, body
