"""What syncd knows of one provider, in one value: :class:`ProviderSpec`.

Each provider file ends with its ``SPEC = ProviderSpec(...)``; the registry
(``syncd.providers.registry``) lists them by name. Everything that differs between providers
outside their adapter — the default API root, the capabilities configuration checks, the
provider's own ``[[target]]`` keys, how its adapter and emulator are built, its lines in the
starter configuration, how its callbacks read — is a field here, so no other module asks for a
provider by its name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import Field

from syncd.config import ProviderSettings, TargetConfig
from syncd.providers.base import CallbackReport, Capabilities, Provider

if TYPE_CHECKING:
    import httpx

__all__ = [
    "PLACEHOLDER",
    "AdapterFactory",
    "CallbackReader",
    "CreateMissingList",
    "MaxRowsPerCall",
    "NoSettings",
    "ProviderSpec",
    "Starter",
    "StarterLine",
]

#: Reads one callback body (bytes, content type) into what it says of the call.
CallbackReader = Callable[[bytes, str], CallbackReport]

#: What the starter configuration writes where only the user knows the value.
PLACEHOLDER = "CHANGE-ME"

#: One line of the starter configuration: ``(setting, comment)``, or a line as it is.
StarterLine = tuple[str, str] | str


class AdapterFactory(Protocol):
    """Builds a provider's adapter for one target (``syncd.providers.make_provider`` calls it).

    The built-in adapters' classes have this shape themselves (``syncd.providers.http.HttpProvider``
    takes these keywords), so a spec names its adapter class here.
    """

    def __call__(
        self,
        target: TargetConfig,
        *,
        transport: httpx.BaseTransport | None,
        default_region: str | None,
        sleep: Callable[[float], None] | None,
    ) -> Provider: ...


#: ``create_missing_list``: a provider whose adapter can create the remote list it is given.
CreateMissingList = Annotated[
    bool, Field(description="sms.by / Octopush: create the remote list when it does not exist.")
]

#: ``max_rows_per_call``: a provider that documents no limit of rows per write call.
MaxRowsPerCall = Annotated[
    int | None,
    Field(
        gt=0,
        description="Rows per write call where the provider documents no limit (Octopush: 500); "
        "a batch the provider refuses as too large is split.",
    ),
]


class NoSettings(ProviderSettings):
    """The settings of a provider that has no keys of its own."""


@dataclass(frozen=True)
class Starter:
    """A provider's part of the starter configuration ``syncd init --provider NAME`` writes."""

    key: str  # "email" or "phone": what the starter target matches contacts on
    env: str  # the environment variable holding the API key
    key_note: str  # what the key is, e.g. "the sms.by API token"
    list_note: str  # what list_id is, e.g. "the list's number (listid) at Netcore"
    lines: tuple[StarterLine, ...] = ()  # the provider's own keys, after api_key


@dataclass(frozen=True)
class ProviderSpec:
    """One provider: its name in ``provider = "..."`` and everything syncd builds for it."""

    name: str
    title: str  # how people write it: "sms.by", "Netcore Smartech"
    default_url: str  # the API root; ``{lang}`` is replaced by the target's ``lang``
    capabilities: Capabilities  # the adapter's, with the provider's settings at their defaults
    settings: type[ProviderSettings]  # the provider's own keys of a [[target]] table
    adapter: AdapterFactory
    emulator: str  # "module:function" building its emulator (imported only when asked for)
    starter: Starter
    # how to read the provider's callbacks for a target (None: it sends none for it)
    callback_reader: Callable[[TargetConfig], CallbackReader | None] | None = None
    # ``prepare(create_missing=False)`` only reads, so ``check-config --online`` may try it
    read_only_prepare: bool = False

    def settings_of(self, target: TargetConfig) -> ProviderSettings:
        """``target``'s own keys for this provider, validated by its settings model."""
        return self.settings.of(target)

    def bind(self, target: TargetConfig) -> TargetConfig:
        """``target`` knowing this provider's default API root (``target.api_root`` works)."""
        return target.bind_default_url(self.default_url)

    def api_root(self, target: TargetConfig) -> str:
        return self.bind(target).api_root

    def load_emulator(self) -> Callable[..., Any]:
        """The function named by ``emulator``, imported now."""
        module, _, function = self.emulator.partition(":")
        found: Callable[..., Any] = getattr(importlib.import_module(module), function)
        return found
