"""The example application of docker-compose.yml: the other end of syncd's inbox and outbox.

It stands for your own service, sharing the /var/lib/syncd volume with the syncd sidecar:

- every PERIOD seconds it writes a contact file (a local sign-up) into inbox/, written beside
  the folder's watch and renamed in, the way the README asks;
- it prints each event syncd writes to outbox/ (changes that came from the provider);
- to give the outbox something to say without an account, it also plays a subscriber at the
  provider: with EMULATOR_URL set it signs someone up there through the emulator's test API.

Only the standard library: it runs in the syncd image, as the same uid (the outbox is
owner-only).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

STATE = Path(os.environ.get("SYNCD_STATE", "/var/lib/syncd"))
INBOX, OUTBOX = STATE / "inbox", STATE / "outbox"
LIST = os.environ.get("SYNCD_LOCAL_LIST", "newsletter")
EMULATOR = os.environ.get("EMULATOR_URL", "")
PERIOD = float(os.environ.get("PERIOD", "30"))


def drop_signup(n: int) -> None:
    INBOX.mkdir(parents=True, exist_ok=True)
    part = INBOX / f".signup-{n}.csv.part"  # ignored by syncd until renamed
    part.write_text(
        f"email,name,city,lists\nlocal.signup.{n}@example.com,Local Signup {n},Minsk,{LIST}\n",
        encoding="utf-8",
    )
    part.rename(INBOX / f"signup-{n}.csv")
    print(f"app: dropped inbox/signup-{n}.csv", flush=True)


def remote_signup(n: int) -> None:
    body = {"action": "sign_up", "email": f"remote.signup.{n}@example.com", "list_id": 1}
    request = urllib.request.Request(
        f"{EMULATOR.rstrip('/')}/_emulator/contact",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        urllib.request.urlopen(request, timeout=5).close()
        print(f"app: remote.signup.{n}@example.com signed up at the provider", flush=True)
    except OSError as exc:
        print(f"app: emulator not reachable yet ({exc})", flush=True)


def print_new_events(seen: dict[str, int]) -> None:
    for path in sorted(OUTBOX.glob("changes-*.ndjson")) if OUTBOX.is_dir() else []:
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines[seen.get(path.name, 0) :]:
            event = json.loads(line)  # schemas/change-event.schema.json
            print(f"app: outbox event {event['kind']} {event['key']}", flush=True)
        seen[path.name] = len(lines)


def main() -> None:
    seen: dict[str, int] = {}
    n = 0
    while True:
        n += 1
        drop_signup(n)
        if EMULATOR:
            remote_signup(n)
        print_new_events(seen)
        time.sleep(PERIOD)


def stop_on_sigterm() -> None:
    """Exit 0 on SIGTERM. As a container's PID 1 a process gets no default action for SIGTERM:
    without a handler `docker stop` would wait its whole grace period, then kill it."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))


if __name__ == "__main__":
    stop_on_sigterm()
    main()
