"""Shared fixtures: an emulated provider account, a fresh mirror, and a config pointing at both.

Tests that start syncd as a process (``syncd emulate``, ``run``, ``run-once``) take the emulator
from ``emulator_fixture``, write its syncd.toml with ``config_toml`` and the builders beside it
and its CSV files with ``people_csv``, call it with ``run_syncd``, and wait with ``wait_for``.

The mirror is SQLite, or PostgreSQL when a test asks for ``store_url`` (each test then runs once
for each database). PostgreSQL comes from ``SYNCD_TEST_PG_URL`` (``scripts/pg-for-tests``
starts a server); each test gets a schema of its own, so xdist workers never meet. Without the
variable those tests skip, unless ``SYNCD_TEST_PG_REQUIRED=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from syncd.commands import cycles
from syncd.config import Config, TargetConfig, parse_config
from syncd.emulators.unisender import UnisenderEmulator
from syncd.engine.result import CycleOptions, CycleResult
from syncd.errors import ProviderUnreachable
from syncd.local.ingest import ingest_file
from syncd.providers import PROVIDERS, make_provider
from syncd.providers.base import Provider
from syncd.store import open_engine

# CI explores the same examples every run (a landing must not hang on a lucky draw); local runs
# keep drawing new ones, which is where new bugs are found. `.ci/run` sets HYPOTHESIS_PROFILE=ci.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

API_KEY = "test-key-3f9a"
PG_URL = os.environ.get("SYNCD_TEST_PG_URL", "")
PG_REQUIRED = os.environ.get("SYNCD_TEST_PG_REQUIRED") == "1"


@pytest.fixture(scope="session", autouse=True)
def _working_folder_left_alone() -> Iterator[None]:
    """Tests write under their own temporary folders. A config without an inbox or outbox
    path would use the defaults, ./inbox and ./outbox of wherever pytest runs (the checkout):
    this fails the run that leaves one there."""
    absent = [folder for folder in (Path("inbox"), Path("outbox")) if not folder.exists()]
    yield
    left = [str(folder.resolve()) for folder in absent if folder.exists()]
    assert not left, f"a test wrote into the working folder: {left} (give its config a path)"


def need_postgresql() -> str:
    """The test server's URL; skips the test without one (fails it where CI promised one)."""
    if not PG_URL:
        message = "no PostgreSQL for tests: SYNCD_TEST_PG_URL is not set (scripts/pg-for-tests)"
        if PG_REQUIRED:
            pytest.fail(message + ", but SYNCD_TEST_PG_REQUIRED=1 says it must be")
        pytest.skip(message)
    return PG_URL


@contextmanager
def postgresql_schema() -> Iterator[str]:
    """A store URL whose tables live in a fresh schema of the test server, dropped afterwards."""
    admin = create_engine(need_postgresql(), poolclass=NullPool)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text("SET lock_timeout = '10s'"))
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The mirror's URL, once for each database syncd supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'syncd.db'}"
        return
    with postgresql_schema() as url:
        yield url


class World:
    """An emulator account, a mirror and a config: one target 'news' on list 1."""

    def __init__(self, tmp_path: Path, store_url: str | None = None, **target: Any) -> None:
        self.tmp = tmp_path
        self.store_url = store_url or f"sqlite:///{tmp_path / 'syncd.db'}"
        # many cycles a minute in tests: lift the provider's 20 exports/min on both sides
        self.emu = UnisenderEmulator(api_key=API_KEY, export_rate_limit=1_000_000)
        self.list_id = self.emu.add_list("Newsletter")
        self.emu.add_field("Name")
        self.emu.add_field("City")
        self.config = self.make_config(**target)
        self.db: Engine = open_engine(self.config.store.url)
        self._files = 0

    def make_config(self, **target: Any) -> Config:
        return self.config_of([self.target_of("news", self.list_id, local_list="news", **target)])

    def target_of(self, name: str, list_id: int, **settings: Any) -> dict[str, Any]:
        """A target on a list of this account, its settings over the tests' defaults."""
        return {
            "name": name,
            "provider": "unisender",
            "list_id": str(list_id),
            "api_key": API_KEY,
            "base_url": "http://127.0.0.1:9/en/api",
            "fields": {"Name": "name", "City": "city"},
            "export_poll_interval": 0.001,
            "export_rate_limit_per_minute": 1_000_000,
            **settings,
        }

    def config_of(self, targets: list[dict[str, Any]]) -> Config:
        return parse_config(
            {
                "store": {"url": self.store_url},
                "ingest": {"reject_role_addresses": False},
                "outbox": {"path": str(self.tmp / "outbox")},  # not the working folder's
                "target": targets,
            },
            "test",
            providers=PROVIDERS,
        )

    def provider(self, config: Config, target: TargetConfig) -> Provider:
        """The real adapter, over an in-process transport to the emulator, never sleeping."""
        return make_provider(
            target, transport=httpx.MockTransport(self.emu.handle), sleep=lambda _s: None
        )

    def cycle_all(self, **options: Any) -> list[CycleResult]:
        """A cycle of every target of the config, in its order."""
        return cycles.run_once(
            self.config, db=self.db, options=CycleOptions(**options), providers=self.provider
        )

    def cycle(self, **options: Any) -> CycleResult:
        (result,) = cycles.run_once(
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
        (result,) = cycles.run_once(self.config, db=self.db, options=options, providers=provider)
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

        from syncd.local.export import export_contacts

        buf = io.StringIO()
        export_contacts(self.db, buf, "ndjson", "news")
        return {r["email"]: r for r in map(json.loads, buf.getvalue().splitlines())}

    def remote(self) -> dict[str, dict[str, Any]]:
        return {c["email"]: c for c in self.emu.contacts_in_list(self.list_id)}

    def consent(self, email: str, list_name: str = "news") -> tuple[str, str | None]:
        """The mirror's consent for one contact: its own status, and its state on a local list
        (None: not on it)."""
        with self.db.connect() as conn:
            status = conn.execute(
                text("SELECT status FROM contact WHERE email = :e"), {"e": email}
            ).scalar_one()
            state = conn.execute(
                text(
                    "SELECT m.state FROM membership m JOIN contact c ON c.id = m.contact_id "
                    "WHERE c.email = :e AND m.list_name = :l"
                ),
                {"e": email, "l": list_name},
            ).scalar_one_or_none()
        return status, state

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
def world(tmp_path: Path, store_url: str) -> Iterator[World]:
    w = World(tmp_path, store_url)
    yield w
    w.db.dispose()  # PostgreSQL: hand the connections back before the schema is dropped


@pytest.fixture
def make_world(tmp_path: Path, store_url: str) -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(**target: Any) -> World:
        made.append(World(tmp_path, store_url, **target))
        return made[-1]

    yield make
    for w in made:
        w.db.dispose()


def people_csv(
    ids: Iterable[int], name: str = "User", *, prefix: str = "user", **columns: str
) -> str:
    """CSV text of one contact per id on the list 'newsletter': ``{prefix}{i}@example.com`` named
    ``{name} {i}``, then ``columns`` (one value for every row) before the lists column."""
    lines = [["email", "name", *columns, "lists"]]
    for i in ids:
        lines.append([f"{prefix}{i}@example.com", f"{name} {i}", *columns.values(), "newsletter"])
    return "".join(",".join(line) + "\n" for line in lines)


def syncd_env(key: tuple[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``SYNCD_CONFIG``, plus ``key`` (a variable and its
    value) for a config that reads its API key from the environment."""
    env = {**os.environ, **dict([key] if key else [])}
    env.pop("SYNCD_CONFIG", None)
    return env


def run_syncd(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    key: tuple[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``syncd ARGS`` as a process in ``cwd``, to its end; its environment is ``env`` as given,
    or else ``syncd_env(key)``."""
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        env=syncd_env(key) if env is None else env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


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


def emulator_fixture(provider: str, api_key: str) -> Any:
    """A fixture ``emulator``: `syncd emulate PROVIDER` with ``api_key`` for the test's length,
    as its URL. A module takes it as ``emulator = emulator_fixture("unisender", KEY)``."""

    @pytest.fixture
    def emulator() -> Iterator[str]:
        with emulator_process(provider, api_key) as url:
            yield url

    return emulator


def wait_for(check: Callable[[], Any], what: str = "condition", timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something true (and return that); a process that is not
    answering yet (an HTTP, OS or parse error) counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


# -- config files for syncd processes ----------------------------------------------------------


def config_toml(folder: Path, *targets: dict[str, Any], **tables: dict[str, Any]) -> str:
    """The text of a syncd.toml: the SQLite mirror in ``folder``, a [table] per keyword (``store=``
    replaces the mirror's), then one [[target]] per dict."""
    document = {"store": {"url": f"sqlite:///{folder / 'syncd.db'}"}, **tables}
    lines = [f"[{name}]\n{_toml_pairs(table)}" for name, table in document.items()]
    lines += [f"[[target]]\n{_toml_pairs(target)}" for target in targets]
    return "\n".join(lines)


def _toml_pairs(table: dict[str, Any]) -> str:
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in table.items())


def _toml_value(value: Any) -> str:
    """A dict as an inline table, a list as an array, the rest as JSON spells it (TOML alike)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def daemon_tables(folder: Path, listen: str, **daemon: Any) -> dict[str, dict[str, Any]]:
    """The [inbox], [outbox], [http] and [daemon] tables of a `syncd run` with its folders in
    ``folder``, listening on ``listen`` (or "off")."""
    return {
        "inbox": {"path": str(folder / "inbox")},
        "outbox": {"path": str(folder / "outbox")},
        "http": {"listen": listen},
        "daemon": daemon,
    }


def unisender_target(emulator: str, name: str = "news", **settings: Any) -> dict[str, Any]:
    """A [[target]] for list 1 of `syncd emulate unisender` at ``emulator``, with the fields Name
    and City; ``settings`` add to it or replace."""
    return {
        "name": name,
        "provider": "unisender",
        "list_id": "1",
        "base_url": f"{emulator}/en/api",
        "fields": {"Name": "name", "City": "city"},
        **settings,
    }


def newsletter_config(
    folder: Path, emulator: str, tables: dict[str, dict[str, Any]] | None = None, **settings: Any
) -> str:
    """A config with the mirror in ``folder`` and one target 'newsletter' on the Unisender
    emulator at ``emulator``, its key read from $TEST_UNISENDER_KEY, exports polled fast;
    ``settings`` add to the target or replace, ``tables`` add tables."""
    target = unisender_target(
        emulator, "newsletter", api_key="${TEST_UNISENDER_KEY}", export_poll_interval=0.05
    )
    return config_toml(folder, {**target, **settings}, **(tables or {}))


def daemon_config(
    folder: Path,
    emulator: str,
    listen: str,
    key_variable: str,
    daemon: dict[str, Any] | None = None,
    **target: Any,
) -> str:
    """A `syncd run` config with its folders in ``folder``, listening on ``listen``, a debounce of
    0.2 s (``daemon`` adds to its [daemon] table), and one target 'newsletter' on the Unisender
    emulator: its key read from ``$key_variable``, no jitter, exports polled fast and not
    rate-limited; ``target`` adds settings (its ``schedule`` at least)."""
    settings = {"jitter": 0, "export_poll_interval": 0.05, "export_rate_limit_per_minute": 100000}
    api_key = f"${{{key_variable}}}"
    newsletter = unisender_target(emulator, "newsletter", api_key=api_key, **{**settings, **target})
    tables = daemon_tables(folder, listen, debounce=0.2, **(daemon or {}))
    return config_toml(folder, newsletter, **tables)


# -- the figures table of tests/system/test_faults.py --------------------------------------
# Each test writes its row to a file; the run's own process prints them all at the end, so the
# table shows under xdist too (workers inherit the folder through the environment).

_FIGURES_ENV = "SYNCD_FAULT_FIGURES"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the main process, with or without xdist
        import tempfile

        os.environ[_FIGURES_ENV] = tempfile.mkdtemp(prefix="syncd-fault-figures-")


def record_fault_figures(row: dict[str, Any]) -> None:
    folder = Path(os.environ[_FIGURES_ENV])
    name = "".join(c if c.isalnum() else "-" for c in str(row["scenario"]))
    (folder / f"{name}.json").write_text(json.dumps(row), encoding="utf-8")


def _print_fault_figures(terminalreporter: Any, config: pytest.Config) -> None:
    import shutil

    folder = Path(os.environ.get(_FIGURES_ENV, ""))
    if hasattr(config, "workerinput") or not folder.is_dir() or not folder.name:
        return
    rows = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]
    shutil.rmtree(folder, ignore_errors=True)
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    terminalreporter.section("faults: figures per scenario")
    terminalreporter.line("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        terminalreporter.line("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


# -- figures printed at the end of the run (written by xdist workers, read by the controller) --


def _figures_dir(config: pytest.Config) -> Path:
    assert config.cache is not None
    return config.cache.mkdir("syncd-figures")


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION_STARTED] = time.time()
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist)
        for old in _figures_dir(session.config).glob("*.txt"):
            old.unlink()


@pytest.fixture
def record_figure(request: pytest.FixtureRequest) -> Callable[[str, list[str]], None]:
    """Keep a test's measured figures for the summary at the end of the run."""

    def record(name: str, lines: list[str]) -> None:
        (_figures_dir(request.config) / f"{name}.txt").write_text("\n".join(lines) + "\n")

    return record


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    _print_fault_figures(terminalreporter, config)
    _print_crash_tally(terminalreporter, config)
    for path in sorted(_figures_dir(config).glob("*.txt")):
        terminalreporter.write_sep("-", f"figures: {path.stem}")
        terminalreporter.write(path.read_text())


def _print_crash_tally(terminalreporter: Any, config: pytest.Config) -> None:
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
