"""`syncd run --log-level DEBUG` with its log file beside the configuration stays quiet when idle.

The configuration's folder is watched for changes to the configuration file; a log file in that
folder must not wake the watcher on every line, nor the watcher log a line per wake (which then
lands in the log file, which wakes it again).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import (
    config_toml,
    daemon_tables,
    emulator_process,
    free_port,
    unisender_target,
    wait_for,
)

KEY = "daemon-logs-key-81f3"
pytestmark = pytest.mark.slow

#: Bytes an idle daemon may log at DEBUG in the quiet window: a few lines, not a feedback loop.
IDLE_BOUND = 16_000
QUIET_SECONDS = 4.0


def _wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    def healthy() -> bool:
        assert proc.poll() is None, "the daemon exited"
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200

    wait_for(healthy, "/healthz", timeout=20)


def _settled(log: Path, quiet_for: float = 1.0, limit: float = 20.0) -> None:
    """Wait for the first cycle's lines: until the file stops growing for ``quiet_for``."""
    deadline = time.monotonic() + limit
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = log.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return
        time.sleep(0.1)


def test_an_idle_daemon_at_debug_writes_little_to_a_log_beside_its_config(tmp_path: Path) -> None:
    with emulator_process("unisender", KEY) as emulator:
        port = free_port()
        config = tmp_path / "syncd.toml"
        settings = {"schedule": "1h", "jitter": 0, "export_poll_interval": 0.05}
        target = unisender_target(emulator, "newsletter", api_key=KEY, **settings)
        target["fields"] = {"Name": "name"}
        tables = daemon_tables(tmp_path, f"127.0.0.1:{port}")
        config.write_text(config_toml(tmp_path, target, **tables), encoding="utf-8")
        log = tmp_path / "syncd.log"  # beside the configuration, in the watched folder
        command = [sys.executable, "-m", "syncd", "run", "--config", str(config)]
        command += ["--log-level", "DEBUG"]
        with log.open("ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ)
        try:
            _wait_healthy(port, proc)
            _settled(log)
            before = log.stat().st_size
            time.sleep(QUIET_SECONDS)
            written = log.stat().st_size - before
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    assert written < IDLE_BOUND, f"{written} bytes in {QUIET_SECONDS:g} s idle"
    assert "started" in log.read_text(encoding="utf-8")
