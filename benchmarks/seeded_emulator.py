"""A Unisender emulator pre-filled with N contacts on list 1, served on loopback.

Run by benchmarks/bench_cycle.py in its own process, so that the emulator's time and memory
are not counted as syncd's. Prints the URL on its first line, then serves until killed.
"""

from __future__ import annotations

import sys

from syncd.emulators.kit import serve
from syncd.emulators.unisender import UnisenderEmulator


def main() -> None:
    n, port, api_key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    emulator = UnisenderEmulator(api_key=api_key, rate_limit_per_minute=1_000_000)
    list_id = emulator.add_list("Bench")
    emulator.add_field("Name")
    emulator.add_field("City")
    for i in range(n):
        emulator.sign_up(
            f"user{i}@example.com", list_id, fields={"Name": f"User {i}", "City": "Minsk"}
        )
    serve(emulator, "127.0.0.1", port, None)


if __name__ == "__main__":
    main()
