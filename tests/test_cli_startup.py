"""What ``syncd`` imports before a command runs (issue 12).

Every command, ``syncd --help`` and ``--version`` included, builds the whole click tree first:
importing ``syncd.cli`` used to pull in the configuration's models, SQLAlchemy, the engine,
httpx and the schemas, about a second of CPU before anything was done. The CLI now imports each
of them inside the command that needs it; these tests fail when one creeps back to module level,
in ``cli.py`` or in a module it imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

from syncd import schemas
from syncd.cli import LazyChoice, main
from syncd.providers import PROVIDERS

#: Nothing a command tree needs: each is imported by the commands that use it.
HEAVY = (
    # the daemon's stack, for `syncd run` only
    "apscheduler",
    "watchdog",
    "prometheus_client",
    "syncd.daemon",
    # the store and its migrations, for the commands that open it
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "syncd.store",
    # the configuration's models, the cycles, the providers' HTTP, the schemas
    "pydantic",
    "syncd.config",
    "syncd.engine",
    "syncd.commands.cycles",
    "httpx",
    "syncd.providers.registry",
    "syncd.schemas",
    # the progress display, on a terminal only
    "rich",
)


def imported_by(code: str) -> set[str]:
    """The top-level and syncd module names in ``sys.modules`` after ``code`` ran in a fresh
    interpreter (this one has imported everything already)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(
        name for name in modules for heavy in HEAVY if name == heavy or name.startswith(heavy + ".")
    )


def test_importing_the_cli_imports_nothing_heavy() -> None:
    assert heavy_in(imported_by("import syncd.cli")) == []


def test_help_and_version_import_nothing_heavy() -> None:
    for args in (["--help"], ["--version"], ["ingest", "--help"], ["run", "--help"]):
        code = (
            "from syncd.cli import main\n"
            f"try:\n    main({args!r}, prog_name='syncd')\nexcept SystemExit:\n    pass"
        )
        assert heavy_in(imported_by(code)) == [], args


def test_the_lazy_choices_name_every_provider_and_schema() -> None:
    providers = tuple(PROVIDERS)
    names = tuple(n.removesuffix(".schema.json") for n in schemas.GENERATORS)
    show = main.commands["schemas"].commands["show"]  # type: ignore[attr-defined]
    for command, param, expected in (
        (main.commands["init"], "provider", providers),
        (main.commands["emulate"], "provider", providers),
        (show, "name", names),
    ):
        (found,) = [p.type for p in command.params if p.name == param]
        assert isinstance(found, LazyChoice) and found.choices == expected, command.name


def test_the_configuration_imports_neither_httpx_nor_apscheduler() -> None:
    """Every command reads the configuration: httpx only checks a webhook's or loopback API's URL
    and APScheduler only a cron schedule, so neither is imported with it."""
    found = imported_by("import syncd.config")
    assert not {"httpx", "apscheduler"} & found


def test_the_cycles_leave_the_listener_and_the_webhook_sender_to_those_who_need_them() -> None:
    """``status``, ``conflicts`` and ``resolve`` use ``commands.cycles`` without ever listening
    for a callback or sending a webhook; ``run-once`` imports those when a target calls back or
    a [[webhook]] is configured."""
    found = imported_by("import syncd.commands.cycles")
    commands = {f"syncd.commands.{name}" for name in ("job_routes", "listener", "webhook_admin")}
    assert not (commands | {"httpx"}) & found


def test_the_providers_http_layer_leaves_prometheus_to_the_daemon() -> None:
    """Every adapter reports its calls to ``syncd.metrics``' hook; only ``Metrics`` (the daemon's)
    needs prometheus-client."""
    found = imported_by("import syncd.providers.http")
    assert "prometheus_client" not in found


def test_a_push_of_the_mirror_leaves_the_key_checkers_and_postgresql_alone() -> None:
    """A ``run-once`` on SQLite imports the cycles and its adapter: it checks no new address or
    number until an export brings one, and uses no PostgreSQL (35 ms and 25 ms of start-up)."""
    found = imported_by("import syncd.commands.cycles, syncd.providers.unisender")
    assert "syncd.core.contacts" in found  # the module itself is light
    assert not {"email_validator", "phonenumbers", "sqlalchemy.dialects.postgresql"} & found
