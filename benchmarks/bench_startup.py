"""Benchmark: what a `syncd` command costs before it does anything (issue 12).

Each command runs as its own process ``--runs`` times (default 5); printed for each: the median
and the range of its CPU time (user + system) and wall time. The commands: ``syncd --version``,
``syncd --help``, ``syncd ingest`` of a 10-row CSV file into a mirror that already holds those
rows, and ``syncd run-once`` of a 10-contact list in sync with a Unisender emulator (run in its
own process, started once; its CPU is not counted). Each command runs once before it is measured,
so the store exists and is at its newest schema, and the list is in sync.

Usage: python benchmarks/bench_startup.py [--runs R] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics

from support import SYNCD, emulating, free_port, measured, work_folder

API_KEY = "bench-startup-key"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="Measured runs of each command.")
    parser.add_argument("--keep", default=None, help="Work in this folder and keep it.")
    args = parser.parse_args()
    workdir, store_url = work_folder(args.keep, "syncd-bench-startup-")
    contacts = workdir / "ten.csv"
    contacts.write_text(
        "email,name\n" + "".join(f"user{i}@example.com,User {i}\n" for i in range(10)),
        encoding="utf-8",
    )
    port = free_port()
    config = workdir / "syncd.toml"
    config.write_text(
        f'[store]\nurl = "{store_url}"\n\n[[target]]\nname = "newsletter"\n'
        f'provider = "unisender"\nlist_id = "1"\nbase_url = "http://127.0.0.1:{port}/en/api"\n'
        f'api_key = "{API_KEY}"\nfields = {{ Name = "name" }}\nexport_poll_interval = 0.05\n',
        encoding="utf-8",
    )
    env = {**os.environ, "SYNCD_CONFIG": str(config)}
    commands = {
        "syncd --version": ["--version"],
        "syncd --help": ["--help"],
        "syncd ingest (10 rows, unchanged)": ["ingest", str(contacts)],
        "syncd run-once (10 contacts, in sync)": ["run-once"],
    }
    with emulating("unisender", port, "--api-key", API_KEY):
        for name, argv in commands.items():
            _, _, _, code, out = measured([*SYNCD, *argv], env)  # the store made, the list synced
            if code != 0:
                raise SystemExit(f"{name} failed (exit {code}):\n{out}")
            cpu, wall = [], []
            for _ in range(args.runs):
                w, c, _, code, out = measured([*SYNCD, *argv], env)
                if code != 0:
                    raise SystemExit(f"{name} failed (exit {code}):\n{out}")
                cpu.append(c)
                wall.append(w)
            print(
                f"{name}: CPU median {statistics.median(cpu):.2f} s "
                f"({min(cpu):.2f} to {max(cpu):.2f}), wall median {statistics.median(wall):.2f} s "
                f"({min(wall):.2f} to {max(wall):.2f}), {args.runs} runs",
                flush=True,
            )


if __name__ == "__main__":
    main()
