"""``syncd hooks install|status|remove`` and the daemon's re-install, as library calls.

A fake provider stands in for the provider's hook API (one account shared by every provider
opened, as the real account is), so each command's answer per target, what it asks the provider
and that it closes every provider it opens are checked without a socket. The end-to-end run
through the CLI and the emulators is ``tests/system/test_provider_hooks.py``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from syncd.commands import hooks
from syncd.config import Config, TargetConfig, parse_config
from syncd.errors import ConfigError
from syncd.providers import PROVIDERS
from syncd.store import hooks as store_hooks
from syncd.store import open_engine

PUBLIC = "https://sync.example.com"
PASTE = "paste this URL into the provider's interface (Octopush: Callbacks)"


class Account:
    """The provider's side: the handlers set (URL -> status), and every call, in order."""

    def __init__(self) -> None:
        self.handlers: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_remove = False

    def provider(self, config: Config, target: TargetConfig) -> Any:
        return FakeProvider(self, target.name, "api" if target.provider == "unisender" else "")


class FakeProvider:
    def __init__(self, account: Account, target: str, kind: str) -> None:
        self.account, self.target = account, target
        self.capabilities = SimpleNamespace(hooks=kind)
        account.calls.append(("open", target))

    def set_hook(self, url: str, events: Any) -> dict[str, object]:
        self.account.calls.append(("set", url))
        self.account.handlers[url] = "active"
        return {"status": "active"}

    def list_hooks(self) -> list[dict[str, object]]:
        return [{"hook_url": u, "status": s} for u, s in self.account.handlers.items()]

    def remove_hook(self, url: str) -> None:
        self.account.calls.append(("remove", url))
        if self.account.fail_remove:
            raise RuntimeError("the provider answered 500")
        del self.account.handlers[url]

    def close(self) -> None:
        self.account.calls.append(("close", self.target))


def make_config(tmp_path: Path) -> Config:
    def target(name: str, provider: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "provider": provider,
            "list_id": "1",
            "api_key": "hook-commands-key",
            "base_url": "http://127.0.0.1:9/api",
            "hooks": True,
            **extra,
        }

    http = {"listen": "127.0.0.1:0", "public_url": PUBLIC}
    targets = [
        target("news", "unisender"),
        target("sms", "octopush", key="phone", api_login="ops@example.com"),
        {**target("quiet", "unisender"), "hooks": False},
    ]
    return parse_config(
        {"store": {"url": f"sqlite:///{tmp_path / 'syncd.db'}"}, "http": http, "target": targets},
        "test",
        providers=PROVIDERS,
    )


@pytest.fixture
def world(tmp_path: Path) -> tuple[Config, Engine, Account]:
    config = make_config(tmp_path)
    return config, open_engine(config.store.url), Account()


def states(found: list[hooks.HookState]) -> list[tuple[str, str, str]]:
    return [(s.target, s.state, s.detail) for s in found]


def test_install_status_reinstall_and_remove(world: tuple[Config, Engine, Account]) -> None:
    config, db, account = world
    installed = hooks.install(config, db, providers=account.provider)
    assert states(installed) == [("news", "active", ""), ("sms", "manual", PASTE)]
    news_url = installed[0].url
    token = store_hooks.known_token(db, "news")
    assert token is not None and news_url == f"{PUBLIC}/hooks/news/{token}"
    assert installed[1].url.startswith(f"{PUBLIC}/hooks/sms/")
    assert account.handlers == {news_url: "active"}

    shown = hooks.status(config, db, providers=account.provider)
    assert states(shown) == [("news", "active", ""), ("sms", "manual", "")]
    assert [s.url for s in shown] == [s.url for s in installed]

    # nothing stopped: the daemon's check sets nothing again
    assert hooks.reinstall_stopped(config, db, providers=account.provider) == []
    account.handlers[news_url] = "stopped"
    assert states(hooks.status(config, db, providers=account.provider))[0][1] == "stopped"
    again = hooks.reinstall_stopped(config, db, providers=account.provider)
    assert states(again) == [("news", "active", "was stopped")] and again[0].url == news_url
    assert account.handlers == {news_url: "active"}

    account.handlers.clear()  # removed at the provider by hand: status says so
    assert states(hooks.status(config, db, providers=account.provider))[0][1] == "missing"
    hooks.install(config, db, providers=account.provider)

    removed = hooks.remove(config, db, providers=account.provider)
    clear = "clear the URL in the provider's interface too"
    assert states(removed) == [("news", "removed", ""), ("sms", "removed", clear)]
    assert account.handlers == {} and ("remove", news_url) in account.calls
    assert store_hooks.known_token(db, "news") is None
    assert store_hooks.known_token(db, "sms") is None

    # no token any more: answered without opening a provider
    opened = len(account.calls)
    missing = "run syncd hooks install"
    after = hooks.status(config, db, providers=account.provider)
    assert states(after) == [("news", "missing", missing), ("sms", "missing", missing)]
    assert [s.url for s in after] == ["", ""]
    gone = "no hook was installed"
    again_removed = hooks.remove(config, db, providers=account.provider)
    assert states(again_removed) == [("news", "removed", gone), ("sms", "removed", gone)]
    assert hooks.reinstall_stopped(config, db, providers=account.provider) == []
    assert len(account.calls) == opened

    # every provider opened was closed, each before the next was opened
    trail = [c for c in account.calls if c[0] in ("open", "close")]
    assert trail == [c for t in trail[::2] for c in (t, ("close", t[1]))]


def test_a_failed_removal_keeps_the_token_and_closes_the_provider(
    world: tuple[Config, Engine, Account],
) -> None:
    config, db, account = world
    hooks.install(config, db, "news", providers=account.provider)
    account.fail_remove = True
    with pytest.raises(RuntimeError):
        hooks.remove(config, db, "news", providers=account.provider)
    assert store_hooks.known_token(db, "news") is not None
    assert account.calls[-1] == ("close", "news")


def test_a_target_without_hooks_is_a_configuration_error(
    world: tuple[Config, Engine, Account],
) -> None:
    config, db, account = world
    for command in (hooks.install, hooks.status, hooks.remove):
        with pytest.raises(ConfigError, match="hooks = true is not set"):
            command(config, db, "quiet", providers=account.provider)
    assert account.calls == []


def test_without_a_public_url_the_daemon_reinstalls_nothing(
    world: tuple[Config, Engine, Account],
) -> None:
    config, db, account = world
    hooks.install(config, db, providers=account.provider)
    account.handlers = dict.fromkeys(account.handlers, "stopped")
    # the configuration refuses hooks without a public URL; the daemon's check does not rely on it
    bare = config.model_copy(update={"http": config.http.model_copy(update={"public_url": None})})
    opened = len(account.calls)
    assert hooks.reinstall_stopped(bare, db, providers=account.provider) == []
    assert len(account.calls) == opened
