"""Benchmark: `syncd ingest` of a generated CSV file of 100,000 and 1,000,000 rows.

The file has the columns email, name, city and lists (about 52 bytes a row: 51 MiB at a
million rows) and one bad row (no usable email) every 100,000 rows. Each size is ingested by
`syncd ingest` as a process into a new SQLite mirror; printed for that process: wall time, CPU
time (user + system), peak memory (RSS), and the counts it reported. Aims: a million rows in at
most 20 s and 200 MB, memory flat with the file's size.

Usage: python benchmarks/bench_ingest.py [--contacts N] [--keep DIR] [--runs R]
(``--contacts`` is the largest size; 100,000 is measured first when it is smaller.)
"""

from __future__ import annotations

import os
from pathlib import Path

from support import SYNCD, bench_parser, measured, work_folder

BAD_EVERY = 100_000


def write_csv(path: Path, rows: int) -> Path:
    """``rows`` contacts on list 'newsletter', a bad row every ``BAD_EVERY``."""
    with path.open("w", encoding="utf-8") as out:
        out.write("email,name,city,lists\n")
        for i in range(rows):
            if i % BAD_EVERY == BAD_EVERY - 1:
                out.write(f"not-an-email-{i},Bad {i},Minsk,newsletter\n")
            else:
                out.write(f"user{i}@example.com,User {i},Minsk,newsletter\n")
    return path


def main() -> None:
    parser = bench_parser(__doc__, contacts=1_000_000)
    parser.add_argument("--runs", type=int, default=1, help="Runs per size (each on a new store).")
    args = parser.parse_args()
    workdir, _ = work_folder(args.keep, "syncd-bench-ingest-")
    sizes = sorted({min(100_000, args.contacts), args.contacts})
    for size in sizes:
        path = write_csv(workdir / f"contacts-{size}.csv", size)
        megabytes = path.stat().st_size / 2**20
        for run in range(1, args.runs + 1):
            store = workdir / f"ingest-{size}-{run}.db"
            config = workdir / f"syncd-{size}-{run}.toml"
            config.write_text(f'[store]\nurl = "sqlite:///{store}"\n', encoding="utf-8")
            env = {**os.environ, "SYNCD_CONFIG": str(config)}
            wall, cpu, rss, code, out = measured([*SYNCD, "ingest", str(path)], env)
            summary = next((line for line in out.splitlines() if " rows — " in line), out)
            print(
                f"syncd ingest, {size:,} rows ({megabytes:.0f} MiB CSV), run {run}: wall "
                f"{wall:.1f} s, CPU {cpu:.1f} s ({cpu / size * 1e6:.1f} µs a row), peak RSS "
                f"{rss:.0f} MiB, exit {code}",
                flush=True,
            )
            print(f"  {summary.strip()}", flush=True)
            for leftover in workdir.glob(f"ingest-{size}-{run}.db*"):
                leftover.unlink()


if __name__ == "__main__":
    main()
