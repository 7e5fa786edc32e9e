"""The command line: thin click commands over ``syncd.commands.cycles`` and friends.

Exit codes: 0 all converged, 1 rows rejected or conflicts remain, 2 configuration error (the
file, or a key, list or field name the provider refused), 3 a provider could not be reached.
No traceback reaches a user for a mistake of theirs: each ends in one line naming the value or
address at fault and what to do.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from syncd import __version__
from syncd.collector import no_collection_at_exit
from syncd.errors import ConfigError, IngestError, ListenError, StarterExists, SyncdError
from syncd.logs import register_secret, setup_logging

# Everything heavier (the configuration's pydantic models, SQLAlchemy, the engine, httpx, the
# daemon's stack, the schemas) is imported inside the command that needs it: every command,
# `syncd --help` included, would otherwise pay about a second of imports before doing anything
# (issue 12). tests/test_cli_startup.py holds the line.
if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from syncd.config import Config
    from syncd.engine.result import CycleOptions, CycleResult

progress_log = logging.getLogger("syncd.progress")

EXIT_CONFIG = 2

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Configuration file (default: the one given before the command, $SYNCD_CONFIG, "
    "else ./syncd.toml).",
)


def _chosen(config_path: str | None) -> str | None:
    """``--config`` after the command, else the one given before it (``syncd --config F run``)."""
    if config_path is not None:
        return config_path
    context = click.get_current_context(silent=True)
    found = context.find_root().params.get("config_path") if context is not None else None
    return found if isinstance(found, str) else None


def _config_path(config_path: str | None) -> Path:
    from syncd.config import find_config_path

    return find_config_path(_chosen(config_path))


def _n(count: int, word: str, plural: str | None = None) -> str:
    """``1 call``, ``2 calls``: counts in plain English."""
    return f"{count} {word if count == 1 else (plural or word + 's')}"


class LazyChoice(click.Choice):  # type: ignore[type-arg]
    """A ``click.Choice`` whose names are read the first time they are needed (parsing, help,
    completion), not when the command tree is built: the provider and schema names live in
    modules that take a while to import."""

    def __init__(self, names: Callable[[], Iterable[str]], case_sensitive: bool = True) -> None:
        self._names = names
        self._read: tuple[str, ...] | None = None
        super().__init__((), case_sensitive)

    @property
    def choices(self) -> tuple[str, ...]:
        if self._read is None:
            self._read = tuple(self._names())
        return self._read

    @choices.setter
    def choices(self, value: Iterable[str]) -> None:
        """``click.Choice.__init__`` sets the (empty) names; the loader gives the real ones."""


def _provider_names() -> list[str]:
    from syncd.providers import PROVIDERS

    return list(PROVIDERS)


def _schema_names() -> list[str]:
    from syncd import schemas

    return [n.removesuffix(".schema.json") for n in schemas.GENERATORS]


def _open_store(config: Config) -> Engine:
    """The mirror's store; ``syncd.store`` alone, not the cycle machinery ``commands.cycles``
    brings (the engine, the providers' HTTP, the listener), which ``ingest`` never uses."""
    from syncd.store import open_engine

    return open_engine(config.store.url)


def _store_refusal(exc: BaseException) -> str | None:
    """What to tell of a write the store refused (the database driver's error, raw or wrapped by
    SQLAlchemy), in the driver's own words and never the store's URL; None for anything else."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        exc = exc.orig or exc
    psycopg = sys.modules.get("psycopg")
    if not isinstance(exc, sqlite3.Error) and not (psycopg and isinstance(exc, psycopg.Error)):
        return None
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, sqlite3.Error) and ("full" in reason or "disk I/O" in reason):
        # a file's scratch rows and long statements' journals go to SQLite's temporary directory
        reason += (
            " (the store's disk, or SQLite's temporary directory: $SQLITE_TMPDIR, else "
            "/var/tmp or /tmp; point SQLITE_TMPDIR at a writable disk with room)"
        )
    return f"the store refused the write: {reason}"


def _load(config_path: str | None) -> Config:
    from syncd.config import load_config
    from syncd.providers import PROVIDERS

    try:
        config = load_config(_chosen(config_path), providers=PROVIDERS)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    for target in config.target:  # every command's log lines go through the SecretFilter
        register_secret(target.api_key.get_secret_value())
    if config.source:
        from syncd.local.source import register_url

        for source in config.source:
            register_url(source)
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="syncd")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail to stderr.")
@config_option
def main(verbose: bool, config_path: str | None) -> None:
    """Keep a local contact mirror and provider contact lists in agreement, both ways.

    Shell completion: eval "$(_SYNCD_COMPLETE=bash_source syncd)" (zsh_source, fish_source).
    """
    # text on stderr, times in UTC, keys registered by _load never shown; the libraries'
    # chatter (Alembic at each store opening, APScheduler at each job) only when asked for
    setup_logging(
        logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr, json_output=False
    )


# --- cycles -------------------------------------------------------------------------------


@main.command("run")
@config_option
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="syncd's own level.",
)
@click.option(
    "--library-log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="WARNING",
    show_default=True,
    help="Level of the libraries' loggers (watchdog, apscheduler, httpx, httpcore, sqlalchemy, "
    "alembic), whatever --log-level is.",
)
def run_cmd(config_path: str | None, log_level: str, library_log_level: str) -> None:
    """Run as a service: scheduled cycles, the watched inbox, health and metrics."""
    from syncd.daemon.runner import Daemon

    config = _load(config_path)
    # one event a line on stdout: JSON for journald and log shippers, text on a terminal
    setup_logging(log_level.upper(), stream=sys.stdout, library_level=library_log_level.upper())
    try:
        code = Daemon(_config_path(config_path), config).run()
    except ListenError as exc:
        # exit 2, which the systemd unit does not restart: a taken port stays taken
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    sys.exit(code)


@main.command("run-once")
@config_option
@click.option("--target", default=None, help="Only this target.")
@click.option("--dry-run", is_flag=True, help="Reconcile and plan, write nothing anywhere.")
@click.option("--allow-mass-delete", is_flag=True, help="Let this run pass the delete guard.")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON lines.")
@click.option(
    "--callback-wait",
    type=float,
    default=None,
    help="Seconds to wait for providers' callbacks (Netcore) before exiting "
    "[default: the target's callback_timeout].",
)
def run_once_cmd(
    config_path: str | None,
    target: str | None,
    dry_run: bool,
    allow_mass_delete: bool,
    as_json: bool,
    callback_wait: float | None,
) -> None:
    """Run one cycle per target and print a one-line summary for each."""
    from syncd.commands import cycles
    from syncd.engine.result import CycleOptions

    config = _load(config_path)
    with _progress() as progress:
        options = CycleOptions(
            dry_run=dry_run, allow_mass_delete=allow_mass_delete, progress=progress
        )
        results = _run(config, target, options, callback_wait)
    for r in results:
        click.echo(json.dumps(r.summary()) if as_json else _summary_line(r))
    sys.exit(cycles.exit_code(results))


@main.command("plan")
@config_option
@click.option("--target", default=None, help="Only this target.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(config_path: str | None, target: str | None, as_json: bool) -> None:
    """Show each write call a cycle would make; writes nothing anywhere."""
    from syncd.commands import cycles
    from syncd.engine.result import CycleOptions

    config = _load(config_path)
    results = _run(config, target, CycleOptions(dry_run=True))
    if as_json:
        click.echo(json.dumps([_plan_dict(r) for r in results], indent=2))
    else:
        for r in results:
            _print_plan(r)
    sys.exit(cycles.exit_code([r for r in results if r.outcome != "planned"]))


def _run(
    config: Config, target: str | None, options: CycleOptions, callback_wait: float | None = None
) -> list[CycleResult]:
    from syncd.commands import cycles

    try:
        return cycles.run_once(config, target=target, options=options, callback_wait=callback_wait)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)


def _summary_line(r: CycleResult) -> str:
    s = r.summary()
    line = (
        f"{r.target}: {r.outcome} — pushed {s['pushed']} (created {s['created']}, updated "
        f"{s['updated']}), deleted {s['deleted']}, pulled {s['pulled']}, removed locally "
        f"{s['removed_local']}, rejected {s['rejected']}, conflicts {s['conflicts']}; "
        f"{_n(s['api_calls'], 'call')} ({_n(s['write_calls'], 'write')})"
    )
    if s["kept_opted_out"]:
        line += f"; {_n(s['kept_opted_out'], 'opted-out contact')} kept at the provider"
    if s["first_meetings_held"]:
        line += f"; {_n(s['first_meetings_held'], 'first meeting')} held (first_sync = manual)"
    if s["deferred"]:
        line += f"; {s['deferred']} creates/deletes deferred"
    if s["without_key"]:
        line += f"; {_n(s['without_key'], 'member')} without this target's key, not synced"
    if s["edited_during_cycle"]:
        line += f"; {s['edited_during_cycle']} edited locally meanwhile, left for the next cycle"
    if s["awaiting_confirmation"] or s["still_awaiting"]:
        line += (
            f"; {s['awaiting_confirmation']} sent for confirmation by callback "
            f"({s['confirmed_later']} confirmed), {s['still_awaiting']} still waiting from before"
        )
    if r.message:
        line += f"\n  {r.message}"
    return line


def _plan_dict(r: CycleResult) -> dict[str, Any]:
    return {
        "summary": r.summary(),
        "calls": [
            {
                "method": c.method,
                "op": c.op,
                "rows": c.rows,
                "columns": list(c.columns),
                "overwrite_tags": c.overwrite_tags,
                "overwrite_lists": c.overwrite_lists,
                "first_rows": list(c.first_rows),
            }
            for c in r.calls
        ],
    }


def _print_plan(r: CycleResult) -> None:
    click.echo(f"{r.target}: {len(r.calls)} write call(s) planned")
    if r.outcome != "planned":
        click.echo(f"  cannot plan: {r.outcome}: {r.message}")
    elif r.message:
        click.echo(f"  {r.message}")
    for c in r.calls:
        flags = f"overwrite_tags={int(c.overwrite_tags)} overwrite_lists={int(c.overwrite_lists)}"
        click.echo(f"  {c.method} {c.op}: {c.rows} rows, {flags}")
        for row in c.first_rows:
            click.echo(f"    {json.dumps(row, ensure_ascii=False)}")
    s = r.summary()
    click.echo(
        f"  mirror: would pull {s['pulled']}, remove {s['removed_local']}; "
        f"{s['conflicts']} conflicts open, {s['rejected']} rows held back"
    )
    if s["first_meetings_held"]:
        click.echo(
            f"  first sync: {s['first_meetings_held']} contacts on both sides with different "
            "values are held (first_sync = manual); see `syncd conflicts`, settle them with "
            "`syncd resolve --all --take local|remote`"
        )


PROGRESS_LOG_EVERY = 5.0  # seconds between two progress log lines off a terminal


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int | None], None]]:
    """A live progress line on a terminal; off one (a file, a pipe, the journal), a log line
    every few seconds at most, so a long run shows it is moving without flooding the log."""
    if not sys.stderr.isatty():
        said = [time.monotonic()]

        def log_line(stage: str, n: int, total: int | None = None) -> None:
            now = time.monotonic()
            if now - said[0] >= PROGRESS_LOG_EVERY:
                said[0] = now
                extra = {"stage": stage, "done": n, "total": total}
                progress_log.info("%s: %s", stage, _so_far(n, total), extra=extra)

        yield log_line
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("starting") as status:

        def update(stage: str, n: int, total: int | None = None) -> None:
            status.update(f"{stage}: {_so_far(n, total)}")

        yield update


def _so_far(n: int, total: int | None) -> str:
    return f"{n:,}" if total is None else f"{n:,}/{total:,}"


# --- the mirror ---------------------------------------------------------------------------


@main.command("ingest")
@config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Off a terminal: seconds between two JSON progress lines on stderr (on a terminal a "
    "progress bar shows instead).",
)
def ingest_cmd(
    config_path: str | None, files: tuple[str, ...], as_json: bool, progress_every: float
) -> None:
    """Apply contact files (.csv, or JSON: .ndjson, .jsonl, .json) to the mirror, each file in
    one transaction."""
    from syncd.commands.ingest import ingest_path

    config = _load(config_path)
    db = _open_store(config)
    terminal = sys.stderr.isatty()
    if not terminal:  # the progress lines are JSON log events (syncd.logs)
        verbose = click.get_current_context().find_root().params.get("verbose")
        setup_logging(logging.DEBUG if verbose else logging.INFO, stream=sys.stderr)
    worst = 0
    for name in files:
        try:
            report = ingest_path(
                db, Path(name), config.ingest, terminal=terminal, every=progress_every
            )
        except IngestError as exc:
            click.echo(f"{name}: not ingested: {exc}", err=True)
            worst = 1
            continue
        except Exception as exc:
            reason = _store_refusal(exc)
            if reason is None:
                raise
            # the file's one transaction rolled back: the next file may still fit
            click.echo(f"{name}: not ingested, nothing of it applied: {reason}", err=True)
            worst = 1
            continue
        data = report.to_dict()
        if as_json:
            click.echo(json.dumps(data, ensure_ascii=False))
        else:
            click.echo(
                f"{name}: {data['rows']} rows — created {data['created']}, updated "
                f"{data['updated']}, deleted {data['deleted']}, unchanged {data['unchanged']}, "
                f"rejected {len(data['rejected']) + data.get('rejected_unlisted', 0)}"
            )
            for bad in data["rejected"]:
                click.echo(f"  line {bad['line']}: {bad['reason']}", err=True)
            if data.get("rejected_unlisted"):
                click.echo(f"  ... and {data['rejected_unlisted']:,} more rejected rows", err=True)
            if config.ingest.default_region is None and any(
                "international format" in bad["reason"] for bad in data["rejected"]
            ):
                click.echo(
                    "  a phone without '+' is read only with [ingest] default_region set "
                    '(e.g. default_region = "BY"); syncd never guesses the country',
                    err=True,
                )
        worst = max(worst, 1 if data["rejected"] else 0)
    sys.exit(worst)


@main.group("source")
def source_group() -> None:
    """Read [[source]] queries (the company's own database) into the mirror."""


@source_group.command("pull")
@config_option
@click.option("--source", "name", default=None, help="Only this source.")
@click.option("--dry-run", is_flag=True, help="Read and diff, show the counts, apply nothing.")
@click.option("--allow-mass-delete", is_flag=True, help="Let this read pass the delete guard.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per source.")
def source_pull_cmd(
    config_path: str | None, name: str | None, dry_run: bool, allow_mass_delete: bool, as_json: bool
) -> None:
    """Read each source once (or --source NAME) and apply what changed since its last read.

    Exit code 0 when every read applied, 1 when rows were rejected or the mass-delete guard
    refused a read, 3 when a read failed (query, connection, timeout): nothing of it applied.
    """
    from syncd.commands.sources import pull_sources

    config = _load(config_path)
    if not config.source:
        click.echo("no [[source]] is configured", err=True)
        sys.exit(EXIT_CONFIG)
    try:
        outcomes = pull_sources(
            _open_store(config),
            config,
            name,
            dry_run=dry_run,
            allow_mass_delete=allow_mass_delete,
        )
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    worst = 0
    for o in outcomes:
        if as_json:
            click.echo(json.dumps(o.to_dict(), ensure_ascii=False))
        elif o.report is None:
            click.echo(f"{o.source}: {o.outcome}: {o.reason}", err=True)
        else:
            r = o.report
            verb = "would apply" if dry_run else "applied"
            click.echo(
                f"{o.source} ({r.mode} read, {_n(r.rows, 'row')}): {verb} created {r.created}, "
                f"updated {r.updated}, removed from list {r.removed}, unchanged {r.unchanged}, "
                f"rejected {len(r.rejected)}"
            )
            for bad in r.rejected:
                click.echo(f"  row {bad.line} ({bad.key}): {bad.reason}", err=True)
        code = {"failed": 3, "refused": 1}.get(
            o.outcome, 1 if o.report and o.report.rejected else 0
        )
        worst = max(worst, code)
    sys.exit(worst)


@main.command("export")
@config_option
@click.option("--format", "fmt", type=click.Choice(["ndjson", "csv"]), default="ndjson")
@click.option("--list", "list_name", default=None, help="Only members of this local list.")
@click.option(
    "--raw",
    is_flag=True,
    help="CSV: cells as stored; by default a cell a spreadsheet would run as a formula "
    "(=, +, -, @ first) is written after an apostrophe, which ingest removes.",
)
def export_cmd(config_path: str | None, fmt: str, list_name: str | None, raw: bool) -> None:
    """Print the mirror in the shape `ingest` reads (a round trip changes nothing)."""
    from syncd.local.export import export_contacts, list_problem

    config = _load(config_path)
    store = _open_store(config)
    if list_name is not None:
        problem = list_problem(store, list_name, {t.local_list_name for t in config.target})
        if problem is not None:
            click.echo(f"syncd export: {problem}", err=True)
            sys.exit(EXIT_CONFIG)
    export_contacts(store, sys.stdout, fmt, list_name, raw=raw)  # type: ignore[arg-type]


@main.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True)
def status_cmd(config_path: str | None, as_json: bool) -> None:
    """Per target: the last run, its outcome and counts, rejected rows, open conflicts.

    Exit code 1 while a conflict is open (as `run-once` would end), else 0.
    """
    from syncd.commands import cycles

    config = _load(config_path)
    statuses = cycles.status(config)
    for s in statuses:
        if as_json:
            click.echo(json.dumps(s.to_dict()))
            continue
        run = s.last_run
        when = (
            f"last run {run['finished_at'] or run['started_at']}: {run['outcome']}"
            if run
            else "never run"
        )
        click.echo(
            f"{s.target} ({s.provider}): {when}; {_n(s.rejected, 'rejected row')}, "
            f"{_n(s.open_conflicts, 'open conflict')}"
        )
        if run and run["message"]:
            click.echo(f"  {run['message']}")
        if run:
            counts = run["counts"]
            line = (
                f"  pushed {counts.get('pushed', 0)}, deleted {counts.get('deleted', 0)}, "
                f"pulled {counts.get('pulled', 0)}, {_n(counts.get('api_calls', 0), 'call')}"
            )
            if not counts.get("export_complete", True):
                line += f"; export incomplete: {counts.get('deferred', 0)} creates/deletes wait"
            click.echo(line)
        if s.awaiting_callback:
            verb = "waits" if s.awaiting_callback == 1 else "wait"
            waiting = _n(s.awaiting_callback, "row")
            click.echo(f"  {waiting} {verb} for the provider's callback")
        if not s.two_way:
            click.echo("  push-only: changes made at this provider cannot be seen by syncd")
    _source_status(config, as_json)
    _webhook_status(config, as_json)
    sys.exit(1 if any(s.open_conflicts for s in statuses) else 0)


def _source_status(config: Config, as_json: bool) -> None:
    from syncd.commands.sources import source_status

    if not config.source:
        return
    for s in source_status(config, _open_store(config)):
        if as_json:
            click.echo(json.dumps({"kind": "source", **s}))
            continue
        if s["last_read_at"] is None:
            when = "never read"
        else:
            when = f"last read {_stamp(s['last_read_at'])}"
            if s["error"]:
                when += ": failed"
        click.echo(f"source {s['source']} ({s['mode']}, list {s['list']}): {when}")
        if s["last_success_at"] is not None:
            click.echo(
                f"  last applied {_stamp(s['last_success_at'])}: {_n(s['rows'], 'row')}, created "
                f"{s['created']}, updated {s['updated']}, removed {s['removed']}, rejected "
                f"{s['rejected']}"
            )
        if s["error"]:
            click.echo(f"  error: {s['error']}")


def _stamp(unix: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def _webhook_status(config: Config, as_json: bool) -> None:
    from syncd.commands.webhook_admin import status_lines, webhook_status

    status = webhook_status(config, _open_store(config))
    if not status["webhooks"]:
        return
    if as_json:
        click.echo(json.dumps(status))
        return
    for line in status_lines(status):
        click.echo(line)


@main.group("webhooks")
def webhooks_group() -> None:
    """Signed webhooks: send dead-lettered change events again."""


@webhooks_group.command("replay")
@config_option
@click.option(
    "--since",
    default=None,
    help="Only events dead-lettered at or after this time: ISO-8601 (UTC unless it names a "
    "zone) or a duration ago such as 2h or 3d.",
)
@click.option("--event", "event_id", default=None, help="Only this event (its id).")
def webhooks_replay_cmd(config_path: str | None, since: str | None, event_id: str | None) -> None:
    """Queue dead-lettered deliveries again (and turn their endpoints back on)."""
    from syncd.commands.webhook_admin import parse_since
    from syncd.local.webhook_queue import replay

    config = _load(config_path)
    try:
        after = None if since is None else parse_since(since)
    except ValueError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    n = replay(_open_store(config), since=after, event_id=event_id)
    click.echo(f"{n} dead-lettered deliveries queued again; the daemon sends them now")
    sys.exit(0 if n or event_id is None else 1)


@main.group("hooks")
def hooks_group() -> None:
    """Provider webhooks in: install, show or remove each target's hook at its provider."""


def _hooks_cmd(action: str, config_path: str | None, target: str | None, as_json: bool) -> None:
    from syncd.commands import hooks

    config = _load(config_path)
    states = getattr(hooks, action)(config, _open_store(config), target)
    for state in states:
        if as_json:
            click.echo(json.dumps(state.to_json()))
            continue
        detail = f" ({state.detail})" if state.detail else ""
        click.echo(f"{state.target}: {state.state} {state.url}{detail}".replace("  ", " "))
    sys.exit(0 if action != "status" or all(s.state == "active" or s.state == "manual"
                                            for s in states) else 1)  # fmt: skip


@hooks_group.command("install")
@config_option
@click.option("--target", default=None, help="Only this target.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
def hooks_install_cmd(config_path: str | None, target: str | None, as_json: bool) -> None:
    """Set each hooked target's webhook at its provider (Octopush: print the URL to paste)."""
    _hooks_cmd("install", config_path, target, as_json)


@hooks_group.command("status")
@config_option
@click.option("--target", default=None, help="Only this target.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
def hooks_status_cmd(config_path: str | None, target: str | None, as_json: bool) -> None:
    """Show each hook's URL and its state at the provider; exit 1 unless all are active."""
    _hooks_cmd("status", config_path, target, as_json)


@hooks_group.command("remove")
@config_option
@click.option("--target", default=None, help="Only this target.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
def hooks_remove_cmd(config_path: str | None, target: str | None, as_json: bool) -> None:
    """Remove each hook at its provider and retire its URL (it answers 403 from then on)."""
    _hooks_cmd("remove", config_path, target, as_json)


@main.command("conflicts")
@config_option
@click.option("--target", default=None)
@click.option("--json", "as_json", is_flag=True)
def conflicts_cmd(config_path: str | None, target: str | None, as_json: bool) -> None:
    """List conflicts held under the manual policy, and first meetings held by first_sync.

    Exit code 1 while one is open (not yet given a `resolve`), else 0. --json prints one array.
    """
    from syncd.commands import cycles

    config = _load(config_path)
    rows = cycles.list_conflicts(config, target)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
    for c in [] if as_json else rows:
        state = f"resolved: take {c['resolution']}" if c["resolution"] else "open"
        click.echo(f"{c['target']} {c['key']} ({state})")
        for f in c["fields"]:
            chosen = f" (take {f['take']})" if f.get("take") else ""
            click.echo(
                f"  {f['field']}: local={f['local']!r} remote={f['remote']!r} "
                f"base={f['base']!r}{chosen}"
            )
    if not rows and not as_json:
        click.echo("no conflicts")
    sys.exit(1 if any(not c["resolution"] for c in rows) else 0)


@main.command("explain")
@config_option
@click.argument("key")
@click.option("--target", default=None, help="Only this target.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (explain schema).")
def explain_cmd(config_path: str | None, key: str, target: str | None, as_json: bool) -> None:
    """Why did this contact change, or not: its state per target and its history.

    KEY is an email or phone. Exit code 1 when the store has never heard of it.
    """
    from syncd.commands.explain import explain
    from syncd.errors import UnknownKey

    config = _load(config_path)
    try:
        found = explain(config, key, target)
    except UnknownKey as exc:
        click.echo(f"syncd explain: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(found.model_dump_json())
        return
    for line in explain_lines(found):
        click.echo(line)


def explain_lines(found: Any) -> Iterator[str]:
    """``syncd explain`` for a person: the state per target, then one line per step."""
    from syncd.commands.explain import ContactState

    def state(s: ContactState | None) -> str:
        if s is None:
            return "-"
        fields = " ".join(f"{k}={v!r}" for k, v in sorted(s.fields.items()))
        tags = ",".join(s.tags) or "-"
        consent = s.status if s.list_status == "active" else f"{s.status}, list {s.list_status}"
        return f"{fields + '  ' if fields else ''}tags={tags}  {consent}"

    yield found.key
    for name, t in found.targets.items():
        yield f"  {name} ({t.provider}, key {t.key or '-'})"
        yield f"    local   {state(t.local)}"
        yield f"    base    {state(t.base)}"
        seen = f" (as of {t.remote_as_of})" if t.remote_as_of else " (never exported whole)"
        yield f"    remote  {state(t.remote)}{seen}"
        if t.in_flight is not None:
            yield f"    sent, answer lost: {state(t.in_flight)}"
        if t.rejection is not None:
            r = t.rejection
            yield f"    refused: {r.code}: {r.message} ({'retried' if r.retryable else 'held'})"
        if t.conflict is not None:
            fields = ", ".join(str(f["field"]) for f in t.conflict)
            yield f"    conflict open on {fields}: syncd resolve {t.key} --take local|remote"
    yield "history" if found.history else "history: nothing kept"
    for step in found.history:
        out = step.outcome
        said = out.get("reason") or (f"{out['code']}: {out['message']}" if "code" in out else "")
        if "source" in out:  # a local write: which file or request, and what it carried
            said = f"{out['source']}, line {out['line']}: {', '.join(out['carried']) or '-'}"
        where = f"cycle {step.cycle}  {step.target}" if step.target is not None else "local"
        yield f"  {step.at}  {where}  {step.case} -> {out['result']}" + (
            f" ({said})" if said else ""
        )
        for name, (before, after) in out.get("changed", {}).items():
            yield f"      {name}: {before!r} -> {after!r}"
        if step.sent:
            sent = step.sent
            values = " ".join(f"{k}={v!r}" for k, v in sent.get("fields", {}).items())
            extra = [f"tags={','.join(sent['tags']) or '-'}"] if "tags" in sent else []
            extra += [f"status={sent['status']}"] if "status" in sent else []
            flags = [k for k, v in sent.get("flags", {}).items() if v]
            yield (
                f"      sent {sent.get('call')} {sent.get('op')}: "
                + " ".join(p for p in (values, *extra) if p)
                + (f" [{', '.join(flags)}]" if flags else "")
            )
        for c in out.get("conflicts", []):
            yield (
                f"      conflict {c['field']}: local={c['local']!r} remote={c['remote']!r} "
                f"base={c['base']!r} -> took {c['took']}"
            )
        if "event" in out:
            yield f"      outbox event {out['event']['kind']} {out['event']['id']}"


@main.command("runs")
@config_option
@click.option("--target", default=None, help="Only this target.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array (runs schema).")
def runs_cmd(config_path: str | None, target: str | None, limit: int, as_json: bool) -> None:
    """The latest cycles, newest first: outcome and counts, from the run records."""
    from syncd.commands.explain import runs

    config = _load(config_path)
    found = runs(config, target, limit)
    if as_json:
        click.echo(json.dumps([r.model_dump() for r in found], ensure_ascii=False))
        return
    if not found:
        click.echo("no runs yet")
    for r in found:
        c = r.counts
        click.echo(
            f"#{r.id} {r.target} {r.started_at} {r.outcome}: pushed {c.get('pushed', 0)}, "
            f"deleted {c.get('deleted', 0)}, pulled {c.get('pulled', 0)}, "
            f"rejected {c.get('rejected', 0)}, {_n(c.get('conflicts', 0), 'conflict')}, "
            f"{_n(c.get('api_calls', 0), 'call')}"
        )
        if r.message:
            click.echo(f"  {r.message}")


@main.command("resolve")
@config_option
@click.argument("key", required=False)
@click.option("--all", "every", is_flag=True, help="Every held conflict (of --target, if given).")
@click.option("--take", type=click.Choice(["local", "remote"]), required=True)
@click.option(
    "--field",
    "fields",
    multiple=True,
    help="Only this field, as `syncd conflicts` names it (repeatable).",
)
@click.option("--target", default=None)
def resolve_cmd(
    config_path: str | None,
    key: str | None,
    every: bool,
    take: str,
    fields: tuple[str, ...],
    target: str | None,
) -> None:
    """Settle a held conflict (KEY) or all of them (--all); the next cycle carries it out."""
    from syncd.commands import cycles
    from syncd.core.contacts import normalise_email, normalise_phone

    if (key is None) == (not every):
        raise click.UsageError("give either a KEY or --all")
    config = _load(config_path)
    norm = None
    if key is not None:
        try:
            norm = (
                normalise_email(key)
                if "@" in key
                else normalise_phone(key, config.ingest.default_region)
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="KEY") from None
    n = cycles.resolve(config, norm, take, target, fields=fields)
    what = f"take {take}" + (f" for {', '.join(fields)}" if fields else "")
    if norm is None:
        click.echo(f"{n} held conflict(s): will {what} at the next cycle")
        return
    if not n:
        click.echo(f"no conflict for {norm}", err=True)
        sys.exit(1)
    click.echo(f"{norm}: will {what} at the next cycle ({n} target(s))")


# --- setting up ---------------------------------------------------------------------------


@main.command("init")
@config_option
@click.option(
    "--provider",
    type=LazyChoice(_provider_names),
    default="unisender",
    show_default=True,
    help="Which provider the starter target uses.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing configuration file.")
@click.option("--list-id", default=None, help="The remote list's id (else CHANGE-ME).")
@click.option("--base-url", default=None, help="The API root, e.g. an emulator's.")
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="REMOTE=local",
    help="Map a remote field onto a local one (repeatable), e.g. --field Name=name.",
)
def init_cmd(
    config_path: str | None,
    provider: str,
    force: bool,
    list_id: str | None,
    base_url: str | None,
    fields: tuple[str, ...],
) -> None:
    """Write a commented starter syncd.toml and the inbox/outbox folders beside it."""
    from syncd.commands.starter import STARTERS, write_starter
    from syncd.config import PLACEHOLDER

    path = _config_path(config_path)
    mapping = {}
    for pair in fields:
        remote, sep, local = pair.partition("=")
        if not (sep and remote.strip() and local.strip()):
            raise click.BadParameter(f"{pair!r} is not REMOTE=local", param_hint="--field")
        mapping[remote.strip()] = local.strip()
    try:
        created = write_starter(
            path, provider, force, list_id=list_id, base_url=base_url, fields=mapping
        )
    except StarterExists as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for item in created:
        click.echo(f"created {item}{'/' if item.is_dir() else ''}")
    left = f'"{PLACEHOLDER}"' in path.read_text(encoding="utf-8")  # as a value, not in a comment
    todo = f"replace {PLACEHOLDER} in {path}, " if left else ""
    click.echo(
        f"next: export {STARTERS[provider].env}=..., {todo}"
        f"then run: syncd check-config --config {path} --online"
    )


@main.command("check-config")
@config_option
@click.option("--online", is_flag=True, help="Also try each target's key and list (reads only).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_config_cmd(config_path: str | None, online: bool, as_json: bool) -> None:
    """Validate the configuration file; with --online, try each target's key and list.

    Exit code 0 only when everything checks out; 2 the file, a key or a list is wrong;
    3 a provider could not be reached.
    """
    from syncd.commands.check import check_config

    report = check_config(_chosen(config_path), online)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        for line in report.lines():
            click.echo(line)
    sys.exit(report.exit_code)


# --- trying it out ------------------------------------------------------------------------


@main.command("emulate")
@click.argument("provider", type=LazyChoice(_provider_names))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--api-key", default=None, help="Accept only this key (default: any).")
@click.option("--no-seed", is_flag=True, help="Start empty (no list 'Newsletter').")
@click.option("--latency", type=float, default=0.0, help="Seconds added to every call.")
@click.option("--5xx-rate", "http_5xx_rate", type=float, default=0.0, help="Share of HTTP 503s.")
@click.option("--timeout-rate", type=float, default=0.0, help="Share of calls that hang 60 s.")
@click.option("--drop-rate", type=float, default=0.0, help="Share of dropped connections.")
@click.option(
    "--rate-limit-rate", type=float, default=0.0, help="Share of rate-limit error answers."
)
@click.option("--seed", type=int, default=None, help="Seed for the fault dice (reproducible).")
@click.option(
    "--primary-key",
    type=click.Choice(["EMAIL", "MOBILE"]),
    default="EMAIL",
    show_default=True,
    help="netcore: the account's primary key attribute.",
)
@click.option(
    "--request-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append every request line received (method, path and query) to this file.",
)
def emulate_cmd(
    provider: str,
    host: str,
    port: int,
    api_key: str | None,
    no_seed: bool,
    latency: float,
    http_5xx_rate: float,
    timeout_rate: float,
    drop_rate: float,
    rate_limit_rate: float,
    seed: int | None,
    primary_key: str,
    request_log: Path | None,
) -> None:
    """Run a faithful local emulator of a provider's API on loopback.

    Faults can also be switched at run time: POST JSON to /_emulator/faults.
    """
    from syncd.emulators import kit
    from syncd.emulators.kit.server import BindError
    from syncd.providers import PROVIDERS

    faults = kit.Faults(
        latency=latency,
        http_5xx_rate=http_5xx_rate,
        timeout_rate=timeout_rate,
        drop_rate=drop_rate,
        error_code_rate=rate_limit_rate,
        error_code="api_call_limit_exceeded_for_api_key",
        seed=seed,
    )
    make_emulator: Callable[[kit.EmulatorOptions], kit.EmulatorControls]
    make_emulator = PROVIDERS[provider].load_emulator()
    options = kit.EmulatorOptions(provider, api_key, seed=not no_seed, primary_key=primary_key)
    try:
        kit.serve(make_emulator(options), host, port, faults, request_log)
    except BindError as exc:
        click.echo(f"error: {exc}; choose another with --port", err=True)
        sys.exit(EXIT_CONFIG)


@main.command("demo")
@click.option("--contacts", default=300, show_default=True, help="How many sample contacts.")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Keep the files here.")
def demo_cmd(contacts: int, keep: str | None) -> None:
    """Sync a sample list with a local emulator, change both sides, and show it converge."""
    from syncd.commands.demo import run_demo

    sys.exit(run_demo(contacts, keep, click.echo))


# --- the schemas of syncd's files ---------------------------------------------------------


@main.group("schemas")
def schemas_group() -> None:
    """Generate or check the JSON Schemas in schemas/ and the README's configuration reference."""


schema_dir_option = click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False),
    default="schemas",
    show_default=True,
    help="The schema folder.",
)
readme_option = click.option(
    "--readme",
    type=click.Path(dir_okay=False),
    default="README.md",
    show_default=True,
    help="The README holding the configuration reference block (skipped if missing).",
)


@schemas_group.command("write")
@schema_dir_option
@readme_option
def schemas_write_cmd(folder: str, readme: str) -> None:
    """Regenerate the schema files and the README's reference."""
    from syncd import schemas

    for path in schemas.write_all(folder):
        click.echo(f"wrote {path}")
    if not Path(readme).exists():
        return
    try:
        if schemas.write_readme(readme):
            click.echo(f"updated the configuration reference in {readme}")
    except ValueError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)


@schemas_group.command("check")
@schema_dir_option
@readme_option
def schemas_check_cmd(folder: str, readme: str) -> None:
    """List stale schema files and README reference; exit 1 if any."""
    from syncd import schemas

    problems = schemas.check_all(folder)
    if Path(readme).exists():
        problems += schemas.readme_problems(readme)
    for problem in problems:
        click.echo(problem, err=True)
    sys.exit(1 if problems else 0)


@schemas_group.command("reference")
def schemas_reference_cmd() -> None:
    """Print the configuration reference (Markdown) the README holds."""
    from syncd import schemas

    click.echo(schemas.config_reference_markdown(), nl=False)


@schemas_group.command("show")
@click.argument("name", type=LazyChoice(_schema_names))
def schemas_show_cmd(name: str) -> None:
    """Print a schema file; change-event describes one outbox line."""
    from syncd import schemas

    click.echo(schemas.schema_texts()[f"{name}.schema.json"], nl=False)


def run() -> None:
    """The console entry (``syncd``, ``python -m syncd``): a syncd error that escapes a command
    is one line on stderr, never a traceback; a configuration error exits 2, any other 1."""
    no_collection_at_exit()
    try:
        main(prog_name="syncd")  # the same name (and completion variable) however started
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    except ListenError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except SyncdError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        # SQLAlchemy is imported only by the commands that open a store: when it never was,
        # no exception can be its OperationalError
        sa_exc = sys.modules.get("sqlalchemy.exc")
        if sa_exc is None or not isinstance(exc, sa_exc.OperationalError):
            raise
        # the store's server is down or refuses us; its own words, never the URL (a password)
        reason = str(exc.orig or exc).strip().splitlines()[0]
        click.echo(f"error: cannot open the store ([store] url): {reason}", err=True)
        sys.exit(1)
