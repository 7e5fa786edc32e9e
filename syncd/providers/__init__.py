"""Provider adapters: one file per provider, all behind ``syncd.providers.base.Provider``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from syncd.config import TargetConfig
    from syncd.providers.base import CallbackReport, Provider

__all__ = ["callback_reader", "keeps_references", "make_provider"]


def make_provider(
    target: TargetConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    default_region: str | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Provider:
    """The adapter for ``target.provider``.

    Adapters are imported here, not at package import, so that ``syncd.providers.base`` stays
    importable on its own (the planner and the engine need only the interface).
    """
    if target.provider in ("unisender", "selzy"):
        # Selzy is Unisender's international brand: same API, another host (target.api_root).
        from syncd.providers.unisender import UnisenderProvider

        if sleep is None:
            return UnisenderProvider(target, transport=transport, default_region=default_region)
        return UnisenderProvider(
            target, transport=transport, default_region=default_region, sleep=sleep
        )
    if target.provider == "smsby":
        from syncd.providers.smsby import SmsbyProvider

        return SmsbyProvider(target, transport=transport, sleep=sleep)
    if target.provider == "netcore":
        from syncd.providers.netcore import NetcoreProvider

        return NetcoreProvider(target, transport=transport, sleep=sleep)
    if target.provider == "octopush":
        from syncd.providers.octopush import OctopushProvider

        return OctopushProvider(target, transport=transport, sleep=sleep)
    raise ValueError(f"no adapter for provider {target.provider!r}")


def callback_reader(target: TargetConfig) -> Callable[[bytes, str], CallbackReport] | None:
    """How to read the provider's callbacks for ``target`` (None: its provider sends none)."""
    if target.provider == "netcore" and target.public_url:
        from syncd.providers.netcore import NetcoreProvider

        return lambda body, content_type: NetcoreProvider.read_callback(
            body, content_type, target.key
        )
    return None


def keeps_references(provider: str) -> bool:
    """Whether the provider's adapter declares ``Capabilities.reference`` (for config checks)."""
    if provider in ("unisender", "selzy"):
        from syncd.providers.unisender import UnisenderProvider

        return UnisenderProvider.capabilities.reference
    return False  # the others document no export to read a reference back from
