"""Shared fixtures: an emulated provider account, a fresh mirror, and a config pointing at both."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from syncd import app
from syncd.config import Config, TargetConfig, parse_config
from syncd.emulators.unisender import UnisenderEmulator
from syncd.engine import CycleOptions, CycleResult
from syncd.errors import ProviderUnreachable
from syncd.ingest import ingest_file
from syncd.providers import make_provider
from syncd.providers.base import Provider
from syncd.store import open_engine

API_KEY = "test-key-3f9a"


class World:
    """An emulator account, a mirror and a config: one target 'news' on list 1."""

    def __init__(self, tmp_path: Path, **target: Any) -> None:
        self.tmp = tmp_path
        # many cycles a minute in tests: lift the provider's 20 exports/min on both sides
        self.emu = UnisenderEmulator(api_key=API_KEY, export_rate_limit=1_000_000)
        self.list_id = self.emu.add_list("Newsletter")
        self.emu.add_field("Name")
        self.emu.add_field("City")
        self.config = self.make_config(**target)
        self.db: Engine = open_engine(self.config.store.url)
        self._files = 0

    def make_config(self, **target: Any) -> Config:
        base = {
            "name": "news",
            "provider": "unisender",
            "list_id": str(self.list_id),
            "local_list": "news",
            "api_key": API_KEY,
            "base_url": "http://127.0.0.1:9/en/api",
            "fields": {"Name": "name", "City": "city"},
            "export_poll_interval": 0.001,
            "export_rate_limit_per_minute": 1_000_000,
        }
        base.update(target)
        return parse_config(
            {
                "store": {"url": f"sqlite:///{self.tmp / 'syncd.db'}"},
                "ingest": {"reject_role_addresses": False},
                "target": [base],
            },
            "test",
        )

    def provider(self, config: Config, target: TargetConfig) -> Provider:
        """The real adapter, over an in-process transport to the emulator, never sleeping."""
        return make_provider(
            target, transport=httpx.MockTransport(self.emu.handle), sleep=lambda _s: None
        )

    def cycle(self, **options: Any) -> CycleResult:
        (result,) = app.run_once(
            self.config, db=self.db, options=CycleOptions(**options), providers=self.provider
        )
        return result

    def cycle_losing_answers(self, *, land: bool = True) -> CycleResult:
        """A cycle whose first write call reaches the provider (``land``) or not; either way its
        answer never comes back, as when the connection breaks or syncd is killed."""

        def provider(config: Config, target: TargetConfig) -> Provider:
            adapter = self.provider(config, target)
            push = adapter.push

            def push_and_lose(call: Any) -> Any:
                if land:
                    push(call)
                raise ProviderUnreachable("connection reset before the answer")

            adapter.push = push_and_lose  # type: ignore[method-assign]
            return adapter

        options = CycleOptions()
        (result,) = app.run_once(self.config, db=self.db, options=options, providers=provider)
        return result

    def ingest(self, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Write rows as NDJSON into a file and ingest it; returns the report's dict."""
        self._files += 1
        path = self.tmp / f"in-{self._files}.ndjson"
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        return ingest_file(self.db, path, self.config.ingest).to_dict()

    def add_local(self, n: int, start: int = 0, **extra: Any) -> list[str]:
        emails = [f"person{i}@example.com" for i in range(start, start + n)]
        self.ingest(
            {"email": e, "name": f"Person {i}", "city": "Minsk", "lists": ["news"], **extra}
            for i, e in zip(range(start, start + n), emails, strict=True)
        )
        return emails

    def local(self) -> dict[str, dict[str, Any]]:
        """The mirror's live contacts on the target's list, by email."""
        import io

        from syncd.export import export_contacts

        buf = io.StringIO()
        export_contacts(self.db, buf, "ndjson", "news")
        return {r["email"]: r for r in map(json.loads, buf.getvalue().splitlines())}

    def remote(self) -> dict[str, dict[str, Any]]:
        return {c["email"]: c for c in self.emu.contacts_in_list(self.list_id)}

    def opted_out_remotely(self, email: str) -> bool:
        """The provider's view: opted out account-wide, or unsubscribed from this list."""
        contact = self.emu.get(email)
        if contact is None:
            return False
        return contact["email_status"] in ("unsubscribed", "blocked") or (
            self.list_id in contact["unsubscribed"]
        )

    def import_calls(self) -> int:
        return int(self.emu.calls["importContacts"])


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def make_world(tmp_path: Path) -> Callable[..., World]:
    return lambda **target: World(tmp_path, **target)


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = sorted({k for r in rows for k in r})
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def emulator_process(provider: str, api_key: str, *extra: str) -> Iterator[str]:
    """`syncd emulate PROVIDER` as a real process on a free loopback port; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "syncd", "emulate", provider, "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--api-key", api_key, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION_STARTED] = time.time()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The crash test's tally of SIGKILLs by phase; it runs in a worker under xdist, so it
    leaves the tally in pytest's cache and the controller prints it here."""
    found = config.cache.get("syncd/crash-tally", None) if config.cache else None
    if not found or found["at"] < config.stash.get(_SESSION_STARTED, 0):
        return  # not run in this session
    tally = ", ".join(f"{phase} {n}" for phase, n in sorted(found["tally"].items()))
    terminalreporter.write_sep("-", "crash test")
    terminalreporter.write_line(
        f"{sum(found['tally'].values())} SIGKILLs by phase hit: {tally} ({found['seconds']:.0f} s)"
    )


_SESSION_STARTED = pytest.StashKey[float]()
