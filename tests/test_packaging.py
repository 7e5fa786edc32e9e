"""What a wheel carries besides the code (licence, metadata, schemas), and CI installing it.

Building and installing the wheel needs the package index, so it runs in CI
(``scripts/check-wheel``, called by ``.ci/run``), not here; this checks what decides its content.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_licence_is_spdx_mit_and_shipped() -> None:
    project = PROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert "License :: " not in " ".join(project["classifiers"])  # PEP 639: the expression only


def test_metadata_a_user_sees_on_the_index() -> None:
    project = PROJECT["project"]
    assert project["authors"] and "Typing :: Typed" in project["classifiers"]
    minor = project["requires-python"].removeprefix(">=")
    assert f"Programming Language :: Python :: {minor}" in project["classifiers"]
    assert project["scripts"] == {"syncd": "syncd.cli:run"}


def test_the_linters_are_bounded_above() -> None:
    dev = {
        re.split(r"[<>=\[]", d)[0]: d for d in PROJECT["project"]["optional-dependencies"]["dev"]
    }
    assert "<" in dev["ruff"] and "<" in dev["mypy"]


def test_the_schemas_and_examples_go_into_the_wheel() -> None:
    shipped = PROJECT["tool"]["setuptools"]["data-files"]
    patterns = [p for files in shipped.values() for p in files]
    for schema in (ROOT / "schemas").glob("*.json"):
        assert any(schema.match(str(ROOT / p)) for p in patterns), schema.name
    assert any(
        (ROOT / "schemas/examples/inbox/contacts.csv").match(str(ROOT / p)) for p in patterns
    )


def test_ci_installs_the_wheel_and_the_changelog_names_the_version() -> None:
    assert "scripts/check-wheel" in (ROOT / ".ci/run").read_text(encoding="utf-8")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{PROJECT['project']['version']}]" in changelog
