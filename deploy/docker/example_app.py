"""The example application of docker-compose.yml: the other end of syncd's inbox, outbox, ingest
API and webhooks.

It stands for your own service, sharing the /var/lib/syncd volume with the syncd sidecar:

- every PERIOD seconds it writes a contact file (a local sign-up) into inbox/, written beside
  the folder's watch and renamed in, the way the README asks;
- with SYNCD_INGEST_TOKEN set it also hands a contact to syncd's ingest API
  (POST SYNCD_URL/v1/contacts);
- it prints each event syncd writes to outbox/ (changes that came from the provider);
- with SYNCD_WEBHOOK_SECRET set it listens on WEBHOOK_LISTEN for syncd's webhooks and accepts
  only those whose Standard Webhooks signature checks out (:func:`verify`);
- to give the outbox something to say without an account, it also plays a subscriber at the
  provider: with EMULATOR_URL set it signs someone up there through the emulator's test API.

Only the standard library: it runs in the syncd image, as the same uid (the outbox is
owner-only). The signature check is the Standard Webhooks one, written out here so that the
app needs no package; syncd's tests check it against the ``standardwebhooks`` library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATE = Path(os.environ.get("SYNCD_STATE", "/var/lib/syncd"))
INBOX, OUTBOX = STATE / "inbox", STATE / "outbox"
LIST = os.environ.get("SYNCD_LOCAL_LIST", "newsletter")
EMULATOR = os.environ.get("EMULATOR_URL", "")
PERIOD = float(os.environ.get("PERIOD", "30"))
SYNCD_URL = os.environ.get("SYNCD_URL", "http://127.0.0.1:9187")
INGEST_TOKEN = os.environ.get("SYNCD_INGEST_TOKEN", "")
WEBHOOK_SECRET = os.environ.get("SYNCD_WEBHOOK_SECRET", "")
WEBHOOK_LISTEN = os.environ.get("WEBHOOK_LISTEN", "127.0.0.1:8800")
#: How old a webhook-timestamp may be (either way), as the Standard Webhooks libraries allow:
#: a captured request cannot be replayed later.
TOLERANCE = 5 * 60


class BadSignature(ValueError):
    pass


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> dict:
    """The event of a Standard Webhooks request, or ``BadSignature``.

    The signature is ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the secret's
    base64-decoded bytes (after ``whsec_``); the header may hold several, space-separated (a
    rotation), and one match is enough. Comparisons take constant time.
    """
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (
        h.get("webhook-id"),
        h.get("webhook-timestamp"),
        h.get("webhook-signature"),
    )
    if not msg_id or not stamp or not signatures:
        raise BadSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent = int(stamp)
    except ValueError:
        raise BadSignature("webhook-timestamp is not a number") from None
    if abs((time.time() if now is None else now) - sent) > TOLERANCE:
        raise BadSignature("webhook-timestamp too old or too new")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"{msg_id}.{sent}.".encode() + body, hashlib.sha256).digest()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(given, expected):
            return json.loads(body)
    raise BadSignature("no signature matches")


class _Hooks(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 20))
        try:
            event = verify(WEBHOOK_SECRET, dict(self.headers.items()), body)
        except (BadSignature, ValueError) as exc:
            print(f"app: webhook refused: {exc}", flush=True)
            self.send_response(401)
            self.end_headers()
            return
        # A delivery may come twice (at least once): the id tells repeats apart.
        print(f"app: webhook {event['kind']} {event['key']} ({event['id']})", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_webhooks(listen: str = WEBHOOK_LISTEN) -> ThreadingHTTPServer:
    host, _, port = listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), _Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"app: webhooks on http://{listen}/hooks/syncd", flush=True)
    return server


def drop_signup(n: int) -> None:
    INBOX.mkdir(parents=True, exist_ok=True)
    part = INBOX / f".signup-{n}.csv.part"  # ignored by syncd until renamed
    part.write_text(
        f"email,name,city,lists\nlocal.signup.{n}@example.com,Local Signup {n},Minsk,{LIST}\n",
        encoding="utf-8",
    )
    part.rename(INBOX / f"signup-{n}.csv")
    print(f"app: dropped inbox/signup-{n}.csv", flush=True)


def post_signup(n: int) -> None:
    record = {"email": f"api.signup.{n}@example.com", "name": f"API Signup {n}", "lists": [LIST]}
    request = urllib.request.Request(
        f"{SYNCD_URL.rstrip('/')}/v1/contacts",
        data=json.dumps(record).encode() + b"\n",
        headers={
            "Authorization": f"Bearer {INGEST_TOKEN}",
            "Content-Type": "application/x-ndjson",
            "Idempotency-Key": f"example-app-{n}",  # a retry of this request applies once
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            print(f"app: ingest API answered {json.loads(answer.read())}", flush=True)
    except OSError as exc:
        print(f"app: ingest API not reachable yet ({exc})", flush=True)


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
    if WEBHOOK_SECRET:
        serve_webhooks()
    seen: dict[str, int] = {}
    n = 0
    while True:
        n += 1
        drop_signup(n)
        if INGEST_TOKEN:
            post_signup(n)
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
