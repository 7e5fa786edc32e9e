"""The README's command table and the click CLI name the same commands.

Every command of ``syncd.cli.main`` (and every subcommand of a group) has a row in the table under
``## Commands``, the table names no command the CLI lacks, and each option a row shows is one the
command takes. A row's first cell holds one or more code spans ``syncd NAME [SUB] ...``; a group's
subcommands may share a span as alternatives (``syncd schemas write\\|check``).
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from syncd.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

_SPAN = re.compile(r"`syncd ([^`]+)`")
_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)")


def command_table() -> list[str]:
    """The first cell of each row of the table under ``## Commands``."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    cells = []
    for line in section.splitlines():
        if line.startswith("| `syncd "):
            # the first cell ends at the first pipe that is not escaped as \|
            cells.append(re.split(r"(?<!\\)\|", line)[1])
    return cells


def documented() -> dict[tuple[str, ...], set[str]]:
    """Each documented command path (``("run-once",)``, ``("schemas", "write")``) and the options
    its rows show."""
    found: dict[tuple[str, ...], set[str]] = {}
    for cell in command_table():
        for span in _SPAN.findall(cell):
            words = span.split()
            options = set(_OPTION.findall(span))
            command = main.commands.get(words[0])
            if isinstance(command, click.Group) and len(words) > 1:
                paths = [(words[0], sub) for sub in words[1].split("\\|")]
            else:
                paths = [(words[0],)]
            for path in paths:
                found.setdefault(path, set()).update(options)
    return found


def cli_commands() -> dict[tuple[str, ...], click.Command]:
    found: dict[tuple[str, ...], click.Command] = {}
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            for sub, subcommand in command.commands.items():
                found[(name, sub)] = subcommand
        else:
            found[(name,)] = command
    return found


def test_the_readme_has_a_command_table() -> None:
    assert len(command_table()) >= 10


def test_every_command_is_in_the_readme_and_every_documented_command_exists() -> None:
    in_readme = set(documented())
    in_cli = set(cli_commands())
    missing = sorted(" ".join(path) for path in in_cli - in_readme)
    unknown = sorted(" ".join(path) for path in in_readme - in_cli)
    assert not missing, f"commands without a row in README.md's command table: {missing}"
    assert not unknown, f"README.md's command table names commands syncd lacks: {unknown}"


def test_every_documented_option_is_one_the_command_takes() -> None:
    commands = cli_commands()
    wrong = []
    for path, options in documented().items():
        if path not in commands:
            continue  # reported by the test above
        takes = {opt for param in commands[path].params for opt in param.opts}
        wrong += [f"syncd {' '.join(path)} {opt}" for opt in sorted(options - takes)]
    assert not wrong, f"README.md's command table shows options the CLI lacks: {wrong}"
