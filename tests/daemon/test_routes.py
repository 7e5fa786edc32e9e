"""The listener's routes in-process: each is an ``httpx`` handler, driven through ``MockTransport``.

The daemon's router (health, readiness, metrics, mounted routes) and the job routes Netcore calls
answer here without a socket; ``test_metrics_http.py`` proves the same router over real loopback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from syncd.commands import job_routes
from syncd.commands.listener import guarded
from syncd.config import Config, HttpConfig, parse_config
from syncd.daemon.http import StatusServer
from syncd.emulators.kit.server import Handler
from syncd.engine import confirm_later
from syncd.metrics import Metrics
from syncd.providers import PROVIDERS
from syncd.providers.base import JobTicket
from syncd.store import open_engine

LOOPBACK = HttpConfig(listen="127.0.0.1:0")


def client(handler: Handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://syncd.test")


class Probe:
    def __init__(self) -> None:
        self.answer = (True, "ok")

    def __call__(self) -> tuple[bool, str]:
        return self.answer


# ---- the daemon's router ---------------------------------------------------------------------


def test_health_and_readiness_answer_from_their_checks_without_a_socket() -> None:
    health, ready = Probe(), Probe()
    router = StatusServer(LOOPBACK, health=health, ready=ready, metrics=Metrics())
    with client(router.handle) as c:
        ok = c.get("/healthz")
        assert (ok.status_code, ok.text) == (200, '{"status": "ok"}\n')
        assert ok.headers["Content-Type"] == "application/json"
        assert ok.headers["Cache-Control"] == "no-store"
        assert c.get("/readyz").status_code == 200
        ready.answer = (False, "store unreachable")
        failing = c.get("/readyz")
        assert failing.status_code == 503
        assert failing.json() == {"status": "failing", "reason": "store unreachable"}
        assert c.head("/healthz").status_code == 200


def test_a_check_that_raises_is_a_failing_check() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    router = StatusServer(LOOPBACK, health=broken, ready=broken, metrics=Metrics())
    with client(router.handle) as c:
        answer = c.get("/healthz")
    assert answer.status_code == 503 and "RuntimeError" in answer.json()["reason"]


def test_metrics_answer_the_prometheus_exposition() -> None:
    metrics = Metrics()
    metrics.set_pending("news", 7)
    router = StatusServer(LOOPBACK, health=Probe(), ready=Probe(), metrics=metrics)
    with client(router.handle) as c:
        answer = c.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert 'syncd_pending_local_changes{target="news"} 7.0' in answer.text


def test_mounted_routes_match_whole_segments_and_their_own_method() -> None:
    router = StatusServer(LOOPBACK, health=Probe(), ready=Probe(), metrics=Metrics())
    seen: list[httpx.Request] = []

    def hook(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, content=b"thanks")

    def deeper(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"deeper")

    router.add_route("POST", "/hooks/", hook)
    router.add_route("post", "/hooks/unisender", deeper)
    with client(router.handle) as c:
        assert c.post("/hooks/other?x=1", content=b"payload").status_code == 202
        assert (seen[0].url.path, seen[0].url.query, seen[0].content) == (
            "/hooks/other",
            b"x=1",
            b"payload",
        )
        assert c.post("/hooks/unisender/42").text == "deeper"  # the longest prefix wins
        assert c.get("/hooks/unisender").status_code == 405
        assert c.get("/hooksx").status_code == 404
        assert c.post("/healthz").status_code == 405
        missing = c.get("/nope")
    assert missing.json() == {"status": "error", "reason": "not found"}
    with pytest.raises(ValueError, match="must start with '/'"):
        router.add_route("GET", "hooks", hook)


def test_a_route_that_raises_answers_500_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("boom")

    with client(guarded(broken)) as c:
        answer = c.get("/x")
    assert answer.status_code == 500
    assert answer.json() == {"status": "error", "reason": "internal error"}
    assert "HTTP GET /x failed" in caplog.text


# ---- the job routes --------------------------------------------------------------------------


class Jobs:
    """A store holding one sent Netcore job of one part, and the job routes over it."""

    def __init__(self, tmp_path: Path) -> None:
        self.config: Config = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path / 'syncd.db'}"},
                "target": [
                    {
                        "name": "news",
                        "provider": "netcore",
                        "list_id": "1",
                        "key": "email",
                        "api_key": "netcore-key-5d1e",
                        "public_url": "http://127.0.0.1:9",
                        "fields": {"FIRST_NAME": "name"},
                    }
                ],
            },
            "test",
            providers=PROVIDERS,
        )
        self.db: Engine = open_engine(self.config.store.url)
        row = confirm_later.JobRowSpec("a@example.com", "create", None, "digest")
        with Session(self.db) as session:
            (ticket,) = confirm_later.open_job(session, "news", [row], [b"email\n"], ttl=60)
            assert ticket is not None
            confirm_later.record_answer(session, ticket, accepted=True)
            session.commit()
        self.ticket: JobTicket = ticket
        self.client = client(job_routes.routes(self.db, lambda: self.config))


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Jobs]:
    j = Jobs(tmp_path)
    yield j
    j.client.close()
    j.db.dispose()


def test_the_file_goes_only_to_the_holder_of_its_secret(jobs: Jobs) -> None:
    c, ticket = jobs.client, jobs.ticket
    served = c.get(ticket.file_path)
    assert (served.status_code, served.content) == (200, b"email\n")
    assert served.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert served.headers["Cache-Control"] == "no-store"
    assert c.head(ticket.file_path).status_code == 200
    forged = ticket.file_path.rsplit("/", 1)[0] + "/" + "A" * 32
    assert c.get(forged).json() == {"status": "error", "reason": "not found"}
    assert c.get(forged).status_code == 404
    assert c.get(ticket.callback_path).status_code == 404  # a callback path is not a file
    assert c.get("/jobs/nope").status_code == 404
    assert c.put(ticket.file_path).status_code == 405


def test_a_callback_counts_once_and_only_with_its_secret(jobs: Jobs) -> None:
    c, ticket = jobs.client, jobs.ticket
    report = json.dumps({"status": "completed", "errors": []}).encode()
    headers = {"Content-Type": "application/json"}
    forged = ticket.callback_path.rsplit("/", 1)[0] + "/" + "A" * 32
    refused = c.post(forged, content=report, headers=headers)
    assert (refused.status_code, refused.json()["reason"]) == (403, "forbidden")
    assert c.post(ticket.file_path, content=report).status_code == 404  # a file path takes no post
    taken = c.post(ticket.callback_path, content=report, headers=headers)
    assert (taken.status_code, taken.json()) == (200, {"status": "ok", "reason": "ok"})
    again = c.post(ticket.callback_path, content=report, headers=headers)
    assert again.status_code == 409
    with Session(jobs.db) as session:
        assert confirm_later.waiting_rows(session, "news") == 0
    assert c.get(ticket.file_path).status_code == 410  # the file is no longer served
