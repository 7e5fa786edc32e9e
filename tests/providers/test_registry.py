"""The provider table: built-in specs by name, third-party ones from the ``syncd.providers``
entry points, each loaded when looked up; and no module outside the providers (and their
emulators) asks for a provider by its name.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.config import TargetConfig, parse_config
from syncd.errors import ConfigError
from syncd.providers import PROVIDERS, callback_reader, make_provider
from syncd.providers.base import Provider
from syncd.providers.registry import BUILTIN, ProviderTable
from syncd.providers.spec import ProviderSpec

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "syncd"

ACME = '''
import dataclasses

from syncd.config import ProviderSettings
from syncd.providers.base import Capabilities, Provider
from syncd.providers.spec import ProviderSpec, Starter


class AcmeSettings(ProviderSettings):
    """Acme's own keys."""

    shard: int = 1


class AcmeProvider(Provider):
    name = "acme"
    capabilities = Capabilities(rows_per_call=10, fields_per_call=5, export=False)

    def __init__(self, target, *, transport=None, default_region=None, sleep=None):
        super().__init__()
        self.target = target
        self.shard = AcmeSettings.of(target).shard

    def prepare(self, fields, *, create_missing):
        pass

    def export(self):
        return iter(())

    def push(self, call):
        return []

    def method_name(self, call):
        return "acme.write"


SPEC = ProviderSpec(
    name="acme",
    title="Acme Mail",
    default_url="https://api.acme.example/{lang}",
    capabilities=AcmeProvider.capabilities,
    settings=AcmeSettings,
    adapter=AcmeProvider,
    emulator="acme_syncd:make_emulator",
    starter=Starter("email", "ACME_API_KEY", "the Acme API key", "the list's id at Acme"),
)
WRONG_NAME = dataclasses.replace(SPEC, name="other")
'''

ENTRY_POINTS = """\
[syncd.providers]
acme = acme_syncd:SPEC
smsby = acme_syncd:SPEC
misnamed = acme_syncd:WRONG_NAME
"""


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A third-party package on sys.path whose entry points register the provider ``acme``."""
    (tmp_path / "acme_syncd.py").write_text(textwrap.dedent(ACME), encoding="utf-8")
    info = tmp_path / "acme_syncd-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-syncd\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("acme_syncd", None)


def _target(**values: Any) -> dict[str, Any]:
    return {"name": "t", "provider": "acme", "list_id": "1", "api_key": "k", **values}


# -- built-ins --------------------------------------------------------------------------------


def test_built_in_names_are_known_without_importing_an_adapter() -> None:
    assert list(BUILTIN) == ["unisender", "selzy", "smsby", "octopush", "netcore"]
    assert list(PROVIDERS)[: len(BUILTIN)] == list(BUILTIN)
    code = (
        "import sys; from syncd.providers import PROVIDERS; names = list(PROVIDERS); "
        "print(any(m.startswith('syncd.providers.unisender') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", list(BUILTIN))
def test_every_built_in_spec_carries_its_name_and_what_callers_need(name: str) -> None:
    spec = PROVIDERS[name]
    assert isinstance(spec, ProviderSpec) and spec.name == name
    assert spec.default_url.startswith("https://")
    assert PROVIDERS[name] is spec  # loaded once
    module, _, function = spec.emulator.partition(":")
    assert module.startswith("syncd.emulators.") and function == "make_emulator"
    assert importlib.util.find_spec(module) is not None
    assert spec.starter.key in ("email", "phone") and spec.starter.env.endswith("_API_KEY")


def test_selzy_is_unisenders_adapter_on_its_own_host() -> None:
    selzy, unisender = PROVIDERS["selzy"], PROVIDERS["unisender"]
    assert selzy.adapter is unisender.adapter and selzy.default_url != unisender.default_url


def test_an_unknown_name_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown provider 'mailchimp' .*unisender, selzy"):
        PROVIDERS["mailchimp"]
    with pytest.raises(ConfigError) as caught:
        parse_config({"target": [_target(provider="mailchimp")]}, "x", {}, providers=PROVIDERS)
    (problem,) = caught.value.problems
    assert problem.startswith("target[0].provider: ") and "known: unisender, selzy" in problem


def test_a_provider_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        PROVIDERS["acme"] = PROVIDERS["smsby"]  # type: ignore[index]


def test_a_targets_own_keys_are_checked_by_its_providers_settings() -> None:
    data = {
        "target": [
            _target(provider="smsby", key="phone", create_missing_list="maybe"),
            _target(name="o", provider="octopush", key="phone", api_login="me", xyz=1),
            _target(name="u", provider="unisender", public_url="https://x.example"),
        ]
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "x", {}, providers=PROVIDERS)
    assert [p.split(": ")[0] for p in caught.value.problems] == [
        "target[0].create_missing_list",
        "target[1].xyz",
        "target[2].public_url",  # a key of another provider
    ]
    assert caught.value.problems[1] == "target[1].xyz: unknown key"


def test_the_schema_knows_each_providers_own_keys_and_no_others() -> None:
    pytest.importorskip("jsonschema")
    from syncd.commands.check import schema_problems

    smsby = _target(provider="smsby", key="phone", create_missing_list=True, xyz=1)
    assert schema_problems({"target": [smsby]}, {}) == [("target[0].xyz", "unknown key")]
    unisender = {**smsby, "provider": "unisender"}
    assert schema_problems({"target": [unisender]}, {}) == [
        ("target[0].create_missing_list", "unknown key; did you mean 'create_missing_fields'?"),
        ("target[0].xyz", "unknown key"),
    ]


def test_a_target_built_directly_gets_its_default_root_from_the_table() -> None:
    target = TargetConfig(name="t", provider="netcore", list_id="1", api_key="k")
    with pytest.raises(ValueError, match="default API root"):
        _ = target.api_root
    assert PROVIDERS["netcore"].api_root(target) == "https://api.netcoresmartech.com/apiv2"
    provider = make_provider(target)
    assert provider.target.api_root == "https://api.netcoresmartech.com/apiv2"
    provider.close()
    assert callback_reader(target) is None
    with_url = target.model_copy(update={"public_url": "https://syncd.example.com"})
    assert callback_reader(with_url) is not None


# -- third-party providers --------------------------------------------------------------------


@pytest.mark.usefixtures("acme")
def test_an_entry_point_registers_a_provider_loaded_when_looked_up() -> None:
    assert "acme" in PROVIDERS and "acme" in list(PROVIDERS)
    assert "acme_syncd" not in sys.modules  # named, not imported
    spec = PROVIDERS["acme"]
    assert spec.name == "acme" and spec.title == "Acme Mail"
    provider = make_provider(TargetConfig(**_target(shard=3)))
    assert isinstance(provider, Provider) and provider.name == "acme"
    assert provider.shard == 3  # type: ignore[attr-defined]
    assert provider.target.api_root == "https://api.acme.example/en"


@pytest.mark.usefixtures("acme")
def test_a_config_naming_a_third_party_provider_parses_and_checks_its_keys() -> None:
    config = parse_config({"target": [_target(shard=2)]}, "x", {}, providers=PROVIDERS)
    (target,) = config.target
    assert target.provider == "acme" and target.api_root == "https://api.acme.example/en"
    with pytest.raises(ConfigError) as caught:
        parse_config({"target": [_target(shard="many", colour=1)]}, "x", {}, providers=PROVIDERS)
    assert [p.split(": ")[0] for p in caught.value.problems] == [
        "target[0].colour",
        "target[0].shard",
    ]


@pytest.mark.usefixtures("acme")
def test_a_built_in_name_wins_over_an_entry_point_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = ProviderTable(BUILTIN)
    with caplog.at_level(logging.WARNING, logger="syncd.providers.registry"):
        assert table["smsby"] is PROVIDERS["smsby"]
        assert list(table).count("smsby") == 1
    assert "'smsby' is a built-in provider" in caplog.text


@pytest.mark.usefixtures("acme")
def test_an_entry_point_must_name_a_spec_of_its_own_name() -> None:
    with pytest.raises(ValueError, match="acme_syncd:WRONG_NAME is the spec of 'other'"):
        PROVIDERS["misnamed"]
    with pytest.raises(ConfigError) as caught:  # a problem of the config that names it
        parse_config({"target": [_target(provider="misnamed")]}, "x", {}, providers=PROVIDERS)
    (problem,) = caught.value.problems
    assert problem.startswith("target[0]: ") and "is the spec of 'other'" in problem


def test_check_config_accepts_a_third_party_provider(acme: Path) -> None:
    config = acme / "syncd.toml"
    config.write_text(
        '[[target]]\nname = "t"\nprovider = "acme"\nlist_id = "1"\napi_key = "k"\nshard = 4\n'
    )
    env = _env(acme)
    ok = subprocess.run(
        [sys.executable, "-m", "syncd", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "valid (1 target)" in ok.stdout
    config.write_text(config.read_text() + "colour = 1\n")
    bad = subprocess.run(
        [sys.executable, "-m", "syncd", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "target[0].colour" in bad.stdout + bad.stderr


def _env(*first: Path) -> dict[str, str]:
    path = [*map(str, first), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


# -- nobody else asks for a provider by name --------------------------------------------------


def _names_in(node: ast.AST) -> set[str]:
    """The built-in provider names among the string constants of ``node`` (one level of
    tuple/list/set)."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return {
        item.value
        for item in items
        if isinstance(item, ast.Constant) and isinstance(item.value, str) and item.value in BUILTIN
    }


def _branches_on_a_name(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                for name in _names_in(operand):
                    yield node.lineno, name
        elif isinstance(node, ast.MatchValue):
            for name in _names_in(node.value):
                yield node.lineno, name


def test_no_module_outside_the_providers_branches_on_a_provider_name() -> None:
    """A comparison, ``in`` test or ``match`` case against a built-in provider's name belongs
    in that provider's own files (``syncd/providers/``, ``syncd/emulators/``) or nowhere."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("providers", "emulators"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += [f"syncd/{relative}:{line}: {name!r}" for line, name in _branches_on_a_name(tree)]
    assert found == []


def test_the_scan_finds_a_branch_on_a_provider_name() -> None:
    code = (
        "if target.provider == 'octopush': pass\n"
        "ok = p in ('unisender', 'selzy')\n"
        "match p:\n    case 'netcore': pass\n"
    )
    assert sorted(_branches_on_a_name(ast.parse(code))) == [
        (1, "octopush"),
        (2, "selzy"),
        (2, "unisender"),
        (4, "netcore"),
    ]
