"""Provider adapters: the interface every adapter implements (``base``), the HTTP they share
(``http``), one file per provider ending with its ``SPEC`` (``spec``), and the table of them all
(``registry.PROVIDERS``, with third-party providers from the ``syncd.providers`` entry points).

``make_provider`` and ``callback_reader`` are what the rest of syncd calls: both look the
target's provider up in the table. Adapters are imported on first use, not at package import, so
``syncd.providers.base`` stays importable on its own (the planner and the engine need only the
interface). It may import ``core``, ``config`` and the cross-cutting root modules; nothing above.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd.providers.registry import PROVIDERS, spec_for

if TYPE_CHECKING:
    import httpx

    from syncd.config import TargetConfig
    from syncd.providers.base import Provider
    from syncd.providers.spec import CallbackReader

__all__ = ["PROVIDERS", "callback_reader", "make_provider"]


def make_provider(
    target: TargetConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    default_region: str | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Provider:
    """The adapter for ``target.provider``, from its spec in the provider table."""
    spec = spec_for(target)
    return spec.adapter(
        spec.bind(target), transport=transport, default_region=default_region, sleep=sleep
    )


def callback_reader(target: TargetConfig) -> CallbackReader | None:
    """How to read the provider's callbacks for ``target`` (None: its provider sends none)."""
    reader = spec_for(target).callback_reader
    return None if reader is None else reader(target)
