"""DESIGN §3 rule 7, end to end: a recognisable API key, a full life, and every byte searched.

The Unisender emulator runs as a real process on loopback and records every request line it
receives. syncd runs as the user runs it: ``check-config --online``, ``ingest``, ``plan``,
``run-once`` (verbose), ``status``, ``conflicts``, ``export``, and the daemon with an inbox file
and ``/metrics`` scraped; remote sign-ups and unsubscribes fill the outbox; and the provider
answers errors that quote the request they refuse, api_key and all. Then every file under the
test's folder (outputs, logs, the store and its WAL, outbox, reports, metrics, the emulator's
request lines) and every exception message are searched for the key in any spelling.

Positive controls keep the search honest: the emulator only accepts this key (so it was sent),
the echoed error is shown with ``***`` where the key was, and the request log is not empty.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from conftest import daemon_config, free_port, wait_for

from syncd.config import TargetConfig
from syncd.core.projection import Projection
from syncd.errors import ProviderError
from syncd.providers import make_provider
from syncd.providers.base import PushCall, RowChange

KEY = "SECRET-KEY-7f3a9c"
FORMS = {KEY, KEY.lower(), quote(KEY, safe=""), quote_plus(KEY)}
ECHO_FAULT = {
    "echo_request": True,
    "error_code_rate": 1.0,
    "error_code": "invalid_arg",
    "methods": ["importContacts"],
}
pytestmark = pytest.mark.slow


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[str]:
    """`syncd emulate unisender` accepting only KEY, recording request lines; yields its URL."""
    port = free_port()
    out = tmp_path / "emulator.out"
    command = [sys.executable, "-m", "syncd", "emulate", "unisender", "--port", str(port)]
    command += ["--api-key", KEY, "--request-log", str(tmp_path / "requests.log")]
    with out.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"listening" in out.read_bytes(), "the emulator")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Syncd:
    """syncd's command line over one config, every output kept in a file under ``out/``."""

    def __init__(self, tmp: Path, emulator: str) -> None:
        self.tmp, self.emulator = tmp, emulator
        self.state = tmp / "state"
        self.out = tmp / "out"
        self.out.mkdir()
        self.http_port = free_port()
        self.config = tmp / "syncd.toml"
        listen = f"127.0.0.1:{self.http_port}"
        key = "SECRETS_TEST_API_KEY"
        text = daemon_config(self.state, emulator, listen, key, schedule="1h", retries=0)
        self.config.write_text(text, encoding="utf-8")
        self.env = {**os.environ, "SECRETS_TEST_API_KEY": KEY}
        self.runs = 0

    def __call__(self, *args: str) -> tuple[int, str]:
        """Run one command; its exit code and its stdout + stderr."""
        self.runs += 1
        name = f"{self.runs:02d}-{args[0] if args[0] != '-v' else args[1]}"
        stdout, stderr = self.out / f"{name}.stdout", self.out / f"{name}.stderr"
        with stdout.open("wb") as o, stderr.open("wb") as e:
            code = subprocess.run(
                [sys.executable, "-m", "syncd", *args, "--config", str(self.config)],
                env=self.env,
                stdout=o,
                stderr=e,
                timeout=120,
                check=False,
            ).returncode
        return code, stdout.read_text("utf-8") + stderr.read_text("utf-8")

    def admin(self, op: str, body: dict[str, Any]) -> None:
        httpx.post(f"{self.emulator}/_emulator/{op}", json=body, timeout=10).raise_for_status()

    def csv(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    def keep(self, name: str, text: str) -> None:
        (self.out / name).write_text(text, encoding="utf-8")


def people(start: int, n: int, city: str = "Minsk") -> str:
    rows = "".join(
        f"u{i}@example.com,User {i},{city},newsletter\n" for i in range(start, start + n)
    )
    return "email,name,city,lists\n" + rows


def test_the_api_key_is_written_nowhere(tmp_path: Path, emulator: str) -> None:
    run = Syncd(tmp_path, emulator)

    # 1. The command line, from a first look to a converged target.
    assert run("check-config", "--online")[0] == 0
    code, said = run("ingest", str(run.csv("a.csv", people(0, 5) + "info@example.com,,,x\n")))
    assert code == 1 and "role address" in said
    assert run("plan", "--json")[0] in (0, 1)
    assert run("plan")[0] in (0, 1)
    assert run("-v", "run-once", "--json")[0] == 0

    # 2. Changes at the provider reach the mirror and the outbox.
    run.admin("contact", {"action": "sign_up", "email": "remote1@example.com", "list_id": 1})
    run.admin("contact", {"action": "unsubscribe", "email": "u1@example.com"})
    assert run("run-once")[0] == 0
    assert list((run.state / "outbox").glob("changes-*.ndjson")), "no outbox events"

    # 3. The provider refuses a write and quotes the request, key included.
    run.admin("faults", ECHO_FAULT)
    run("ingest", str(run.csv("b.csv", people(2, 1, city="Brest"))))
    code, said = run("-v", "run-once")
    assert code != 0 and "invalid_arg" in said
    assert "api_key=***" in said, "the echoed request is shown, with the key blanked out"
    for args in (("status",), ("status", "--json"), ("conflicts",), ("export",)):
        run(*args)

    # 4. The same error, raised in this process: its message, repr and args.
    target = TargetConfig.model_validate(
        {
            "name": "t",
            "provider": "unisender",
            "list_id": "1",
            "api_key": KEY,
            "base_url": f"{emulator}/en/api",
            "retries": 0,
        }
    )
    provider = make_provider(target)
    row = RowChange("update", Projection.build("u3@example.com", {"City": "Pinsk"}))
    with pytest.raises(ProviderError) as caught:
        provider.push(PushCall("update", ("City",), (row,)))
    provider.close()
    exc = caught.value
    run.keep("exception.txt", "\n".join([str(exc), repr(exc), repr(exc.args), exc.code]))
    assert "***" in str(exc)

    # 5. The daemon: an inbox file, a failing push logged, /metrics scraped, SIGTERM.
    daemon_log, config = run.out / "daemon.log", str(run.config)
    with daemon_log.open("wb") as sink:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "--log-level", "DEBUG", "--config", config],
            env=run.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{run.http_port}"
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=5).status_code == 200, "/healthz")
        inbox = run.state / "inbox"
        (inbox / ".c.csv.tmp").write_text(people(3, 1, city="Grodno"), encoding="utf-8")
        (inbox / ".c.csv.tmp").rename(inbox / "c.csv")
        wait_for(lambda: (inbox / "processed" / "c.csv.report.json").exists(), "the inbox file")
        wait_for(lambda: b"invalid_arg" in daemon_log.read_bytes(), "the refused push logged")
        for path in ("/metrics", "/readyz", "/healthz"):
            run.keep(f"scrape{path.replace('/', '-')}.txt", httpx.get(base + path, timeout=5).text)
        assert "syncd_api_calls_total" in (run.out / "scrape-metrics.txt").read_text("utf-8")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0

    # 6. Every byte written, in every spelling of the key.
    requests = (tmp_path / "requests.log").read_text("utf-8").splitlines()
    assert any("/en/api/importContacts" in line for line in requests)
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    names = {p.name for p in written}
    assert {"syncd.db", "daemon.log", "c.csv.report.json", "scrape-metrics.txt"} <= names
    assert any(name.startswith("changes-") for name in names)
    for path in written:
        data = path.read_bytes()
        for form in FORMS:
            assert form.encode() not in data, f"the key ({form}) is in {path}"

    # 7. Owner-only: the store (and its side files) and the outbox.
    for path in run.state.glob("syncd.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    outbox = run.state / "outbox"
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
    for path in outbox.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
