"""Benchmark: the first push of N new contacts (default 100,000) to an empty remote list.

A mirror of N contacts on list 'bench' with no base and an empty list at the emulator (its own
process): `syncd run-once` creates them all. Prints syncd's CPU time per created contact, its
peak memory, and the write calls made, which must be ceil(N / 500); then the next cycle, which
must make none.

Usage: python benchmarks/bench_push.py [--contacts N] [--keep DIR]
"""

from __future__ import annotations

import math
import os
import sys

from bench_cycle import _summary
from support import (
    SYNCD,
    bench_parser,
    free_port,
    insert_contacts,
    measured,
    start_seeded_emulator,
    work_folder,
    write_cycle_config,
)

from syncd.store import open_engine


def main() -> None:
    args = bench_parser(__doc__, contacts=100_000).parse_args()
    n = args.contacts
    workdir, url = work_folder(args.keep, "syncd-push-")
    port = free_port()
    emulator = start_seeded_emulator(0, port)
    try:
        db = open_engine(url)
        with db.begin() as conn:
            for start in range(0, n, 20_000):
                insert_contacts(conn, range(start, min(n, start + 20_000)), "Minsk")
        db.dispose()
        assert emulator.stdout is not None
        emulator.stdout.readline()
        config = write_cycle_config(workdir, url, port)
        env = {**os.environ, "SYNCD_CONFIG": str(config)}
        for label in ("initial push", "next cycle"):
            wall, cpu, rss, code, out = measured([*SYNCD, "run-once", "--json"], env)
            summary = _summary(out)
            print(
                f"{label}, {n:,} contacts: wall {wall:.1f} s, syncd CPU {cpu:.1f} s "
                f"({1e6 * cpu / n:.0f} µs per contact), peak RSS {rss:.0f} MiB, "
                f"write calls {summary.get('write_calls')}, {summary.get('outcome')}, exit {code}"
            )
            expected = math.ceil(n / 500) if label == "initial push" else 0
            if summary.get("write_calls") != expected or summary.get("outcome") != "converged":
                sys.exit(f"{label}: expected {expected} write calls and convergence: {out[-2000:]}")
    finally:
        emulator.kill()
        emulator.wait()


if __name__ == "__main__":
    main()
