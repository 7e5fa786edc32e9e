"""``syncd hooks install|status|remove``, and the daemon's re-install of a stopped hook.

A target with ``hooks = true`` is notified at ``{[http] public_url}/hooks/{target}/{token}``
(``hook_routes``); the token is the target's, kept in the store. For a provider with a hook API
(Unisender/Selzy ``setHook``) ``install`` sets the handler with the target's ``hook_events``;
calling it again with the same URL replaces the handler and re-activates a ``stopped`` one.
Octopush has no such API: its STOP callback URL is pasted into its interface, so ``install``
only shows it. ``remove`` removes the handler and forgets the token, so the old URL answers 403
from then on (for Octopush, clear the URL in its interface too).

The provider stops a handler after 24 hours of failed deliveries (unisender-selzy.md, "Event
notifications"): ``reinstall_stopped`` finds such handlers and sets them again, which the daemon
does every ``[daemon] hook_check_interval`` seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from sqlalchemy.engine import Engine

from syncd.commands.cycles import build_provider
from syncd.commands.hook_routes import hook_url
from syncd.config import Config, TargetConfig
from syncd.errors import ConfigError
from syncd.providers.base import Provider
from syncd.store import hooks as store_hooks

log = logging.getLogger("syncd.hooks")

ProviderFactory = Callable[[Config, TargetConfig], Provider]


@dataclass
class HookState:
    target: str
    url: str
    # active | stopped | disabled (the provider's word), missing (not set at the provider),
    # removed, manual (a URL pasted into the provider's interface), or error
    state: str
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def hooked_targets(config: Config, name: str | None = None) -> list[TargetConfig]:
    chosen = [t for t in config.targets(name) if t.hooks]
    if not chosen:
        where = f"target {name}" if name else "no target"
        raise ConfigError("command line", [f"{where}: hooks = true is not set"])
    return chosen


def _url(config: Config, engine: Engine, target: TargetConfig) -> str:
    assert config.http.public_url is not None  # the configuration requires it with hooks
    return hook_url(config.http.public_url, target.name, store_hooks.token_for(engine, target.name))


def _shown(provider: Provider, url: str) -> dict[str, object] | None:
    """The handler the provider shows for ``url`` (the first, as it lists them), if any."""
    return next((h for h in provider.list_hooks() if h.get("hook_url") == url), None)


Step = Callable[[TargetConfig, str, Provider], HookState | None]


def _each_hook(
    config: Config,
    engine: Engine,
    targets: list[TargetConfig],
    providers: ProviderFactory,
    step: Step,
    *,
    unknown: Callable[[TargetConfig], HookState | None] | None = None,
    after: Callable[[TargetConfig], None] | None = None,
) -> list[HookState]:
    """Run ``step`` for each target with its hook URL and its provider open; the states it gives.

    The one loop behind install, status, remove and the daemon's re-install. ``unknown`` answers
    for a target whose token was never made, without opening its provider (``None`` from it
    skips the target); without ``unknown`` the token is made (install). The provider is closed
    whatever ``step`` does; ``after`` runs once it is closed, so a token is forgotten only when
    the provider's side is done.
    """
    states = []
    for target in targets:
        if unknown is None:
            url = _url(config, engine, target)
        else:
            token = store_hooks.known_token(engine, target.name)
            if token is None:
                answer = unknown(target)
                if answer is not None:
                    states.append(answer)
                continue
            assert config.http.public_url is not None  # the configuration requires it with hooks
            url = hook_url(config.http.public_url, target.name, token)
        provider = providers(config, target)
        try:
            state = step(target, url, provider)
        finally:
            provider.close()
        if after is not None:
            after(target)
        if state is not None:
            states.append(state)
    return states


def install(
    config: Config,
    engine: Engine,
    name: str | None = None,
    providers: ProviderFactory = build_provider,
) -> list[HookState]:
    def step(target: TargetConfig, url: str, provider: Provider) -> HookState:
        if provider.capabilities.hooks != "api":
            paste = "paste this URL into the provider's interface (Octopush: Callbacks)"
            return HookState(target.name, url, "manual", paste)
        answer = provider.set_hook(url, target.hook_events)
        log.info("hook installed", extra={"target": target.name})
        return HookState(target.name, url, str(answer.get("status") or "active"))

    return _each_hook(config, engine, hooked_targets(config, name), providers, step)


def status(
    config: Config,
    engine: Engine,
    name: str | None = None,
    providers: ProviderFactory = build_provider,
) -> list[HookState]:
    def step(target: TargetConfig, url: str, provider: Provider) -> HookState:
        if provider.capabilities.hooks != "api":
            return HookState(target.name, url, "manual")
        found = _shown(provider, url)
        state = "missing" if found is None else str(found.get("status") or "active")
        return HookState(target.name, url, state)

    def unknown(target: TargetConfig) -> HookState:
        return HookState(target.name, "", "missing", "run syncd hooks install")

    targets = hooked_targets(config, name)
    return _each_hook(config, engine, targets, providers, step, unknown=unknown)


def remove(
    config: Config,
    engine: Engine,
    name: str | None = None,
    providers: ProviderFactory = build_provider,
) -> list[HookState]:
    def step(target: TargetConfig, url: str, provider: Provider) -> HookState:
        if provider.capabilities.hooks != "api":
            clear = "clear the URL in the provider's interface too"
            return HookState(target.name, url, "removed", clear)
        if _shown(provider, url) is not None:
            provider.remove_hook(url)
        return HookState(target.name, url, "removed")

    def unknown(target: TargetConfig) -> HookState:
        return HookState(target.name, "", "removed", "no hook was installed")

    def forget(target: TargetConfig) -> None:
        store_hooks.forget_token(engine, target.name)

    targets = hooked_targets(config, name)
    return _each_hook(config, engine, targets, providers, step, unknown=unknown, after=forget)


def reinstall_stopped(
    config: Config, engine: Engine, providers: ProviderFactory = build_provider
) -> list[HookState]:
    """Set again each installed hook the provider shows as ``stopped``; returns those."""

    def step(target: TargetConfig, url: str, provider: Provider) -> HookState | None:
        if provider.capabilities.hooks != "api":
            return None
        shown = _shown(provider, url)
        if shown is None or shown.get("status") != "stopped":
            return None
        provider.set_hook(url, target.hook_events)
        return HookState(target.name, url, "active", "was stopped")

    def never_installed(target: TargetConfig) -> None:
        return None  # installing is the operator's call

    if config.http.public_url is None:
        return []
    targets = [t for t in config.target if t.hooks]
    return _each_hook(config, engine, targets, providers, step, unknown=never_installed)
