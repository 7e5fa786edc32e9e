"""Benchmark: the CPU an idle daemon takes, a target of N contacts (default 10,000) in sync.

Starts `syncd run` with the target on a 10 s schedule against a pre-filled emulator (its own
process), waits for the first cycle to converge, then reads the daemon's CPU time (user +
system, from /proc) over a window of cycles that find nothing to do, and prints it as a share of
one core, with the cycles run meanwhile.

Usage: python benchmarks/bench_idle.py [--contacts N] [--seconds S] [--keep DIR]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from support import (
    CYCLE_API_KEY,
    SYNCD,
    bench_parser,
    build_mirror,
    free_port,
    start_seeded_emulator,
    work_folder,
)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def cycles_run(log: Path) -> int:
    return log.read_text(errors="replace").count("cycle converged")


def main() -> None:
    parser = bench_parser(__doc__, contacts=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    workdir, url = work_folder(args.keep, "syncd-idle-")
    port = free_port()
    emulator = start_seeded_emulator(args.contacts, port)
    daemon = None
    try:
        build_mirror(url, args.contacts)
        assert emulator.stdout is not None
        emulator.stdout.readline()
        config = workdir / "syncd.toml"
        config.write_text(
            f"""
[store]
url = "{url}"

[http]
listen = "127.0.0.1:{free_port()}"

[inbox]
path = "{workdir / "inbox"}"

[outbox]
path = "{workdir / "outbox"}"

[[target]]
name = "bench"
provider = "unisender"
list_id = "1"
api_key = "{CYCLE_API_KEY}"
base_url = "http://127.0.0.1:{port}/en/api"
fields = {{ Name = "name", City = "city" }}
schedule = "10s"
export_poll_interval = 0.2
rate_limit_per_minute = 1000000
""",
            encoding="utf-8",
        )
        log = workdir / "daemon.log"
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                [*SYNCD, "run", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 600
        while cycles_run(log) < 1:  # the first cycle projects and fingerprints everything
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the daemon did not finish a first cycle:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        time.sleep(2)
        start_cpu, start_wall, start_cycles = (
            cpu_seconds(daemon.pid),
            time.monotonic(),
            cycles_run(log),
        )
        time.sleep(args.seconds)
        cpu = cpu_seconds(daemon.pid) - start_cpu
        wall = time.monotonic() - start_wall
        cycles = cycles_run(log) - start_cycles
        print(
            f"idle daemon, {args.contacts:,} contacts, schedule 10 s: {cpu:.2f} s CPU in "
            f"{wall:.0f} s = {100 * cpu / wall:.2f} % of a core, {cycles} no-change cycles "
            f"({1000 * cpu / max(cycles, 1):.0f} ms CPU each)"
        )
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait()
        emulator.kill()
        emulator.wait()


if __name__ == "__main__":
    main()
