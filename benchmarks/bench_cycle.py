"""Benchmark: a target of N contacts on both sides (default 1,000,000).

Prints, for syncd's own process (the emulator runs in another one):
- the first cycle, which projects every member and parses every export row once;
- the no-change cycle: wall time, CPU time and peak memory (RSS) of `syncd run-once`;
- the plan of 1 % changes: wall time, CPU time and peak memory of `syncd plan`;
- the same changes pushed by `syncd run-once` on the default ``lease_timeout``: wall time, CPU
  time, peak memory and write calls, which must be ceil(changes / 500) and converge (the lease
  renewed throughout: no transaction of the cycle holds the store's write lock for long).

Usage: python benchmarks/bench_cycle.py [--contacts N] [--keep DIR]
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from sqlalchemy import text
from support import (
    SYNCD,
    bench_parser,
    build_mirror,
    free_port,
    measured,
    start_seeded_emulator,
    work_folder,
    write_cycle_config,
)

from syncd.store import open_engine


def change_one_percent(url: str, n: int) -> None:
    db = open_engine(url)
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE contact SET fields = json_set(fields, '$.city', 'Brest') "
                "WHERE id % 100 = 0 AND id <= :n"
            ),
            {"n": n},
        )
    db.dispose()


def main() -> None:
    args = bench_parser(__doc__, contacts=1_000_000).parse_args()
    n = args.contacts
    workdir, url = work_folder(args.keep, "syncd-bench-")
    port = free_port()
    emulator = start_seeded_emulator(n, port)
    try:
        t = time.perf_counter()
        build_mirror(url, n)
        print(
            f"setup: mirror of {n:,} contacts built in {time.perf_counter() - t:.1f} s", flush=True
        )
        assert emulator.stdout is not None
        line = emulator.stdout.readline().decode()  # waits until the emulator is filled
        print(f"setup: emulator filled ({line.strip()})", flush=True)
        config = write_cycle_config(workdir, url, port)
        env = {**os.environ, "SYNCD_CONFIG": str(config)}
        # the first cycle over a mirror made outside syncd projects every member and parses
        # every export row once; the ones after it do only what moved
        for label in ("first cycle (every member projected, every row parsed)", "no-change cycle"):
            wall, cpu, rss, code, out = measured([*SYNCD, "run-once"], env)
            print(
                f"{label}, {n:,} contacts: wall {wall:.1f} s, syncd CPU {cpu:.1f} s, "
                f"peak RSS {rss:.0f} MiB, exit {code}"
            )
            print("  " + out.strip().replace("\n", "\n  "))
        change_one_percent(url, n)
        wall, cpu, rss, code, out = measured([*SYNCD, "plan"], env)
        print(
            f"plan of 1 % changes ({n // 100:,} contacts): wall {wall:.1f} s, syncd CPU "
            f"{cpu:.1f} s, peak RSS {rss:.0f} MiB, exit {code}"
        )
        print("  " + "\n  ".join(out.strip().splitlines()[:3]))
        changes = n // 100
        wall, cpu, rss, code, out = measured([*SYNCD, "run-once", "--json"], env)
        summary = _summary(out)
        print(
            f"run-once of 1 % changes ({changes:,} contacts): wall {wall:.1f} s, syncd CPU "
            f"{cpu:.1f} s, peak RSS {rss:.0f} MiB, write calls {summary.get('write_calls')}, "
            f"{summary.get('outcome')}, exit {code}"
        )
        expected = math.ceil(changes / 500)
        if code != 0 or summary.get("outcome") != "converged":
            sys.exit(f"run-once did not converge: {out.strip()}")
        if summary.get("write_calls") != expected:
            sys.exit(f"run-once made {summary.get('write_calls')} write calls, not {expected}")
    finally:
        emulator.kill()
        emulator.wait()


def _summary(out: str) -> dict[str, object]:
    """The JSON summary line that ``run-once --json`` prints among the log lines."""
    for line in reversed(out.splitlines()):
        if line.startswith("{") and '"write_calls"' in line:
            found: dict[str, object] = json.loads(line)
            return found
    return {}


if __name__ == "__main__":
    main()
