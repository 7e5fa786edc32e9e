"""Benchmark: from a file landing in the inbox to syncd's first write call at the provider.

Starts `syncd emulate` and `syncd run` as real processes (schedule one hour, so only the inbox
can trigger a cycle), drops small files one by one (written beside, then renamed in), and times
each until the emulator has seen a new importContacts call. Prints min / median / max.

Usage: python benchmarks/bench_inbox_latency.py [--files 10] [--debounce 0.5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from support import emulating, figures, free_port, syncd_run, time_to_import

KEY = "bench-key-not-a-secret"


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
    with (
        emulating("unisender", port, "--api-key", KEY),
        syncd_run(tmp / "syncd.toml", f"http://127.0.0.1:{http_port}", tmp / "daemon.log"),
    ):
        time.sleep(1.0)  # let the start-up cycle finish
        inbox = tmp / "inbox"
        times = []
        for i in range(args.files):
            part = inbox / f".f{i}.csv.tmp"
            part.write_text(f"email,name,lists\nlat{i}@example.com,L {i},news\n", encoding="utf-8")
            land = inbox / f"f{i}.csv"
            times.append(time_to_import(emulator, lambda part=part, land=land: part.rename(land)))
        print(
            f"inbox file -> first importContacts call, {len(times)} files, debounce "
            f"{args.debounce} s: {figures(times, 'min', 'median', 'max')}"
        )


if __name__ == "__main__":
    main()
