"""Benchmark: a target of N contacts on both sides (default 1,000,000).

Prints, for syncd's own process (the emulator runs in another one):
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
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection
from support import SYNCD, bench_parser, free_port, work_folder

from syncd.core.projection import Projection
from syncd.store import open_engine

API_KEY = "bench-key-not-a-secret"
CHUNK = 20_000


def insert_contacts(conn: Connection, ids: range, city: str) -> None:
    """Contacts user{i}@example.com on the local list 'bench'."""
    conn.execute(
        text(
            "INSERT INTO contact (id, email, fields, tags, status, deleted) "
            "VALUES (:id, :email, :fields, '[]', 'active', 0)"
        ),
        [
            {
                "id": i + 1,
                "email": f"user{i}@example.com",
                "fields": json.dumps({"city": city, "name": f"User {i}"}),
            }
            for i in ids
        ],
    )
    conn.execute(
        text("INSERT INTO membership (contact_id, list_name) VALUES (:id, 'bench')"),
        [{"id": i + 1} for i in ids],
    )


def build_mirror(url: str, n: int) -> None:
    """N contacts on list 'bench', and a base saying both sides agreed on each of them."""
    db = open_engine(url)
    with db.begin() as conn:
        for start in range(0, n, CHUNK):
            ids = range(start, min(n, start + CHUNK))
            insert_contacts(conn, ids, "Minsk")
            rows = []
            for i in ids:
                p = Projection.build(
                    f"user{i}@example.com", {"Name": f"User {i}", "City": "Minsk"}, (), "active"
                )
                rows.append({"key": p.key, "digest": p.digest(), "data": p.to_json()})
            conn.execute(
                text(
                    "INSERT INTO base (target, key, digest, data) "
                    "VALUES ('bench', :key, :digest, :data)"
                ),
                rows,
            )
    db.dispose()


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


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, int, str]:
    """Run a command; return wall s, CPU s, peak RSS MiB (of that process), exit code, stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), out


def main() -> None:
    args = bench_parser(__doc__, contacts=1_000_000).parse_args()
    n = args.contacts
    workdir, url = work_folder(args.keep, "syncd-bench-")
    port = free_port()
    emulator = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("seeded_emulator.py")),
            str(n),
            str(port),
            API_KEY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        t = time.perf_counter()
        build_mirror(url, n)
        print(
            f"setup: mirror of {n:,} contacts built in {time.perf_counter() - t:.1f} s", flush=True
        )
        assert emulator.stdout is not None
        line = emulator.stdout.readline().decode()  # waits until the emulator is filled
        print(f"setup: emulator filled ({line.strip()})", flush=True)
        config = workdir / "syncd.toml"
        config.write_text(
            f"""
[store]
url = "{url}"

[[target]]
name = "bench"
provider = "unisender"
list_id = "1"
api_key = "{API_KEY}"
base_url = "http://127.0.0.1:{port}/en/api"
fields = {{ Name = "name", City = "city" }}
export_poll_interval = 0.2
export_timeout = 1800
timeout = 600
rate_limit_per_minute = 1000000
""",
            encoding="utf-8",
        )
        env = {**os.environ, "SYNCD_CONFIG": str(config)}
        wall, cpu, rss, code, out = measured([*SYNCD, "run-once"], env)
        print(
            f"no-change cycle, {n:,} contacts: wall {wall:.1f} s, syncd CPU {cpu:.1f} s, "
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
