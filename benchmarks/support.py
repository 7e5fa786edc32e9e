"""What the benchmark scripts share: their command line, a work folder, ports and processes,
and the timing of a change until syncd's effect is seen.

The benchmarks run as scripts (``python benchmarks/bench_x.py``), so this folder is on their
path and they import this module by name; they never import from ``tests/``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.engine import Connection

from syncd.core.projection import Projection
from syncd.store import open_engine

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


def measured(
    cmd: list[str], env: dict[str, str] | None = None
) -> tuple[float, float, float, int, str]:
    """Run a command; return wall s, CPU s, peak RSS MiB (of that process), exit code, output
    (stdout and stderr together)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), out


# -- a daemon on an emulator, and how long a change takes to come through -----------------


def wait_for(
    check: Callable[..., object],
    timeout: float = 30.0,
    every: float = 0.01,
    ignore: tuple[type[Exception], ...] = (httpx.HTTPError,),
) -> None:
    """Poll ``check`` until it is true; an error in ``ignore`` counts as not yet (the process
    or file looked at may still be starting). Gives up, ending the benchmark, after ``timeout``.
    ``check`` is typed loosely so that a lambda may bind a loop's value as a default argument."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ignore:
            pass
        time.sleep(every)
    raise SystemExit("timed out")


@contextmanager
def emulating(provider: str, port: int, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """``start_emulator``, ended when the block is left."""
    emulator = start_emulator(provider, port, *extra)
    try:
        yield emulator
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


@contextmanager
def syncd_run(config: Path, url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`syncd run` with ``config`` (its output in ``log``), once ``url``/healthz answers; ended
    with SIGTERM, as systemd does, when the block is left."""
    proc = subprocess.Popen(
        [*SYNCD, "run", "--config", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, timeout=60)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def imports(emulator: str) -> int:
    """How many importContacts calls the emulator at ``emulator`` has answered."""
    return int(httpx.get(f"{emulator}/_emulator/calls").json()["calls"].get("importContacts", 0))


def time_until(
    act: Callable[..., object],
    seen: Callable[..., object],
    pause: float,
    timeout: float = 30.0,
    every: float = 0.01,
    ignore: tuple[type[Exception], ...] = (httpx.HTTPError,),
) -> float:
    """Seconds from ``act`` until ``seen`` is true (polled as ``wait_for`` does); then ``pause``,
    so that one try's tail (the end of the cycle it started) is not timed in the next."""
    start = time.perf_counter()
    act()
    wait_for(seen, timeout, every, ignore)
    took = time.perf_counter() - start
    time.sleep(pause)
    return took


def time_to_import(emulator: str, act: Callable[..., object], timeout: float = 30.0) -> float:
    """``time_until`` the emulator has answered one more importContacts call than before ``act``."""
    before = imports(emulator)
    return time_until(act, lambda: imports(emulator) > before, 0.3, timeout)


def figures(times: Sequence[float], *names: str) -> str:
    """``min 0.12 s, median 0.34 s``: the figures of ``times`` named (``min``, ``median``,
    ``p95``, ``max``), in the order named."""
    ordered = sorted(times)
    value = {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[max(0, round(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
    }
    return ", ".join(f"{name} {value[name]:.2f} s" for name in names)


# -- a target of N contacts on both sides (bench_cycle.py, bench_peer.py) ------------------

CYCLE_API_KEY = "bench-key-not-a-secret"
_CHUNK = 20_000


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
        for start in range(0, n, _CHUNK):
            ids = range(start, min(n, start + _CHUNK))
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


def start_seeded_emulator(n: int, port: int) -> subprocess.Popen[bytes]:
    """``seeded_emulator.py``: a Unisender emulator holding the same N contacts, filling up in
    its own process (its first output line says it is filled)."""
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("seeded_emulator.py")),
            str(n),
            str(port),
            CYCLE_API_KEY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def write_cycle_config(workdir: Path, url: str, port: int) -> Path:
    """The syncd.toml of the target 'bench' on that emulator."""
    config = workdir / "syncd.toml"
    config.write_text(
        f"""
[store]
url = "{url}"

[[target]]
name = "bench"
provider = "unisender"
list_id = "1"
api_key = "{CYCLE_API_KEY}"
base_url = "http://127.0.0.1:{port}/en/api"
fields = {{ Name = "name", City = "city" }}
export_poll_interval = 0.2
export_timeout = 1800
timeout = 600
rate_limit_per_minute = 1000000
""",
        encoding="utf-8",
    )
    return config
