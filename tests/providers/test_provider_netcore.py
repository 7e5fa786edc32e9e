"""Netcore Smartech: full cycles through ``syncd.commands.cycles.run_once`` against the Netcore
emulator.

syncd's side of the calls goes to the emulator in-process (``MockTransport``); the provider's side
is real loopback HTTP: the emulator fetches each batch file from syncd's listener and POSTs the
job's callback there, as Netcore would. The listener is the one ``run_once`` starts on
``[http] listen`` while it waits for callbacks. What every adapter promises is
``contract.py``'s, run here by ``TestNetcoreContract``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from conftest import World, config_toml, daemon_tables, emulator_process, free_port
from contract import ProviderContract
from provider_helpers import form
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from syncd.commands import cycles, job_routes
from syncd.config import Config, parse_config
from syncd.core.projection import Projection
from syncd.daemon.http import StatusServer
from syncd.emulators.netcore import BulkJob, NetcoreEmulator
from syncd.engine.result import CycleOptions, CycleResult
from syncd.metrics import Metrics
from syncd.providers import PROVIDERS
from syncd.providers.base import PushCall, RowChange
from syncd.providers.netcore import NetcoreProvider
from syncd.store import open_engine
from syncd.store.models import Base, PushJob, PushJobRow, Rejection

API_KEY = "netcore-key-5d1e"
FIELDS = {"FIRST_NAME": "name", "CITY": "city"}


class TestNetcoreContract(ProviderContract[NetcoreProvider]):
    """Without a ``public_url``: each contact goes by ``activity=addsync``; the batch files
    the provider fetches are the cycles' below."""

    adapter_class = NetcoreProvider
    provider = "netcore"
    api_key = API_KEY
    settings: ClassVar[dict[str, Any]] = {
        "name": "news",
        "key": "email",
        "base_url": "https://api.netcore.test/apiv2",
        "fields": dict(FIELDS),
        "max_rows_per_call": 25,
    }
    keys = ("bob@example.com", "ann@example.com", "carl@example.com")
    columns = ("FIRST_NAME", "CITY")
    answer_names: ClassVar[list[str]] = ["result", "requestid", "message", "status", "errors"]

    def emulator(self) -> NetcoreEmulator:
        emulator = NetcoreEmulator(api_key=API_KEY)
        emulator.add_list("Newsletter")
        return emulator

    def sent_rows(self, request: httpx.Request) -> list[dict[str, str]]:
        sent = dict(form(request))
        activity = request.url.params["activity"]
        if activity == "bulkupload":
            return []  # the rows are in the file the provider fetches
        if activity == "delete":
            return [{"EMAIL": sent["data"]}]
        return [json.loads(sent["data"])]

    def file_rows(self, body: bytes) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(body.decode())))


class HeldFiles(NetcoreEmulator):
    """The emulator, except that it never fetches a bulk upload's file (the contract reads the
    file from ``hosted_file``; the cycles below have it fetched over loopback)."""

    def _process(self, job: BulkJob) -> None:
        pass


class TestNetcoreBulkContract(TestNetcoreContract):
    """With a ``public_url``: creates and updates go in files, confirmed later."""

    settings: ClassVar[dict[str, Any]] = {
        **TestNetcoreContract.settings,
        "public_url": "https://syncd.example.test",
    }

    def emulator(self) -> NetcoreEmulator:
        emulator = HeldFiles(api_key=API_KEY)
        emulator.add_list("Newsletter")
        return emulator


class NetcoreWorld(World):
    """A Netcore emulator account, a mirror and one email-keyed target 'news' (its contacts
    live in Pune)."""

    emu: NetcoreEmulator  # type: ignore[assignment]

    def __init__(self, tmp_path: Path, **target: Any) -> None:
        self.tmp = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.emu = NetcoreEmulator(api_key=API_KEY)
        self.list_id = self.emu.add_list("Newsletter")
        self.port = free_port()
        values: dict[str, Any] = {
            "name": "news",
            "provider": "netcore",
            "list_id": str(self.list_id),
            "key": "email",
            "api_key": API_KEY,
            "base_url": "http://127.0.0.1:9/apiv2",
            "public_url": f"http://127.0.0.1:{self.port}",
            "callback_timeout": 10,
            "rate_limit_per_minute": 1_000_000,
            "fields": dict(FIELDS),
            **target,
        }
        if values["public_url"] is None:
            del values["public_url"]
        self.config: Config = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path / 'syncd.db'}"},
                "http": {"listen": f"127.0.0.1:{self.port}"},
                "target": [values],
            },
            "test",
            providers=PROVIDERS,
        )
        self.db: Engine = open_engine(self.config.store.url)
        self._files = 0

    def cycle(self, wait: float | None = 10.0, **options: Any) -> CycleResult:
        (result,) = cycles.run_once(
            self.config,
            db=self.db,
            options=CycleOptions(**options),
            providers=self.provider,
            callback_wait=wait,
        )
        return result

    def add_local(self, n: int, start: int = 0, **extra: Any) -> list[str]:
        return super().add_local(n, start, **{"city": "Pune", **extra})

    def remote(self) -> dict[str, dict[str, str]]:
        return self.emu.members(self.list_id)

    def base_keys(self) -> set[str]:
        with Session(self.db) as session:
            return set(session.exec(select(Base.key).where(col(Base.target) == "news")).all())

    def waiting(self) -> set[str]:
        with Session(self.db) as session:
            return set(session.exec(select(PushJobRow.key)).all())

    def bulk_calls(self) -> int:
        return self.emu.calls["bulkupload"]


@pytest.fixture
def world(tmp_path: Path) -> NetcoreWorld:
    return NetcoreWorld(tmp_path)


def test_creates_updates_and_removals_converge_and_a_quiet_cycle_writes_nothing(
    world: NetcoreWorld,
) -> None:
    emails = world.add_local(5)
    first = world.cycle()
    assert first.outcome == "converged", first.message
    summary = first.summary()
    assert summary["awaiting_confirmation"] == 5 and summary["confirmed_later"] == 5
    assert world.bulk_calls() == 1
    remote = world.remote()
    assert sorted(remote) == emails
    assert remote[emails[0]] == {"FIRST_NAME": "Person 0", "CITY": "Pune", "EMAIL": emails[0]}
    assert world.base_keys() == set(emails) and world.waiting() == set()
    world.emu.wait_idle()  # the emulator notes the callback's answer after syncd has settled
    (job,) = world.emu.jobs
    assert job.callbacks_sent == 1 and job.callback_answers == [200]
    assert job.path.startswith(f"http://127.0.0.1:{world.port}/jobs/")

    quiet = world.cycle()
    assert quiet.outcome == "converged" and quiet.write_calls == 0 and quiet.api_calls == 0

    world.ingest([{"email": emails[1], "city": "Goa"}])
    world.ingest([{"email": emails[2], "delete": 1}])
    third = world.cycle()
    assert third.outcome == "converged", third.message
    assert third.summary()["deleted"] == 1 and third.summary()["confirmed_later"] == 1
    assert world.emu.calls["delete"] == 1 and world.bulk_calls() == 2
    remote = world.remote()
    assert emails[2] not in remote and emails[2] in world.emu.contacts  # off the list only
    assert remote[emails[1]]["CITY"] == "Goa"
    assert world.cycle().write_calls == 0


def test_the_file_is_a_csv_with_the_primary_key_first(world: NetcoreWorld) -> None:
    provider = world.provider(world.config, world.config.target[0])
    row = Projection.build("a@example.com", {"FIRST_NAME": 'Ann "A", Jr', "CITY": "Pune"})
    opted_out = Projection.build("b@example.com", {"CITY": "Goa"}, status="unsubscribed")
    call = PushCall("create", ("FIRST_NAME", "CITY"), (RowChange("create", row),))
    assert provider.hosted_file(call) == (
        b'EMAIL,FIRST_NAME,CITY\r\na@example.com,"Ann ""A"", Jr",Pune\r\n'
    )
    # an opted-out row never goes into a file: an upload would make it an active contact
    call = PushCall("update", ("CITY",), (RowChange("update", opted_out),))
    assert provider.hosted_file(call) == b"EMAIL,CITY\r\n"
    assert provider.hosted_file(PushCall("exclude", (), (RowChange("exclude", row),))) is None


def test_after_its_callback_a_file_is_no_longer_served(world: NetcoreWorld) -> None:
    world.add_local(2)
    world.cycle()
    (job,) = world.emu.jobs
    with Listener(world):
        assert httpx.get(job.path).status_code == 410
        wrong = re.sub(r"/file/[^/]+$", "/file/" + "x" * 32, job.path)
        assert httpx.get(wrong).status_code == 404


def test_batches_split_by_rows_and_contacts_split_into_column_groups(tmp_path: Path) -> None:
    fields = {"FIRST_NAME": "name", "CITY": "city", "PLAN": "plan", "AGE": "age"}
    world = NetcoreWorld(tmp_path, max_rows_per_call=10, max_fields_per_call=3, fields=fields)
    emails = world.add_local(25, plan="gold", age="40")
    result = world.cycle()
    assert result.outcome == "converged", result.message
    # 3 batches (10, 10, 5) x 2 column groups (key + 2 fields, key + 2 fields)
    assert world.bulk_calls() == 6 and len({j.path.split("/")[4] for j in world.emu.jobs}) == 3
    assert result.summary()["confirmed_later"] == 25
    contact = world.remote()[emails[24]]
    assert contact == {
        "EMAIL": emails[24],
        "FIRST_NAME": "Person 24",
        "CITY": "Pune",
        "PLAN": "gold",
        "AGE": "40",
    }
    assert world.cycle().write_calls == 0


def test_rows_the_callback_refuses_are_rejections_with_the_providers_message(
    tmp_path: Path,
) -> None:
    world = NetcoreWorld(tmp_path, fields={**FIELDS, "MOBILE": "mobile_raw"})
    emails = world.add_local(3)
    world.ingest([{"email": emails[1], "mobile_raw": "call me"}])
    result = world.cycle()
    assert result.outcome == "rejected"
    assert result.message == "the provider's callbacks refused 1 rows"
    with Session(world.db) as session:
        rejections = session.exec(select(Rejection)).all()
    assert [(r.key, r.code, r.retryable) for r in rejections] == [(emails[1], "invalid", False)]
    assert "Invalid mobile" in rejections[0].message
    assert world.base_keys() == {emails[0], emails[2]}
    again = world.cycle()  # a refused row waits until its record changes
    assert again.write_calls == 0 and again.summary()["rejected"] == 1
    world.ingest([{"email": emails[1], "mobile_raw": "+919812345678"}])
    fixed = world.cycle()
    assert fixed.outcome == "converged" and world.remote()[emails[1]]["MOBILE"] == "919812345678"


def test_a_callback_that_never_comes_holds_the_rows_until_the_timeout_then_they_go_again(
    tmp_path: Path,
) -> None:
    world = NetcoreWorld(tmp_path, callback_timeout=2)
    world.emu.admin_post("callbacks", {"mode": "never"})
    emails = world.add_local(3)
    first = world.cycle(wait=0.5)
    assert first.outcome == "awaiting" and first.exit_code == 1
    assert "3 rows still wait for the provider's callback" in first.message
    assert world.waiting() == set(emails) and world.base_keys() == set()
    assert sorted(world.remote()) == emails  # the provider did apply the file
    (status,) = cycles.status(world.config, db=world.db)
    assert status.awaiting_callback == 3 and not status.two_way

    held = world.cycle(wait=0.5)  # still within callback_timeout: not sent again
    assert held.summary()["still_awaiting"] == 3 and held.write_calls == 0

    world.emu.admin_post("callbacks", {"mode": "normal"})
    time.sleep(2.1)  # past callback_timeout: the job expires and its rows go again
    again = world.cycle()
    assert again.outcome == "converged", again.message
    assert world.bulk_calls() == 2 and world.base_keys() == set(emails)
    with Session(world.db) as session:
        states = sorted(j.state for j in session.exec(select(PushJob)).all())
    assert states == ["done", "expired"]
    assert world.cycle().write_calls == 0


def awaiting_callback(tmp_path: Path) -> tuple[NetcoreWorld, list[str], BulkJob]:
    """A world whose first cycle uploaded two contacts and waits for a callback held back."""
    world = NetcoreWorld(tmp_path, callback_timeout=30)
    world.emu.admin_post("callbacks", {"mode": "never"})
    emails = world.add_local(2)
    assert world.cycle(wait=0.2).outcome == "awaiting"
    (job,) = world.emu.jobs
    return world, emails, job


def test_a_second_callback_for_the_same_job_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    world, emails, job = awaiting_callback(tmp_path)
    with Listener(world):  # the daemon's listener between cycles
        world.emu.admin_post("replay", {"requestid": job.requestid, "times": 2})
        assert job.callback_answers == [200, 409]
        assert world.base_keys() == set(emails) and world.waiting() == set()
        world.ingest([{"email": emails[0], "city": "Goa"}])
        world.emu.admin_post("replay", {"requestid": job.requestid, "times": 1})
        assert job.callback_answers[-1] == 409  # a late copy cannot confirm later edits
    assert Projection.from_json(base_data(world, emails[0])).field_map["CITY"] == "Pune"
    assert sorted(world.remote()) == emails
    world.emu.admin_post("callbacks", {"mode": "normal"})
    assert world.cycle().summary()["confirmed_later"] == 1
    assert world.cycle().write_calls == 0


def base_data(world: NetcoreWorld, key: str) -> str:
    with Session(world.db) as session:
        row = session.get(Base, ("news", key))
        assert row is not None
        return row.data


def test_a_forged_callback_is_refused_and_the_real_one_still_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world, emails, job = awaiting_callback(tmp_path)
    forged = re.sub(r"/callback/[^/]+$", "/callback/" + "A" * 32, job.callback)
    report = {"requestid": job.requestid, "status": "completed", "errors": []}
    with Listener(world):
        assert httpx.post(forged, json=report).status_code == 403
        assert world.waiting() == set(emails) and world.base_keys() == set()
        other_job = job.callback.replace(job.callback.split("/")[4], "0" * 32)
        assert httpx.post(other_job, json=report).status_code == 403
        assert httpx.post(job.callback, json=report).status_code == 200
        assert httpx.post(job.callback, json=report).status_code == 409
    assert "wrong secret" in caplog.text and "second callback" in caplog.text
    assert world.waiting() == set() and world.base_keys() == set(emails)
    assert world.cycle().write_calls == 0


def test_without_a_public_url_contacts_go_one_by_one_with_addsync(tmp_path: Path) -> None:
    world = NetcoreWorld(tmp_path, public_url=None)
    emails = world.add_local(3)
    world.ingest([{"email": "nobody@example.com", "lists": ["news"], "status": "unsubscribed"}])
    result = world.cycle()
    assert result.outcome == "converged", result.message
    assert world.emu.calls["addsync"] == 3 and world.bulk_calls() == 0
    assert result.summary()["withheld_opted_out"] == 1
    assert sorted(world.remote()) == emails
    assert world.cycle().write_calls == 0


def test_a_bad_key_stops_the_cycle_with_a_clear_reason(tmp_path: Path) -> None:
    world = NetcoreWorld(tmp_path, api_key="wrong")
    world.add_local(1)
    result = world.cycle()
    assert result.outcome == "failed" and "Invalid API key" in result.message
    assert "wrong" not in result.message
    with Session(world.db) as session:
        (job,) = session.exec(select(PushJob)).all()
    assert job.state == "failed" and world.waiting() == set()  # nothing is waited for


def test_read_callback_accepts_what_it_knows_and_refuses_what_it_cannot_read() -> None:
    report = NetcoreProvider.read_callback(
        b'{"status": "completed", "errors": [{"primary_key": "919812345678", "reason": "x"}]}',
        "application/json",
        "phone",
    )
    assert report.processed and report.failed == {"+919812345678": "x"}
    failed = NetcoreProvider.read_callback(b'{"status": "failed"}', "application/json", "email")
    assert not failed.processed
    form = NetcoreProvider.read_callback(
        b"data=%7B%22status%22%3A%22completed%22%7D",
        "application/x-www-form-urlencoded",
        "email",
    )
    assert form.processed and not form.failed
    nasty = (b"[" * 100_000, b'{"status": ' + b"9" * 5000 + b"}")
    for bad in (b"{", b"[1]", b'{"errors": 3}', b'{"errors": [{"reason": "no key"}]}', *nasty):
        with pytest.raises(ValueError):
            NetcoreProvider.read_callback(bad, "application/json", "email")


class Listener:
    """The callback listener alone, as a daemon would keep it between cycles."""

    def __init__(self, world: NetcoreWorld) -> None:
        self.server = StatusServer(
            world.config.http,
            health=lambda: (True, ""),
            ready=lambda: (True, ""),
            metrics=Metrics(),
        )
        jobs = job_routes.routes(world.db, lambda: world.config)
        for method in job_routes.METHODS:
            self.server.add_route(method, job_routes.PREFIX, jobs)

    def __enter__(self) -> Listener:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


@pytest.mark.slow
def test_the_daemon_serves_files_and_takes_callbacks_between_cycles(tmp_path: Path) -> None:
    """`syncd run` and `syncd emulate netcore` as real processes: the daemon's own listener
    serves the batch file and takes the callback; the next cycle finds nothing to write."""
    port = free_port()
    inbox = tmp_path / "inbox"
    config = tmp_path / "syncd.toml"
    with emulator_process("netcore", API_KEY) as emulator:
        news = {
            "name": "news",
            "provider": "netcore",
            "list_id": "1",
            "api_key": API_KEY,
            "base_url": f"{emulator}/apiv2",
            "public_url": f"http://127.0.0.1:{port}",
            "fields": {"FIRST_NAME": "name"},
            "schedule": "1s",
            "jitter": 0,
        }
        tables = daemon_tables(tmp_path, f"127.0.0.1:{port}", debounce=0.2)
        config.write_text(config_toml(tmp_path, news, **tables), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k != "SYNCD_CONFIG"}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "--config", str(config)],
            env=env,
            stdout=(tmp_path / "daemon.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200)
            inbox.mkdir(exist_ok=True)
            rows = [
                {"email": f"d{i}@example.com", "name": f"D {i}", "lists": ["news"]}
                for i in range(4)
            ]
            (inbox / ".in.tmp").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
            (inbox / ".in.tmp").rename(inbox / "in.ndjson")

            def state() -> dict[str, Any]:
                return httpx.get(f"{emulator}/_emulator/state").json()  # type: ignore[no-any-return]

            wait_until(lambda: [j["callback_answers"] for j in state()["jobs"]] == [[200]])
            (listed,) = state()["lists"]
            assert sorted(c["EMAIL"] for c in listed["contacts"]) == [r["email"] for r in rows]

            def last_status() -> dict[str, Any]:
                done = subprocess.run(
                    [sys.executable, "-m", "syncd", "status", "--json", "--config", str(config)],
                    env=env, capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                return json.loads(done.stdout)  # type: ignore[no-any-return]

            quiet = wait_until(
                lambda: (
                    (s := last_status())["last_run"]["outcome"] == "converged"
                    and s["awaiting_callback"] == 0
                    and s["last_run"]["counts"]["write_calls"] == 0
                    and s
                )
            )
            assert quiet["last_run"]["counts"]["still_awaiting"] == 0
            assert len(state()["jobs"]) == 1  # nothing was sent twice
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=15) == 0


def wait_until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_the_history_shows_rows_sent_then_settled_by_the_callback(tmp_path: Path) -> None:
    from syncd.commands.explain import explain

    world = NetcoreWorld(tmp_path, fields={**FIELDS, "MOBILE": "mobile_raw"})
    emails = world.add_local(2)
    world.ingest([{"email": emails[1], "mobile_raw": "call me"}])
    assert world.cycle().outcome == "rejected"

    def steps(key: str) -> list[tuple[str, str]]:
        found = explain(world.config, key, db=world.db).history
        return [(s.case, s.outcome["result"]) for s in found if s.target is not None]

    # the answer only accepted the file; the callback confirmed one row and refused the other
    assert steps(emails[0]) == [("create_remote", "awaiting"), ("confirmed_later", "confirmed")]
    assert steps(emails[1]) == [("create_remote", "awaiting"), ("confirmed_later", "rejected")]
    refused = explain(world.config, emails[1], db=world.db).history[-1].outcome
    assert refused["code"] == "invalid" and "Invalid mobile" in refused["message"]
