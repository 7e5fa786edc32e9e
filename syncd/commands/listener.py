"""The socket behind ``[http] listen``: one ``httpx.Request -> httpx.Response`` handler served with
the limits an open port needs.

``syncd run`` serves its router here (``syncd.daemon.http``), ``syncd run-once`` the job routes
alone (``syncd.commands.job_routes``) while it waits for callbacks; both go through ``listen``, so
both get the same request deadline, worker bound, body limit, error answers and bind message. The
server itself is the loopback server the emulators use (``syncd.emulators.kit.server``): a thread
per connection up to ``MAX_WORKERS`` (one more is answered 503 at once rather than queued behind
slow clients), daemon threads, IPv6 literal hosts.
"""

from __future__ import annotations

import json
import logging

import httpx

from syncd.config import HttpConfig
from syncd.emulators.kit.server import BindError, Handler, LoopbackServer
from syncd.errors import ListenError

log = logging.getLogger("syncd.http")

MAX_BODY = 1 << 20  # the routes take small callbacks; anything bigger is a mistake or abuse
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its whole request
#: Connections served at once: probes, a scrape and Netcore's callbacks need a handful; the bound
#: keeps a crowd of slow or idle clients from costing a thread each.
MAX_WORKERS = 32


def listen(config: HttpConfig, handler: Handler) -> LoopbackServer:
    """Serve ``handler`` on ``[http] listen`` from a daemon thread; the caller stops the server.

    A route that raises answers 500 (and logs the error) instead of dropping the client.
    """
    host, port = config.address()
    server = LoopbackServer(
        guarded(handler),
        host,
        port,
        timeout=REQUEST_TIMEOUT,
        # the ingest API takes contact batches: its own bound, when it is on
        max_body=config.max_body if config.ingest_enabled else MAX_BODY,
        max_workers=MAX_WORKERS,
        name="syncd-http",
    )
    try:
        server.start()
    except BindError as exc:
        raise ListenError(
            f"cannot listen on {exc.address} ([http] listen): {exc.reason}; "
            'free the port, choose another, or set listen = "off"'
        ) from exc
    log.info("listening on %s", server.url)
    return server


def guarded(handler: Handler) -> Handler:
    """``handler`` answering a JSON 500 when it raises, with a debug line for every request."""

    def answer(request: httpx.Request) -> httpx.Response:
        try:
            response = handler(request)
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.url.path)
            response = json_answer(500, {"status": "error", "reason": "internal error"})
        # Probes and scrapes arrive every few seconds: a line each at INFO would bury the logs.
        log.debug("HTTP %s %s %d", request.method, request.url.path, response.status_code)
        return response

    return answer


def json_answer(status: int, payload: dict[str, str]) -> httpx.Response:
    """A short JSON answer no cache keeps."""
    body = json.dumps(payload).encode() + b"\n"
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    return httpx.Response(status, headers=headers, content=body)
