"""``syncd check-config``: is the configuration file valid, and (``--online``) does it work?

Offline, the file is checked twice: against ``schemas/config.schema.json`` (the published
contract, as ``syncd.schemas.config_schema`` generates it) and by loading it as the daemon does
(``syncd.config.parse_config``), so a file that passes is one the daemon accepts. Every problem
names the file and the key.

Online, each target whose provider has a read-only call is tried once: the adapter's
``prepare`` with field creation off, where its spec says that only reads
(``ProviderSpec.read_only_prepare``; for Unisender/Selzy it reads ``getLists``: reachable? key
accepted? list there? and ``getFields``), and writes nothing. Providers without such a call are
reported as not checked, which is not a failure.

Warnings point at a valid setting that is risky and change no exit code: ``[http] listen`` on an
address other than loopback serves ``/metrics`` and Netcore's ``/jobs/`` routes to the network.
"""

from __future__ import annotations

import difflib
import importlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from syncd.commands.cycles import ProviderFactory, build_provider
from syncd.config import Config, TargetConfig, find_config_path, parse_config, substitute_env
from syncd.errors import AuthError, ConfigError, ProviderError, ProviderUnreachable
from syncd.providers import PROVIDERS, make_provider
from syncd.schemas import config_schema

EXIT_OK = 0
EXIT_CONFIG = 2  # the file, or what it names (key, list), is wrong
EXIT_UNREACHABLE = 3  # a provider could not be reached

NOT_CHECKED = "no read-only call available; not checked online"


@dataclass
class TargetCheck:
    """One target's online check. ``None`` means the check did not get that far."""

    name: str
    provider: str
    list_id: str
    checked: bool = False
    reachable: bool | None = None
    key_accepted: bool | None = None
    list_exists: bool | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        if self.ok:
            return EXIT_OK
        return EXIT_UNREACHABLE if self.reachable is False else EXIT_CONFIG

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.name,
            "provider": self.provider,
            "list_id": self.list_id,
            "checked": self.checked,
            "reachable": self.reachable,
            "key_accepted": self.key_accepted,
            "list_exists": self.list_exists,
            "ok": self.ok,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }

    def line(self) -> str:
        head = f"target {self.name} ({self.provider}):"
        if not self.checked:
            return f"{head} {'; '.join(self.notes) or 'not checked online'}"
        return (
            f"{head} reachable: {_word(self.reachable)}, key accepted: "
            f"{_word(self.key_accepted)}, list {self.list_id} exists: {_word(self.list_exists)}"
        )


def _word(value: bool | None) -> str:
    return "not known" if value is None else ("yes" if value else "NO")


@dataclass
class CheckReport:
    """What ``check_config`` found: problems in the file, then each target's online check."""

    source: str
    online: bool
    problems: list[str] = field(default_factory=list)  # "key: message", from the file
    warnings: list[str] = field(default_factory=list)  # "key: message", valid but risky
    config: Config | None = None
    targets: list[TargetCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def exit_code(self) -> int:
        """0 everything checks out; 2 the file or what it names is wrong; 3 unreachable only."""
        if self.problems or self.config is None:
            return EXIT_CONFIG
        codes = {t.exit_code for t in self.targets}
        if EXIT_CONFIG in codes:
            return EXIT_CONFIG
        return EXIT_UNREACHABLE if EXIT_UNREACHABLE in codes else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "valid": not self.problems,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "online": self.online,
            "targets": [t.to_dict() for t in self.targets],
            "ok": self.ok,
        }

    def lines(self) -> list[str]:
        """The report as text, one problem a line, each naming the file (and the key)."""
        if self.problems or self.config is None:
            return [f"{self.source}: {p}" for p in self.problems]
        count = len(self.config.target)
        out = [f"{self.source}: valid ({count} target{'' if count == 1 else 's'})"]
        if not self.online:
            out[0] += "; not checked online (use --online)"
        out += [f"{self.source}: warning: {w}" for w in self.warnings]
        if not self.online:
            return out
        for t in self.targets:
            out.append(t.line())
            out += [f"  - {p}" for p in t.problems]
            out += [f"  note: {n}" for n in t.notes if t.checked]
        return out


def check_config(
    path: str | os.PathLike[str] | None = None,
    online: bool = False,
    providers: ProviderFactory = build_provider,
    env: Mapping[str, str] | None = None,
) -> CheckReport:
    """Check the configuration file (``path``, else $SYNCD_CONFIG, else ./syncd.toml).

    ``providers`` builds each target's adapter for the online check (tests pass one that
    reaches an emulator); ``env`` replaces ``os.environ`` for ``${VAR}``.
    """
    file = find_config_path(path)
    report = CheckReport(str(file), online)
    environ = os.environ if env is None else env
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.problems.append("file not found (use --config or $SYNCD_CONFIG)")
        return report
    except OSError as exc:
        report.problems.append(f"cannot be read: {exc.strerror or exc}")
        return report
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        report.problems.append(f"not valid TOML: {exc}")
        return report

    try:
        base = file.absolute().parent
        report.config = parse_config(data, str(file), environ, providers=PROVIDERS, base=base)
    except ConfigError as exc:
        report.problems += exc.problems
    # The schema's findings are nearly always the loader's too; add only those about keys the
    # loader said nothing of (the schema and the models should agree; this shows where not).
    report.problems += [
        f"{key}: {message} (schema)"
        for key, message in schema_problems(data, environ)
        if not any(_covered(key, p) for p in report.problems)
    ]
    if report.config is not None and not report.problems:
        report.problems += provider_rule_problems(report.config)
    if report.problems:
        report.config = None
    elif report.config is not None:
        report.warnings = config_warnings(report.config)
    if online and report.config is not None:
        report.targets = [probe_target(report.config, t, providers) for t in report.config.target]
    return report


def config_warnings(config: Config) -> list[str]:
    """Valid settings worth a second look, as "key: message"."""
    warnings = []
    if config.http.enabled and not _loopback(config.http.address()[0]):
        warnings.append(
            f"http.listen: {config.http.listen!r} is not a loopback address: /metrics and "
            "Netcore's /jobs/ routes are open to the network; listen on 127.0.0.1 (or ::1) "
            "unless a firewall or proxy stands in front"
        )
    return warnings


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any address


def provider_rule_problems(config: Config) -> list[str]:
    """What each target's adapter refuses before any call (Octopush takes only its own field
    names, sms.by never the key as a field...), as "key: message".

    The adapter's ``prepare`` runs with field creation off over a transport that refuses every
    request: the checks it makes on the settings alone show, and nothing leaves the machine (a
    check that needs an answer is the online pass's).
    """

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("offline check: no request is made", request=request)

    out = []
    for i, target in enumerate(config.target):
        offline = target.model_copy(update={"retries": 0})
        try:
            provider = make_provider(
                offline, transport=httpx.MockTransport(refuse), sleep=lambda _s: None
            )
        except (ValueError, ProviderError) as exc:
            out.append(f"target[{i}]: {exc}")
            continue
        try:
            provider.prepare(target.remote_fields, create_missing=False)
        except ProviderUnreachable:
            pass  # it needed an answer: the online pass asks for it
        except ProviderError as exc:
            if exc.code != "transport":
                out.append(f"target[{i}]: {exc}")
        finally:
            provider.close()
    return out


# -- the schema pass --------------------------------------------------------------------------


def schema_problems(data: Mapping[str, Any], env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(key, message) for each place the data, after ``${VAR}`` substitution, breaks the schema.

    Empty when the optional ``jsonschema`` package is not installed (the loader still checks).
    """
    try:
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:
        return []
    resolved = substitute_env(dict(data), env, "", [])  # unset variables: the loader says so
    schema = config_schema(PROVIDERS)
    validator = jsonschema.Draft202012Validator(schema)
    found: dict[tuple[str, str], None] = {}
    for error in validator.iter_errors(resolved):
        for key, message in _describe(error, jsonschema, schema):
            found[(key, message)] = None
    return sorted(found)


def _describe(error: Any, jsonschema: Any, root: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    if error.validator in ("anyOf", "oneOf") and error.context:
        # the branch that came closest says more than "not valid under any of the schemas"
        yield from _describe(jsonschema.exceptions.best_match(error.context), jsonschema, root)
        return
    path = list(error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        for name in error.validator_value:
            if name not in instance:
                yield _key_text([*path, name]), "required key missing"
    elif error.validator == "additionalProperties" and isinstance(instance, dict):
        known = error.schema.get("properties", {})
        for name in instance:
            if name not in known:
                yield _key_text([*path, name]), _unknown(name, known)
    elif error.validator == "unevaluatedProperties" and isinstance(instance, dict):
        # a [[target]]: the shared keys, then those of its provider's settings
        own = _provider_keys(error.schema, instance, root)
        known = {*error.schema.get("properties", {}), *own}
        for name in instance:
            if name not in known:
                yield _key_text([*path, name]), _unknown(name, known)
    elif error.validator == "not" and isinstance(error.validator_value, dict):
        together = ", ".join(error.validator_value.get("required", ())) or "this"
        yield _key_text(path), f"may not be given together: {together}"
    else:
        # never echo the value itself: it may be an API key
        message, shown = error.message, repr(instance)
        if message.startswith(shown):
            message = "value" + message[len(shown) :]
        yield _key_text(path), message


def _unknown(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")


def _provider_keys(
    schema: Mapping[str, Any], instance: Mapping[str, Any], root: Mapping[str, Any]
) -> set[str]:
    """The keys the ``if``/``then`` branch of ``instance``'s provider adds (``syncd.schemas``:
    ``then`` refers to the provider's settings in ``root``'s ``$defs``)."""
    for branch in schema.get("allOf", ()):
        const = branch.get("if", {}).get("properties", {}).get("provider", {}).get("const")
        if const is not None and const == instance.get("provider"):
            then = branch.get("then", {})
            ref = str(then.get("$ref", ""))
            if ref.startswith("#/$defs/"):
                then = root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {})
            return set(then.get("properties", {}))
    return set()


def _key_text(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _covered(key: str, problem: str) -> bool:
    """Does the loader's ``problem`` already report the schema's finding at ``key``?

    Yes when it names the same key or one inside it (``target[0]`` / ``target[0].name``), or
    names a table holding the key and mentions the key in its message (``target[0]: provider
    octopush needs api_login`` covers ``target[0].api_login``).
    """
    other, _, message = problem.partition(": ")
    if other == key or other.startswith((f"{key}.", f"{key}[")):
        return True
    leaf = re.split(r"[.\[]", key)[-1].rstrip("]")
    inside = other == "(top level)" or key.startswith((f"{other}.", f"{other}["))
    return inside and leaf in message


# -- the online pass --------------------------------------------------------------------------


def probe_target(config: Config, target: TargetConfig, providers: ProviderFactory) -> TargetCheck:
    """Try one target's key and list with read calls only, once (no retries)."""
    check = TargetCheck(target.name, target.provider, target.list_id)
    spec = PROVIDERS[target.provider]
    if not spec.read_only_prepare:  # its prepare may write
        check.notes.append(NOT_CHECKED)
        return check
    check.checked = True
    try:
        provider = providers(config, target.model_copy(update={"retries": 0}))
    except (ValueError, ProviderError) as exc:
        check.checked = False
        check.notes.append(f"{NOT_CHECKED} ({exc})")
        return check
    try:
        provider.prepare(target.remote_fields, create_missing=False)
    except ProviderUnreachable as exc:
        check.reachable = False
        check.problems.append(f"not reachable at {spec.api_root(target)}: {exc}")
    except AuthError as exc:
        check.reachable, check.key_accepted = True, False
        check.problems.append(f"the API key was refused: {exc}")
    except ProviderError as exc:
        _provider_error(check, target, exc)
    else:
        check.reachable = check.key_accepted = check.list_exists = True
    finally:
        provider.close()
    return check


def _provider_error(check: TargetCheck, target: TargetConfig, exc: ProviderError) -> None:
    if exc.code == "transport":  # the request could not be made (a bad base_url, ...)
        check.reachable = False
        check.problems.append(str(exc))
        return
    check.reachable = True
    if exc.code == "list_not_found":
        check.key_accepted, check.list_exists = True, False
        check.problems.append(str(exc))
    elif exc.code == "fields_missing":
        # getLists answered and listed the list, so the key and the list are fine
        check.key_accepted = check.list_exists = True
        if target.create_missing_fields:
            check.notes.append(
                "mapped fields are missing at the provider; the first cycle creates them "
                "(create_missing_fields = true)"
            )
        else:
            check.problems.append(str(exc))
    else:
        check.problems.append(f"unusable answer: {exc}")
