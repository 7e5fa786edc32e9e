"""Benchmark: the first push of N contacts to Netcore through hosted files and callbacks.

A mirror of N contacts (default 200,000) on list 'bench', nothing at the provider yet. Prints for
syncd's own process (the emulator runs in another one, fetching files and calling back over
loopback):
- the first `syncd run-once`: wall time, CPU time, peak memory (RSS), jobs and rows confirmed;
- the second `syncd run-once`: wall time and write calls (expected: 0).

Usage: python benchmarks/bench_netcore.py [--contacts N] [--rows-per-file R] [--keep DIR]
"""

from __future__ import annotations

import json
import os
import time

from support import (
    SYNCD,
    bench_parser,
    free_port,
    insert_contacts,
    measured,
    start_emulator,
    work_folder,
)

from syncd.store import open_engine

API_KEY = "bench-key-not-a-secret"
CHUNK = 20_000


def build_mirror(url: str, n: int) -> None:
    """N contacts on list 'bench' and no base: nothing was ever pushed."""
    db = open_engine(url)
    with db.begin() as conn:
        for start in range(0, n, CHUNK):
            insert_contacts(conn, range(start, min(n, start + CHUNK)), "Pune")
    db.dispose()


def main() -> None:
    parser = bench_parser(__doc__, contacts=200_000)
    parser.add_argument("--rows-per-file", type=int, default=10_000)
    args = parser.parse_args()
    n = args.contacts
    workdir, url = work_folder(args.keep, "syncd-bench-netcore-")
    port, listen = free_port(), free_port()
    emulator = start_emulator("netcore", port)
    try:
        t = time.perf_counter()
        build_mirror(url, n)
        print(f"setup: mirror of {n:,} contacts built in {time.perf_counter() - t:.1f} s")
        config = workdir / "syncd.toml"
        config.write_text(
            f"""
[store]
url = "{url}"

[http]
listen = "127.0.0.1:{listen}"

[[target]]
name = "bench"
provider = "netcore"
list_id = "1"
api_key = "{API_KEY}"
base_url = "http://127.0.0.1:{port}/apiv2"
public_url = "http://127.0.0.1:{listen}"
max_rows_per_call = {args.rows_per_file}
fields = {{ FIRST_NAME = "name", CITY = "city" }}
rate_limit_per_minute = 1000000
""",
            encoding="utf-8",
        )
        env = {**os.environ, "SYNCD_CONFIG": str(config)}
        syncd = [*SYNCD, "run-once", "--json"]
        wall, cpu, rss, code, out = measured(syncd, env)
        summary = json.loads(out.strip().splitlines()[-1])
        files = -(-n // args.rows_per_file)
        print(
            f"first push, {n:,} contacts in {files} files: wall {wall:.1f} s, syncd CPU "
            f"{cpu:.1f} s, peak RSS {rss:.0f} MiB, exit {code}, outcome {summary['outcome']}, "
            f"confirmed by callback {summary['confirmed_later']:,}"
        )
        wall, cpu, rss, code, out = measured(syncd, env)
        summary = json.loads(out.strip().splitlines()[-1])
        print(
            f"second run: wall {wall:.1f} s, syncd CPU {cpu:.1f} s, peak RSS {rss:.0f} MiB, "
            f"write calls {summary['write_calls']}, outcome {summary['outcome']}"
        )
    finally:
        emulator.kill()
        emulator.wait()


if __name__ == "__main__":
    main()
