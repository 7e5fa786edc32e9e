"""`syncd init` writes a valid starter; `syncd check-config` checks files and, online, targets."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import API_KEY, World

from syncd.cli import main
from syncd.commands.check import NOT_CHECKED, CheckReport, check_config
from syncd.commands.starter import PROVIDER_NAMES, STARTERS, write_starter
from syncd.config import Config, TargetConfig, load_config, parse_config
from syncd.emulators.kit.server import EmulatorServer
from syncd.errors import StarterExists
from syncd.providers import PROVIDERS, make_provider
from syncd.providers.base import Provider

# -- init -------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_init_writes_a_valid_starter_and_the_folders(
    provider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    created = write_starter("syncd.toml", provider, force=False)
    names = ["syncd.toml", "inbox", "inbox/processed", "inbox/failed", "outbox"]
    assert created == [Path(n) for n in names]
    for folder in names[1:]:
        assert (tmp_path / folder).is_dir() and mode(tmp_path / folder) == 0o700
    assert mode(tmp_path / "syncd.toml") == 0o600

    text = (tmp_path / "syncd.toml").read_text()
    assert text.startswith("# syncd configuration")
    env = {STARTERS[provider].env: "the-key"}
    # every CHANGE-ME is refused by name until it is replaced
    refused = check_config("syncd.toml", env=env).problems
    assert "target[0].list_id: still reads CHANGE-ME: replace it with the real value" in refused
    assert all("CHANGE-ME" in p for p in refused)
    filled = text.replace("CHANGE-ME", "me@example.com" if provider == "octopush" else "7")
    config = parse_config(tomllib.loads(filled), "syncd.toml", env, providers=PROVIDERS)
    assert config.inbox.path == "./inbox" and config.outbox.path == "./outbox"
    (target,) = config.target
    assert target.provider == provider
    assert target.api_key.get_secret_value() == "the-key"
    assert ((target.model_extra or {}).get("api_login") is not None) == (provider == "octopush")
    # without the variable the starter names it instead of running with an empty key
    (tmp_path / "syncd.toml").write_text(filled)
    assert check_config("syncd.toml", env={}).problems == [
        f"target[0].api_key: environment variable {STARTERS[provider].env} is not set"
    ]


def test_init_elsewhere_writes_paths_read_from_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "syncd"
    write_starter(folder / "syncd.toml", "selzy", list_id="5")
    text = (folder / "syncd.toml").read_text()
    assert 'path = "./inbox"' in text and 'list_id = "5"' in text
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SELZY_API_KEY", "k")
    config = load_config(folder / "syncd.toml", providers=PROVIDERS)
    assert config.inbox.path == str(folder / "inbox")
    assert config.store.url == f"sqlite:///{folder / 'syncd.db'}"
    assert (folder / "inbox" / "processed").is_dir()


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text("# mine\n")
    with pytest.raises(StarterExists, match=r"already exists.*--force"):
        write_starter(path, "unisender")
    assert path.read_text() == "# mine\n"
    created = write_starter(path, "smsby", force=True)
    assert created[0] == path and 'provider = "smsby"' in path.read_text()
    # folders that already exist are left alone and not reported
    assert write_starter(path, "smsby", force=True) == [path]


def test_init_command(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "syncd.toml"
    result = runner.invoke(main, ["init", "--provider", "octopush", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert f"created {path}" in result.output and "OCTOPUSH_API_KEY" in result.output
    again = runner.invoke(main, ["init", "--config", str(path)])
    assert again.exit_code == 1
    assert "already exists" in again.output
    assert 'provider = "octopush"' in path.read_text()


# -- check-config offline ---------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
[[target]]
name = "news"
provider = "unisender"
list_id = "1"
api_key = "${KEY}"
"""


def test_a_valid_file_checks_out(tmp_path: Path) -> None:
    report = check_config(write(tmp_path / "c.toml", GOOD), env={"KEY": "k"})
    assert report.problems == [] and report.exit_code == 0 and report.ok
    assert report.lines() == [
        f"{tmp_path / 'c.toml'}: valid (1 target); not checked online (use --online)"
    ]


def test_every_problem_is_named_with_file_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        """
[store]
url = 5
colour = "red"

[[target]]
provider = "mailchimp"
list_id = "1"
api_key = "k"

[[target]]
name = "sms"
provider = "octopush"
list_id = "1"
api_key = "k"
api_key_file = "/nonexistent/key"
""",
    )
    report = check_config(path, env={})
    assert report.exit_code == 2 and report.config is None
    keys = [p.split(": ", 1)[0] for p in report.problems]
    assert keys == [
        "store.colour",
        "store.url",
        "target[0].name",
        "target[0].provider",
        "target[1]",  # api_key and api_key_file both given (the loader stops there) ...
        "target[1].api_login",  # ... so the schema's finding is added: octopush needs a login
    ]
    assert report.problems[-1].endswith("(schema)")
    assert all(line.startswith(f"{path}: ") for line in report.lines())


def test_a_missing_or_broken_file(tmp_path: Path) -> None:
    missing = check_config(tmp_path / "nope.toml")
    assert missing.exit_code == 2 and "file not found" in missing.problems[0]
    broken = check_config(write(tmp_path / "b.toml", "[store\n"))
    assert broken.exit_code == 2 and "not valid TOML" in broken.problems[0]


def test_schema_messages_never_show_a_value(tmp_path: Path) -> None:
    from syncd.commands.check import schema_problems

    problems = schema_problems({"target": [{"name": "x", "api_key": 98765432}]}, {})
    assert ("target[0].api_key", "value is not of type 'string'") in problems
    assert "98765432" not in repr(problems)


def test_check_config_command_offline(tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(
        main, ["check-config", "--config", str(write(tmp_path / "g.toml", GOOD))], env={"KEY": "k"}
    )
    assert good.exit_code == 0, good.output
    assert "valid (1 target)" in good.output
    bad = runner.invoke(main, ["check-config", "--config", str(tmp_path / "g.toml")], env={})
    assert bad.exit_code == 2
    assert "target[0].api_key: environment variable KEY is not set" in bad.output


def test_a_listener_beyond_loopback_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    runner = CliRunner()
    for listen, warned in [
        ("0.0.0.0:9187", True),
        ("[::]:9187", True),
        ("syncd.example.com:9187", True),
        ("127.0.0.1:9187", False),
        ("[::1]:9187", False),
        ("localhost:9187", False),
        ("off", False),
    ]:
        path = write(tmp_path / "c.toml", f'[http]\nlisten = "{listen}"\n' + GOOD)
        text = runner.invoke(main, ["check-config", "--config", str(path)], env={"KEY": "k"})
        as_json = runner.invoke(
            main, ["check-config", "--config", str(path), "--json"], env={"KEY": "k"}
        )
        assert (text.exit_code, as_json.exit_code) == (0, 0), listen
        warnings = json.loads(as_json.output)["warnings"]
        assert len(warnings) == int(warned), listen
        assert ("warning: http.listen:" in text.output) is warned, listen
        if warned:
            assert warnings[0].startswith("http.listen: ") and "/metrics" in warnings[0]
            assert f"{path}: warning: http.listen: " in text.output


# -- check-config online ----------------------------------------------------------------------


def config_file(world: World, path: Path, **target: Any) -> Path:
    """The world's target as a TOML file (key from $KEY), with overrides."""
    values = {
        "name": "news",
        "provider": "unisender",
        "list_id": str(world.list_id),
        "api_key": "${KEY}",
        "base_url": "http://127.0.0.1:9/en/api",
        "fields": {"Name": "name"},
        **target,
    }
    lines = ["[[target]]"]
    for key, value in values.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return write(path, "\n".join(lines) + "\n")


def online(world: World, path: Path, key: str = API_KEY) -> CheckReport:
    return check_config(path, online=True, providers=world.provider, env={"KEY": key})


def test_online_everything_checks_out(world: World, tmp_path: Path) -> None:
    report = online(world, config_file(world, tmp_path / "c.toml"))
    (t,) = report.targets
    assert (t.reachable, t.key_accepted, t.list_exists) == (True, True, True)
    assert report.exit_code == 0
    assert report.lines()[1] == (
        f"target news (unisender): reachable: yes, key accepted: yes, list {world.list_id} "
        "exists: yes"
    )
    # read calls only, one of each
    assert dict(world.emu.calls) == {"getLists": 1, "getFields": 1}


def test_online_a_wrong_key(world: World, tmp_path: Path) -> None:
    report = online(world, config_file(world, tmp_path / "c.toml"), key="wrong-key")
    (t,) = report.targets
    assert (t.reachable, t.key_accepted, t.list_exists) == (True, False, None)
    assert report.exit_code == 2
    text = "\n".join(report.lines())
    assert "key accepted: NO" in text and "API key was refused" in text
    assert "wrong-key" not in text


def test_online_a_missing_list(world: World, tmp_path: Path) -> None:
    report = online(world, config_file(world, tmp_path / "c.toml", list_id="999"))
    (t,) = report.targets
    assert (t.reachable, t.key_accepted, t.list_exists) == (True, True, False)
    assert report.exit_code == 2
    assert "list 999 exists: NO" in "\n".join(report.lines())


def test_online_unreachable(world: World, tmp_path: Path) -> None:
    calls = 0

    def down(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    def factory(config: Config, target: TargetConfig) -> Provider:
        return make_provider(target, transport=httpx.MockTransport(down), sleep=lambda _s: None)

    path = config_file(world, tmp_path / "c.toml")
    report = check_config(path, online=True, providers=factory, env={"KEY": API_KEY})
    (t,) = report.targets
    assert (t.reachable, t.key_accepted, t.list_exists) == (False, None, None)
    assert report.exit_code == 3
    assert calls == 1  # no retries: one cheap call


def test_online_missing_fields(world: World, tmp_path: Path) -> None:
    fields = {"Name": "name", "Shoe": "shoe"}
    creating = online(world, config_file(world, tmp_path / "a.toml", fields=fields))
    assert creating.exit_code == 0
    assert "the first cycle creates them" in creating.targets[0].notes[0]
    strict = online(
        world,
        config_file(world, tmp_path / "b.toml", fields=fields, create_missing_fields=False),
    )
    assert strict.exit_code == 2 and "Shoe" in strict.targets[0].problems[0]
    assert world.emu.calls["createField"] == 0  # the check never writes


def test_online_skips_providers_without_a_read_call(world: World, tmp_path: Path) -> None:
    path = config_file(world, tmp_path / "c.toml", provider="smsby")
    report = online(world, path)
    (t,) = report.targets
    assert not t.checked and t.notes == [NOT_CHECKED] and report.exit_code == 0
    assert report.lines()[1] == f"target news (smsby): {NOT_CHECKED}"
    assert world.emu.calls.total() == 0


def test_online_is_skipped_when_the_file_is_invalid(world: World, tmp_path: Path) -> None:
    report = online(world, config_file(world, tmp_path / "c.toml", lang="EN"))
    assert report.exit_code == 2 and report.targets == []
    assert world.emu.calls.total() == 0


def test_check_config_command_online_over_loopback(world: World, tmp_path: Path) -> None:
    runner = CliRunner()
    with EmulatorServer(world.emu.handle) as server:
        good = config_file(world, tmp_path / "good.toml", base_url=f"{server.url}/en/api")
        ok = runner.invoke(
            main, ["check-config", "--config", str(good), "--online"], env={"KEY": API_KEY}
        )
        refused = runner.invoke(
            main, ["check-config", "--config", str(good), "--online", "--json"], env={"KEY": "nope"}
        )
    assert ok.exit_code == 0, ok.output
    assert "reachable: yes, key accepted: yes" in ok.output
    assert refused.exit_code == 2
    data = json.loads(refused.output)
    assert data["ok"] is False
    assert data["targets"][0]["key_accepted"] is False
    assert "key" in data["targets"][0]["problems"][0]


def test_the_starter_and_the_loader_agree_on_the_placeholder() -> None:
    from syncd import config
    from syncd.providers import spec

    assert spec.PLACEHOLDER == config.PLACEHOLDER == "CHANGE-ME"


def test_targets_on_one_account_are_each_others_peers() -> None:
    """Same provider, API root and key: one account, whose contacts both lists share."""

    def target(name: str, key: str = "k1", url: str = "http://127.0.0.1:9/en/api") -> dict:
        return {"name": name, "provider": "unisender", "list_id": name, "api_key": key,
                "base_url": url}  # fmt: skip

    config = parse_config(
        {"target": [target("a"), target("b"), target("c", key="k2"),
                    target("d", url="http://127.0.0.1:10/en/api")]},
        "test",
        providers=PROVIDERS,
    )  # fmt: skip
    peers = {t.name: config.account_peers(t) for t in config.targets()}
    assert peers == {"a": ("b",), "b": ("a",), "c": (), "d": ()}
