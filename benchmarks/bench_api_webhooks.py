"""Benchmark: the ingest API to the provider's first write call, and webhooks' delivery and retry.

Starts `syncd emulate unisender` and `syncd run` as real processes (schedule one hour, so only
the API can trigger a cycle) and a webhook endpoint in this process. Measures:

1. ``POST /v1/contacts`` (one contact on the target's list) until the emulator has seen a new
   importContacts call, ``--requests`` times: min / median / max;
2. a burst of ``--events`` contacts signed up at the provider, then one cycle triggered through
   the API: from the cycle's start to the last event confirmed by the endpoint, and events/s;
3. an endpoint answering an event's first attempt 503: the wait before the first retry (the
   default backoff_first, 20 s, jittered to 10-20 s), ``--retries`` times.

Usage: python benchmarks/bench_api_webhooks.py [--requests 10] [--events 500] [--retries 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx
from support import emulating, figures, free_port, syncd_run, time_to_import, wait_for

from syncd.emulators.kit.server import LoopbackServer

KEY = "bench-key-not-a-secret"
TOKEN = "bench-token-0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()


class Endpoint:
    """Confirms every event, except the first attempt of a contact whose address starts with
    ``retry``: that one is answered 503."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, list[float]] = {}  # key -> times of its attempts
        self.confirmed: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        key = json.loads(request.read())["key"]
        with self.lock:
            attempts = self.seen.setdefault(key, [])
            attempts.append(now)
            if key.startswith("retry") and len(attempts) == 1:
                return httpx.Response(503)
            self.confirmed.append(now)
        return httpx.Response(204)


def post(api: str, body: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    answer = httpx.post(f"{api}/v1/contacts", content=body, headers=headers, timeout=30)
    answer.raise_for_status()
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--retries", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="syncd-api-"))
    port, http_port = free_port(), free_port()
    emulator, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"
    endpoint = Endpoint()
    with LoopbackServer(endpoint, "127.0.0.1", 0) as hooks:
        (tmp / "syncd.toml").write_text(
            f"""
[store]
url = "sqlite:///{tmp / "syncd.db"}"
[inbox]
path = "{tmp / "inbox"}"
[outbox]
path = "{tmp / "outbox"}"
[http]
listen = "127.0.0.1:{http_port}"
ingest_token = "{TOKEN}"
[[target]]
name = "news"
provider = "unisender"
list_id = "1"
api_key = "{KEY}"
base_url = "{emulator}/en/api"
fields = {{ Name = "name" }}
schedule = "1h"
jitter = 0
export_poll_interval = 0.02
export_rate_limit_per_minute = 100000
[[webhook]]
name = "bench"
url = "{hooks.url}/hook"
secret = "{SECRET}"
""",
            encoding="utf-8",
        )
        with (
            emulating("unisender", port, "--api-key", KEY),
            syncd_run(tmp / "syncd.toml", api, tmp / "daemon.log"),
        ):
            time.sleep(1.0)  # let the start-up cycle finish
            latency(api, emulator, args.requests)
            delivery(api, emulator, endpoint, args.events)
            first_retry(api, emulator, endpoint, args.retries)


def latency(api: str, emulator: str, n: int) -> None:
    times = []
    for i in range(n):
        body = f'{{"email": "api{i}@example.com", "name": "A {i}", "lists": ["news"]}}\n'
        times.append(time_to_import(emulator, lambda body=body: post(api, body), timeout=120))
    print(
        f"POST /v1/contacts -> first importContacts call, {n} requests: "
        f"{figures(times, 'min', 'median', 'max')}"
    )


def signups(emulator: str, first: int, n: int) -> None:
    for i in range(first, first + n):
        body = {"action": "sign_up", "email": f"remote{i}@example.com", "list_id": 1}
        httpx.post(f"{emulator}/_emulator/contact", json=body, timeout=5).raise_for_status()


def delivery(api: str, emulator: str, endpoint: Endpoint, n: int) -> None:
    signups(emulator, 0, n)
    before = len(endpoint.confirmed)
    start = time.monotonic()
    post(api, '{"email": "trigger0@example.com", "lists": ["news"]}\n')  # starts a cycle
    wait_for(lambda: len(endpoint.confirmed) >= before + n, timeout=120)
    last = endpoint.confirmed[-1] - start
    print(
        f"webhooks: {n} remote sign-ups, from the cycle's trigger to the last confirmed: "
        f"{last:.2f} s ({n / last:.0f} events/s including the cycle)"
    )


def first_retry(api: str, emulator: str, endpoint: Endpoint, n: int) -> None:
    waits = []
    for r in range(n):
        key = f"retry{r}@example.com"
        body = {"action": "sign_up", "email": key, "list_id": 1}
        httpx.post(f"{emulator}/_emulator/contact", json=body, timeout=5).raise_for_status()
        post(api, f'{{"email": "trigger{r + 1}@example.com", "lists": ["news"]}}\n')
        wait_for(lambda key=key: len(endpoint.seen.get(key, [])) >= 2, timeout=60)
        first, second = endpoint.seen[key][:2]
        waits.append(second - first)
    print(
        f"webhooks: first retry after a 503, {n} times: min {min(waits):.1f} s, "
        f"max {max(waits):.1f} s (backoff_first 20 s: 10-20 s)"
    )


if __name__ == "__main__":
    main()
