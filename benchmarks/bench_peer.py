"""Benchmark beside a peer: syncd's no-change cycle and vdirsyncer's no-change sync, same N.

vdirsyncer (https://github.com/pimutils/vdirsyncer) keeps two storages of contacts in two-way
sync with a status of what each side last held, as syncd keeps a mirror and a provider with its
base. Here: two filesystem storages of N vCards, synced once, then synced again with nothing
changed. syncd: a mirror of N contacts and an emulated Unisender list of the same N, agreed on
(the setup of ``bench_cycle.py``), a first `syncd run-once`, then the measured one, which
reads the whole export and writes nothing. For each N, the CPU time (user + system) of that one
process (the emulator runs in another one); then, over the series, the marginal CPU per contact
and syncd's over vdirsyncer's.

vdirsyncer is installed from PyPI into a throwaway virtualenv (``--venv``, default
/tmp/syncd-bench-vdirsyncer) when it is not there yet.

Usage: python benchmarks/bench_peer.py [--sizes 10000,100000] [--keep DIR] [--venv DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from support import (
    SYNCD,
    build_mirror,
    free_port,
    measured,
    start_seeded_emulator,
    work_folder,
    write_cycle_config,
)


def vdirsyncer(venv: Path) -> Path:
    """The vdirsyncer program of ``venv``, installed there first if missing."""
    program = venv / "bin" / "vdirsyncer"
    if not program.exists():
        print(f"setup: installing vdirsyncer into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "vdirsyncer"], check=True)
    return program


def vcard(i: int) -> str:
    return (
        "BEGIN:VCARD\r\nVERSION:3.0\r\n"
        f"UID:user{i}@example.com\r\nFN:User {i}\r\nEMAIL:user{i}@example.com\r\n"
        "ADR:;;;Minsk;;;\r\nEND:VCARD\r\n"
    )


def vdirsyncer_no_change(program: Path, folder: Path, n: int) -> tuple[float, float]:
    """CPU and wall seconds of a vdirsyncer sync of two filesystem storages of N vCards that
    are already in sync (after a first sync that copied them from one side to the other)."""
    side_a, side_b = folder / "a", folder / "b"
    side_a.mkdir(parents=True)
    side_b.mkdir()
    for i in range(n):
        (side_a / f"user{i}.vcf").write_text(vcard(i), encoding="utf-8")
    config = folder / "config"
    config.write_text(
        f"""
[general]
status_path = "{folder / "status"}/"

[pair bench]
a = "bench_a"
b = "bench_b"
collections = null

[storage bench_a]
type = "filesystem"
path = "{side_a}/"
fileext = ".vcf"

[storage bench_b]
type = "filesystem"
path = "{side_b}/"
fileext = ".vcf"
""",
        encoding="utf-8",
    )
    env = {**os.environ, "VDIRSYNCER_CONFIG": str(config)}
    for step in ("discover", "sync"):
        wall, cpu, _, code, out = measured([str(program), step], env)
        if code != 0:
            sys.exit(f"vdirsyncer {step} failed: {out}")
    if len(list(side_b.iterdir())) != n:
        sys.exit("vdirsyncer's first sync did not copy every vCard")
    wall, cpu, _, code, out = measured([str(program), "sync"], env)
    if code != 0:
        sys.exit(f"vdirsyncer sync failed: {out}")
    return cpu, wall


def syncd_no_change(folder: Path, n: int) -> tuple[float, float]:
    """CPU and wall seconds of syncd's `run-once` over N contacts agreed on both sides."""
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'bench.db'}"
    port = free_port()
    emulator = start_seeded_emulator(n, port)
    try:
        build_mirror(url, n)
        assert emulator.stdout is not None
        emulator.stdout.readline()  # the emulator is filled
        env = {**os.environ, "SYNCD_CONFIG": str(write_cycle_config(folder, url, port))}
        # as vdirsyncer syncs once before its measured sync: the first cycle over a mirror made
        # outside syncd reads every member and every export row once (`bench_cycle.py`)
        for _ in range(2):
            wall, cpu, _, code, out = measured([*SYNCD, "run-once"], env)
            if code != 0:
                sys.exit(f"syncd run-once failed: {out}")
        return cpu, wall
    finally:
        emulator.kill()
        emulator.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="Comma-separated N, ascending.")
    parser.add_argument("--keep", default=None, help="Work in this folder and keep it.")
    parser.add_argument("--venv", default="/tmp/syncd-bench-vdirsyncer", type=Path)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    workdir, _ = work_folder(args.keep, "syncd-bench-peer-")
    program = vdirsyncer(args.venv)
    version = subprocess.run(
        [str(program), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(f"peer: {version}", flush=True)
    figures: dict[str, list[tuple[int, float]]] = {"syncd": [], "vdirsyncer": []}
    for n in sizes:
        t = time.perf_counter()
        cpu, wall = syncd_no_change(workdir / f"syncd-{n}", n)
        figures["syncd"].append((n, cpu))
        print(
            f"syncd no-change cycle, {n:,} contacts: CPU {cpu:.2f} s "
            f"({cpu / n * 1e6:.1f} µs a contact), wall {wall:.1f} s "
            f"(setup and run {time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        cpu, wall = vdirsyncer_no_change(program, workdir / f"vdirsyncer-{n}", n)
        figures["vdirsyncer"].append((n, cpu))
        print(
            f"vdirsyncer no-change sync, {n:,} vCards: CPU {cpu:.2f} s "
            f"({cpu / n * 1e6:.1f} µs a contact), wall {wall:.1f} s",
            flush=True,
        )
    if len(sizes) > 1:
        marginal = {
            name: (series[-1][1] - series[0][1]) / (series[-1][0] - series[0][0])
            for name, series in figures.items()
        }
        print(
            f"marginal CPU a contact ({sizes[0]:,} to {sizes[-1]:,}): syncd "
            f"{marginal['syncd'] * 1e6:.1f} µs, vdirsyncer {marginal['vdirsyncer'] * 1e6:.1f} µs; "
            f"syncd / vdirsyncer = {marginal['syncd'] / marginal['vdirsyncer']:.2f}"
        )


if __name__ == "__main__":
    main()
