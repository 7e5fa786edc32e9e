"""What every provider emulator shares: the loopback HTTP server that runs ``httpx.Request ->
httpx.Response`` handlers (``server``), PHP-style form parsing (``forms``), the fault switches
(``faults``), the ``/_emulator/`` controls every emulator inherits (``controls``) and the checks
several providers make alike (``checks``).

This module is the kit's public face: ``EmulatorOptions``, what ``syncd emulate`` asks of an
emulator, which each emulator module's ``make_emulator(options)`` turns into a ready emulator,
and ``serve``, which runs any of them. It imports nothing from syncd outside
``syncd.emulators.kit``, and nothing in the kit imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from syncd.emulators.kit.checks import EMAIL_RE, key_accepted
from syncd.emulators.kit.controls import EmulatorControls
from syncd.emulators.kit.faults import FaultAnswer, Faults, fault_means_later
from syncd.emulators.kit.server import DropConnection, EmulatorServer, serve_forever

__all__ = [
    "EMAIL_RE",
    "DropConnection",
    "EmulatorControls",
    "EmulatorOptions",
    "EmulatorServer",
    "FaultAnswer",
    "Faults",
    "fault_means_later",
    "key_accepted",
    "serve",
]


@dataclass(frozen=True)
class EmulatorOptions:
    """What an emulator is built with: ``provider`` is the registry name (``"selzy"``: one
    emulator module may serve several names); ``api_key`` None accepts any key; ``seed`` adds
    the sample list ("Newsletter", and what else the provider's demo needs); ``primary_key`` is
    the account's key attribute where a provider has one (Netcore)."""

    provider: str
    api_key: str | None
    seed: bool
    primary_key: str = "EMAIL"


def serve(
    emulator: EmulatorControls,
    host: str,
    port: int,
    faults: Faults | None,
    request_log: Path | None = None,
) -> None:
    """Serve ``emulator`` on ``host:port`` until SIGINT or SIGTERM, with ``faults`` in force
    (None: the emulator's own); what ``syncd emulate`` ends with."""
    if faults is not None:
        emulator.faults = faults
    serve_forever(emulator.handle, host, port, request_log)
