"""``syncd init``: a commented starter configuration and the inbox/outbox folders beside it.

The starter is a complete configuration for one provider: the API key comes from an
environment variable (``${UNISENDER_API_KEY}`` ...), and the values only the user can know (the
list id, Octopush's login) read ``CHANGE-ME``, which syncd refuses until they are replaced
(``syncd init --list-id`` fills the list id in). Its paths are relative: syncd reads them
against the file's own folder, wherever it is started from.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from syncd.errors import StarterExists
from syncd.providers import PROVIDERS
from syncd.providers.spec import PLACEHOLDER, Starter, StarterLine

FOLDER_MODE = 0o700
FILE_MODE = 0o600


class _Starters(Mapping[str, Starter]):
    """Each provider's part of the starter, read from its spec in the provider table."""

    def __getitem__(self, name: str) -> Starter:
        return PROVIDERS[name].starter

    def __iter__(self) -> Iterator[str]:
        return iter(PROVIDERS)

    def __len__(self) -> int:
        return len(PROVIDERS)


STARTERS: Mapping[str, Starter] = _Starters()
PROVIDER_NAMES = tuple(PROVIDERS)


def _toml(text: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(text, ensure_ascii=False)


_COMMENT_COLUMN = 34


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml(name)


def _render(lines: list[StarterLine]) -> str:
    out = []
    for line in lines:
        if isinstance(line, str):
            out.append(line)
        else:
            setting, comment = line
            out.append(f"{setting:<{_COMMENT_COLUMN}}  # {comment}".rstrip())
    return "\n".join(out) + "\n"


def starter_text(
    provider: str,
    folder: Path | None = None,
    *,
    list_id: str | None = None,
    base_url: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> str:
    """The starter ``syncd.toml`` for ``provider``.

    Paths are relative (``./inbox``: syncd reads them against the file's folder) when
    ``folder`` is None, otherwise absolute paths inside ``folder``. ``list_id``, ``base_url``
    (an emulator's API root, say) and ``fields`` (remote = local) fill those settings in.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r} (known: {', '.join(PROVIDERS)})")
    spec = PROVIDERS[provider]
    p = spec.starter

    def place(name: str) -> str:
        return f"./{name}" if folder is None else str(folder / name)

    lines: list[StarterLine] = [
        f"# syncd configuration: one {spec.title} list kept in agreement with a local list.",
        f"# Written by `syncd init --provider {provider}`. Before the first run:",
        f"#   1. export {p.env}=... (the key is read from the environment, never kept here);",
        f"#   2. replace every {PLACEHOLDER} below;",
        "#   3. run `syncd check-config --online`: it tries the key and the list.",
        '# Every key is described in README.md, "Configuration reference"; its JSON Schema is',
        "# printed by `syncd schemas show config` (and installed as share/syncd/schemas/",
        "# config.schema.json under syncd's prefix). ${VAR} in any value is read from the",
        "# environment. Relative paths are read from this file's folder.",
        "",
        "[store]",
        (f"url = {_toml('sqlite:///' + place('syncd.db'))}", "SQLAlchemy URL of the local mirror"),
        "",
        "[inbox]",
        (f"path = {_toml(place('inbox'))}", "contact files (CSV, NDJSON): write beside, rename in"),
        "",
        "[outbox]",
        (f"path = {_toml(place('outbox'))}", "provider-side changes, one NDJSON file per hour"),
        "",
        "[ingest]",
        ('# default_region = "BY"', "read phones written without '+' as this country's"),
        ("reject_role_addresses = true", "refuse info@, sales@, no-reply@ ... at ingestion"),
        "",
        "[http]",
        ('listen = "127.0.0.1:9187"', '/healthz, /readyz, /metrics; "off" disables it'),
        "",
        "[daemon]",
        ("max_parallel = 4", "targets synced at the same time"),
        "",
        "[[target]]",
        ('name = "newsletter"', "unique; used by --target and in logs"),
        (f"provider = {_toml(provider)}", " | ".join(PROVIDERS)),
        (f"list_id = {_toml(list_id or PLACEHOLDER)}", p.list_note),
        ('local_list = "newsletter"', "the local list (the files' `lists` column) feeding it"),
        (f"key = {_toml(p.key)}", f"contacts are matched on their {p.key}"),
        (f'api_key = "${{{p.env}}}"', f"{p.key_note}, from the environment"),
        (
            f'# api_key_file = "${{CREDENTIALS_DIRECTORY}}/{provider}_api_key"',
            "or from a file (one of the two)",
        ),
    ]
    if base_url:
        lines.append((f"base_url = {_toml(base_url)}", "the API root (default: the provider's)"))
    lines += p.lines  # the provider's own keys
    mapped = ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in (fields or {}).items())
    lines += [
        (
            f"fields = {{ {mapped} }}" if mapped else "fields = {}",
            'remote = local field, e.g. { Name = "name", City = "city" }',
        ),
        ('conflict = "local"', "who wins a field edited on both sides: local | remote | manual"),
        (
            'first_sync = "manual"',
            "values differing when a contact first meets: hold (manual) | local | remote",
        ),
        ("max_delete_fraction = 0.2", "a cycle deleting a larger share stops before writing"),
        ('schedule = "5m"', "interval (30s, 5m, 1h) or a five-field cron expression (UTC)"),
    ]
    return _render(lines)


def write_starter(
    path: str | os.PathLike[str],
    provider: str = "unisender",
    force: bool = False,
    **settings: Any,
) -> list[Path]:
    """Write the starter configuration and create inbox/, inbox/processed, inbox/failed, outbox/.

    Folders are created owner-only (0700), the file 0600; folders that exist are left as they
    are. Raises :class:`StarterExists` when the file exists and ``force`` is false. Returns the
    file and the folders this call created. ``settings`` go to :func:`starter_text`.
    """
    config = Path(path)
    folder = config.parent
    text = starter_text(provider, None, **settings)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        # "x" refuses an existing file atomically; "w" replaces it when forced
        with config.open("w" if force else "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise StarterExists(
            f"{config} already exists; nothing was written (use --force to overwrite it)"
        ) from None
    config.chmod(FILE_MODE)
    created = [config]
    for name in ("inbox", "inbox/processed", "inbox/failed", "outbox"):
        sub = folder / name
        if not sub.exists():
            sub.mkdir(mode=FOLDER_MODE)
            sub.chmod(FOLDER_MODE)  # mkdir's mode is cut by the umask
            created.append(sub)
    return created
