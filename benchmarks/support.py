"""What the benchmark scripts share: their command line, a work folder, ports and processes.

The benchmarks run as scripts (``python benchmarks/bench_x.py``), so this folder is on their
path and they import this module by name; they never import from ``tests/``.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SYNCD = [sys.executable, "-m", "syncd"]


def bench_parser(doc: str | None, contacts: int) -> argparse.ArgumentParser:
    """A command line named by the first line of ``doc``, with ``--contacts`` and ``--keep``."""
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0])
    parser.add_argument("--contacts", type=int, default=contacts)
    parser.add_argument("--keep", default=None, help="Work in this folder and keep it.")
    return parser


def work_folder(keep: str | None, prefix: str) -> tuple[Path, str]:
    """The folder to work in (``keep``, else a new temporary one) and the URL of a mirror in it."""
    workdir = Path(keep or tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, f"sqlite:///{workdir / 'bench.db'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_emulator(provider: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """`syncd emulate PROVIDER` on ``port``, once it says it is listening."""
    emulator = subprocess.Popen(
        [*SYNCD, "emulate", provider, "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert emulator.stdout is not None and b"listening" in emulator.stdout.readline()
    return emulator
