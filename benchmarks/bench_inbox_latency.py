"""Benchmark: from a file landing in the inbox to syncd's first write call at the provider.

Starts `syncd emulate` and `syncd run` as real processes (schedule one hour, so only the inbox
can trigger a cycle), drops small files one by one (written beside, then renamed in), and times
each until the emulator has seen a new importContacts call. Prints min / median / max.

Usage: python benchmarks/bench_inbox_latency.py [--files 10] [--debounce 0.5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from support import SYNCD, free_port, start_emulator

KEY = "bench-key-not-a-secret"


def wait_for(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise SystemExit("timed out")


def imports(emulator: str) -> int:
    return int(httpx.get(f"{emulator}/_emulator/calls").json()["calls"].get("importContacts", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--debounce", type=float, default=0.5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="syncd-latency-"))
    port, http_port = free_port(), free_port()
    emulator = f"http://127.0.0.1:{port}"
    (tmp / "syncd.toml").write_text(
        f"""
[store]
url = "sqlite:///{tmp / "syncd.db"}"
[inbox]
path = "{tmp / "inbox"}"
[outbox]
path = "{tmp / "outbox"}"
[http]
listen = "127.0.0.1:{http_port}"
[daemon]
debounce = {args.debounce}
[[target]]
name = "news"
provider = "unisender"
list_id = "1"
api_key = "{KEY}"
base_url = "{emulator}/en/api"
fields = {{ Name = "name" }}
schedule = "1h"
jitter = 0
export_poll_interval = 0.02
export_rate_limit_per_minute = 100000
""",
        encoding="utf-8",
    )
    emu = start_emulator("unisender", port, "--api-key", KEY)
    daemon = subprocess.Popen(
        [*SYNCD, "run", "--config", str(tmp / "syncd.toml")],
        stdout=(tmp / "daemon.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200)
        time.sleep(1.0)  # let the start-up cycle finish
        inbox = tmp / "inbox"
        times = []
        for i in range(args.files):
            seen = imports(emulator)
            part = inbox / f".f{i}.csv.tmp"
            part.write_text(f"email,name,lists\nlat{i}@example.com,L {i},news\n", encoding="utf-8")
            start = time.perf_counter()
            os.rename(part, inbox / f"f{i}.csv")
            wait_for(lambda seen=seen: imports(emulator) > seen)
            times.append(time.perf_counter() - start)
            time.sleep(0.3)
        print(
            f"inbox file -> first importContacts call, {len(times)} files, debounce "
            f"{args.debounce} s: min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
            f"max {max(times):.2f} s"
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=15)
        emu.terminate()
        emu.wait(timeout=10)


if __name__ == "__main__":
    main()
