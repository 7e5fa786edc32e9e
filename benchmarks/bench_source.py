"""Benchmark: a ``[[source]]`` snapshot of many rows read by `syncd source pull`.

Builds an SQLite application database of ``--contacts`` users and a mirror, then runs
`syncd source pull` as a real process three times: the first read (every row a create), a read
with nothing changed, and a read with 1 % of the rows edited. For each: wall time, the CPU time
of syncd's process, its peak RSS, and what it applied. Fails if the no-change read applied
anything or the 1 % read did not update exactly 1 %.

Usage: python benchmarks/bench_source.py [--contacts 1000000] [--keep DIR]
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from support import SYNCD, bench_parser, work_folder

QUERY = "SELECT email, first_name AS name, city, plan AS tags, unsubscribed FROM users"


def build_app(path: Path, n: int) -> None:
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, first_name TEXT, "
            "city TEXT, plan TEXT, unsubscribed INTEGER NOT NULL DEFAULT 0)"
        )
        conn.executemany(
            "INSERT INTO users VALUES (?, ?, ?, ?, ?, 0)",
            (
                (i, f"user{i}@example.com", f"User {i}", ("Minsk", "Brest")[i % 2], "free")
                for i in range(n)
            ),
        )


def pull(workdir: Path) -> dict[str, Any]:
    """One `syncd source pull --json` and what it cost syncd's process alone."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [*SYNCD, "source", "pull", "--json", "--config", str(workdir / "syncd.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=workdir,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"syncd source pull exited {proc.returncode}: {err[-2000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB
        "report": json.loads(out),
    }


def main() -> None:
    args = bench_parser(__doc__, 1_000_000).parse_args()
    n = args.contacts
    workdir, store_url = work_folder(args.keep, "syncd-bench-source-")
    app = workdir / "app.db"
    (workdir / "bench.db").unlink(missing_ok=True)
    build_app(app, n)
    (workdir / "syncd.toml").write_text(
        f'[store]\nurl = "{store_url}"\n\n[[source]]\nname = "app"\nurl = "sqlite:///{app}"\n'
        f'query = "{QUERY}"\nlist = "newsletter"\ntimeout = 3600.0\n',
        encoding="utf-8",
    )
    rows = []
    first = pull(workdir)
    assert first["report"]["created"] == n, first["report"]
    rows.append(("first read (every row a create)", first))
    same = pull(workdir)
    r = same["report"]
    assert (r["created"], r["updated"], r["removed"], r["unchanged"]) == (0, 0, 0, n), r
    rows.append(("no change", same))
    changed = n // 100
    with sqlite3.connect(app) as conn:
        conn.execute("UPDATE users SET city = 'Gomel' WHERE id % 100 = 0")
    edit = pull(workdir)
    assert edit["report"]["updated"] == changed, edit["report"]
    rows.append((f"1 % edited ({changed:,} updates)", edit))

    print(f"| read ({n:,} rows) | wall time | syncd CPU | syncd peak RSS |")
    print("|---|---|---|---|")
    for name, m in rows:
        print(f"| {name} | {m['wall']:.1f} s | {m['cpu']:.1f} s | {m['rss_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
