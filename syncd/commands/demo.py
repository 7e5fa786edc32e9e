"""`syncd demo`: the whole loop on loopback, with no account and no set-up.

Starts the Unisender emulator on a free loopback port, loads a sample of contacts into a fresh
mirror, runs a cycle, makes changes on both sides (an edit and an unsubscribe at the provider, a
sign-up there, a local edit and a local delete), runs again, and checks that both sides agree and
that one more cycle writes nothing.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from syncd.commands import cycles
from syncd.config import Config, parse_config
from syncd.emulators.kit.server import EmulatorServer
from syncd.emulators.unisender import UnisenderEmulator
from syncd.engine.result import CycleResult
from syncd.local.ingest import ingest_file
from syncd.providers import PROVIDERS
from syncd.store import open_engine

FIRST = ["Ann", "Boris", "Clara", "Dmitri", "Eva", "Fyodor", "Galina", "Igor", "Lena", "Maksim"]
LAST = ["Ivanova", "Petrov", "Smirnova", "Volkov", "Kuznetsova", "Popov", "Sokolova", "Orlov"]
CITIES = ["Minsk", "Brest", "Grodno", "Gomel", "Vitebsk", "Mogilev"]
DEMO_KEY = "demo-key-not-a-secret"

Echo = Callable[[str], None]


def sample_rows(n: int) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST)) % len(LAST)]
        rows.append(
            {
                "email": f"{first}.{last}.{i}@example.com".lower(),
                "name": f"{first} {last}",
                "city": CITIES[i % len(CITIES)],
                "tags": "customer" if i % 3 else "customer,vip",
                "lists": "newsletter",
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = sorted({k for r in rows for k in r}, key=lambda c: (c != "email", c))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def demo_config(workdir: Path, api_url: str) -> Config:
    return parse_config(
        {
            "store": {"url": f"sqlite:///{workdir / 'syncd.db'}"},
            "inbox": {"path": str(workdir / "inbox")},
            "outbox": {"path": str(workdir / "outbox")},
            "target": [
                {
                    "name": "newsletter",
                    "provider": "unisender",
                    "list_id": "1",
                    "api_key": DEMO_KEY,
                    "base_url": api_url,
                    "fields": {"Name": "name", "City": "city"},
                    "export_poll_interval": 0.05,
                }
            ],
        },
        "demo",
        providers=PROVIDERS,
    )


def run_demo(n: int, keep: str | None, echo: Echo) -> int:
    """The demo in ``keep`` (kept), else in a temporary folder removed afterwards; nothing is
    written anywhere else, the working folder included."""
    if keep:
        workdir = Path(keep)
        workdir.mkdir(parents=True, exist_ok=True)
        return _demo(n, workdir, echo)
    with tempfile.TemporaryDirectory(prefix="syncd-demo-") as temporary:
        return _demo(n, Path(temporary), echo)


def _demo(n: int, workdir: Path, echo: Echo) -> int:
    emulator = UnisenderEmulator(api_key=DEMO_KEY)
    list_id = emulator.add_list("Newsletter")
    emulator.add_field("Name")
    emulator.add_field("City")
    with EmulatorServer(emulator.handle) as server:
        echo(f"emulator: Unisender API on {server.url} (loopback only); files in {workdir}")
        config = demo_config(workdir, f"{server.url}/en/api")
        db = open_engine(config.store.url)
        try:
            problems, quiet = _demo_cycles(n, workdir, config, db, emulator, list_id, echo)
        finally:
            db.dispose()  # SQLite's file is closed before its folder goes
    problems += [f"cycle 3 made {quiet.write_calls} write calls"] if quiet.write_calls else []
    if problems:
        echo("NOT converged:")
        for p in problems:
            echo(f"  - {p}")
        return 1
    echo(
        "converged: the mirror and the provider list agree on every contact, the unsubscribe "
        "stuck on both sides, and the last cycle wrote nothing"
    )
    return 0


def _demo_cycles(
    n: int,
    workdir: Path,
    config: Config,
    db: Any,
    emulator: UnisenderEmulator,
    list_id: int,
    echo: Echo,
) -> tuple[list[str], CycleResult]:
    """Load the sample, sync, change both sides, sync twice; what is wrong, and the last cycle."""
    report = ingest_file(db, write_csv(workdir / "sample.csv", sample_rows(n)), config.ingest)
    echo(f"ingested {report.to_dict()['created']} sample contacts into the mirror")
    _cycle("cycle 1 (first sync)", config, db, echo)

    people = sorted(emulator.contacts_in_list(list_id), key=lambda c: c["email"])
    unsubscribed, edited, deleted, renamed = (people[i]["email"] for i in range(4))
    emulator.unsubscribe(unsubscribed, list_id)
    emulator.edit(edited, City="Pinsk")
    emulator.sign_up("new.reader@example.org", list_id, fields={"Name": "New Reader"})
    local_changes = [
        {"email": deleted, "delete": "1"},
        {"email": renamed, "name": "Renamed Locally"},
    ]
    ingest_file(db, write_csv(workdir / "changes.csv", local_changes), config.ingest)
    echo(
        "changes: at the provider, "
        f"{unsubscribed} unsubscribed, {edited} moved to Pinsk, new.reader@example.org "
        f"signed up; locally, {deleted} deleted and {renamed} renamed"
    )
    _cycle("cycle 2 (both sides changed)", config, db, echo)
    quiet = _cycle("cycle 3 (nothing changed)", config, db, echo)

    problems = _check(emulator, list_id, db, unsubscribed, edited, deleted, renamed)
    return problems, quiet


def _cycle(title: str, config: Config, db: Any, echo: Echo) -> CycleResult:
    (result,) = cycles.run_once(config, db=db)
    s = result.summary()
    echo(
        f"{title}: {result.outcome}; created {s['created']}, updated {s['updated']}, deleted "
        f"{s['deleted']}, pulled {s['pulled']}, removed locally {s['removed_local']}; "
        f"{s['api_calls']} API calls, {s['write_calls']} of them writes"
    )
    return result


def _check(
    emulator: UnisenderEmulator,
    list_id: int,
    db: Any,
    unsubscribed: str,
    edited: str,
    deleted: str,
    renamed: str,
) -> list[str]:
    import io
    import json

    from syncd.local.export import export_contacts

    buf = io.StringIO()
    export_contacts(db, buf, "ndjson", "newsletter")
    local = {r["email"]: r for r in map(json.loads, buf.getvalue().splitlines())}
    remote = {c["email"]: c for c in emulator.contacts_in_list(list_id)}
    problems = []
    if set(local) != set(remote):
        problems.append(f"different contacts: {sorted(set(local) ^ set(remote))[:5]}")
    for email, r in remote.items():
        l_row = local.get(email)
        if l_row and (l_row.get("name"), l_row.get("city")) != (
            r["fields"].get("Name"),
            r["fields"].get("City"),
        ):
            problems.append(f"{email}: fields differ")
    if "newsletter" not in local.get(unsubscribed, {}).get("unsubscribed_lists", []):
        # an unsubscribe from the list: the mirror keeps it as that list's consent
        problems.append(f"{unsubscribed} is not unsubscribed from the list in the mirror")
    if local.get(edited, {}).get("city") != "Pinsk":
        problems.append(f"{edited}: the provider's edit did not reach the mirror")
    if deleted in remote:
        problems.append(f"{deleted} was deleted locally but is still at the provider")
    if remote.get(renamed, {}).get("fields", {}).get("Name") != "Renamed Locally":
        problems.append(f"{renamed}: the local edit did not reach the provider")
    if "new.reader@example.org" not in local:
        problems.append("the sign-up at the provider did not reach the mirror")
    return problems
