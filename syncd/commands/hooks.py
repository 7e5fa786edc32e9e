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


def install(
    config: Config,
    engine: Engine,
    name: str | None = None,
    providers: ProviderFactory = build_provider,
) -> list[HookState]:
    states = []
    for target in hooked_targets(config, name):
        url = _url(config, engine, target)
        provider = providers(config, target)
        try:
            if provider.capabilities.hooks != "api":
                paste = "paste this URL into the provider's interface (Octopush: Callbacks)"
                states.append(HookState(target.name, url, "manual", paste))
                continue
            answer = provider.set_hook(url, target.hook_events)
            states.append(HookState(target.name, url, str(answer.get("status") or "active")))
            log.info("hook installed", extra={"target": target.name})
        finally:
            provider.close()
    return states


def status(
    config: Config,
    engine: Engine,
    name: str | None = None,
    providers: ProviderFactory = build_provider,
) -> list[HookState]:
    states = []
    for target in hooked_targets(config, name):
        token = store_hooks.known_token(engine, target.name)
        if token is None:
            states.append(HookState(target.name, "", "missing", "run syncd hooks install"))
            continue
        assert config.http.public_url is not None
        url = hook_url(config.http.public_url, target.name, token)
        provider = providers(config, target)
        try:
            if provider.capabilities.hooks != "api":
                states.append(HookState(target.name, url, "manual"))
                continue
            found = [h for h in provider.list_hooks() if h.get("hook_url") == url]
            state = str(found[0].get("status") or "active") if found else "missing"
            states.append(HookState(target.name, url, state))
        finally:
            provider.close()
    return states


def remove(
    config: Config,
    engine: Engine,
    name: str | None = None,
    providers: ProviderFactory = build_provider,
) -> list[HookState]:
    states = []
    for target in hooked_targets(config, name):
        token = store_hooks.known_token(engine, target.name)
        if token is None:
            states.append(HookState(target.name, "", "removed", "no hook was installed"))
            continue
        assert config.http.public_url is not None
        url = hook_url(config.http.public_url, target.name, token)
        provider = providers(config, target)
        try:
            if provider.capabilities.hooks == "api":
                present = any(h.get("hook_url") == url for h in provider.list_hooks())
                if present:
                    provider.remove_hook(url)
            detail = (
                ""
                if provider.capabilities.hooks == "api"
                else ("clear the URL in the provider's interface too")
            )
        finally:
            provider.close()
        store_hooks.forget_token(engine, target.name)
        states.append(HookState(target.name, url, "removed", detail))
    return states


def reinstall_stopped(
    config: Config, engine: Engine, providers: ProviderFactory = build_provider
) -> list[HookState]:
    """Set again each installed hook the provider shows as ``stopped``; returns those."""
    again = []
    for target in config.target:
        if not target.hooks or config.http.public_url is None:
            continue
        token = store_hooks.known_token(engine, target.name)
        if token is None:
            continue  # never installed: installing is the operator's call
        url = hook_url(config.http.public_url, target.name, token)
        provider = providers(config, target)
        try:
            if provider.capabilities.hooks != "api":
                continue
            shown = [h for h in provider.list_hooks() if h.get("hook_url") == url]
            if shown and shown[0].get("status") == "stopped":
                provider.set_hook(url, target.hook_events)
                again.append(HookState(target.name, url, "active", "was stopped"))
        finally:
            provider.close()
    return again
