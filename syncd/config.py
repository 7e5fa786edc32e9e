"""The configuration file: TOML, ``${VAR}`` from the environment, validated as a whole.

Every problem is reported at once, each with the file and the key it concerns, so a user fixes a
config in one round trip. The models here are also the source of ``schemas/config.schema.json``.

A ``[[target]]`` table holds the keys every provider shares (:class:`TargetConfig`) beside the
provider's own keys, which the provider declares in its settings model (a
:class:`ProviderSettings`). This module knows no provider: ``parse_config`` and ``load_config``
are given the provider table (``syncd.providers.registry.PROVIDERS``, a mapping of
:class:`ProviderRules`) and validate each target's own keys, API root and reference field with
its provider's rules. A ``TargetConfig`` built directly, without a table, keeps the provider's
keys unchecked in ``model_extra``; the providers read them through their settings model.
"""

from __future__ import annotations

import base64
import codecs
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from syncd.errors import ConfigError
from syncd.schedule import Interval, parse_schedule

Policy = Literal["local", "remote", "manual"]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: What the starter configuration writes where only the user knows the value (``syncd init``).
PLACEHOLDER = "CHANGE-ME"
_CONTEXT_KEY = "providers"  # where the provider table travels in pydantic's validation context


class _Strict(BaseModel):
    # strict: a TOML value keeps its type, so max_parallel = "4" is refused rather than read as
    # 4, as a string key given a number is; the one key that takes both (list_id) says so
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ProviderSettings(_Strict):
    """A provider's own keys of a ``[[target]]`` table; each provider subclasses it.

    Its fields sit beside the shared keys in the same flat table; a key that neither declares is
    refused by name.
    """

    @classmethod
    def of(cls, target: TargetConfig) -> Self:
        """These settings as ``target`` gives them (its keys that are not shared ones)."""
        return cls.model_validate(target.model_extra or {})

    def listener_key(self) -> str | None:
        """The key, when set, that has the provider call syncd's HTTP listener (else None)."""
        return None


class ProviderCapabilities(Protocol):
    """What configuration reads of a provider's declared capabilities."""

    @property
    def reference(self) -> bool: ...

    @property
    def hooks(self) -> str: ...


class ProviderRules(Protocol):
    """What configuration needs of a provider (``syncd.providers.spec.ProviderSpec`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def default_url(self) -> str: ...  # the API root; ``{lang}`` is the target's language

    @property
    def settings(self) -> type[ProviderSettings]: ...

    @property
    def capabilities(self) -> ProviderCapabilities: ...


ProviderTable = Mapping[str, ProviderRules]


def _table(info: ValidationInfo) -> ProviderTable | None:
    """The provider table given to ``parse_config`` (None: a model built directly)."""
    context = info.context
    return context.get(_CONTEXT_KEY) if isinstance(context, Mapping) else None


class StoreConfig(_Strict):
    url: str = Field("sqlite:///./syncd.db", description="SQLAlchemy URL of the mirror.")

    @field_validator("url")
    @classmethod
    def _driver_installed(cls, value: str) -> str:
        """The database and its driver are known here, not at the first cycle (the URL itself
        is never repeated: it may hold a password)."""
        return database_url(value)


def database_url(value: str) -> str:
    """``value`` when it is a database URL whose driver is installed; else a ValueError that
    never repeats the URL (it may hold a password)."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            "not a database URL (e.g. sqlite:///./syncd.db or postgresql+psycopg://...)"
        ) from None
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ValueError(
            f"unknown database {url.drivername!r} (sqlite or postgresql+psycopg)"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ValueError(
            f"the database driver of {url.drivername!r} is not installed ({exc.name}); for "
            "PostgreSQL install syncd[postgres] and write postgresql+psycopg://"
        ) from None
    return value


class InboxConfig(_Strict):
    path: str = Field("./inbox", description="Folder watched for contact files.")


class OutboxConfig(_Strict):
    path: str = Field(
        "./outbox", description="Folder for NDJSON change events from providers (one file/hour)."
    )


class HttpConfig(_Strict):
    listen: str = Field(
        "127.0.0.1:9187",
        description="host:port for /healthz, /readyz, /metrics and Netcore's /jobs/ (files and "
        "callbacks); 'off' disables the listener.",
    )

    ingest_token: SecretStr | None = Field(
        None,
        description="Bearer token of the ingest API (POST /v1/contacts, GET /v1/contacts/KEY); "
        "use ${VAR}. Not set or empty: the API is off.",
    )
    max_body: int = Field(
        8 << 20,
        ge=1 << 10,
        le=32 << 20,
        description="Largest body of POST /v1/contacts, in bytes (a larger one is answered "
        "413); without ingest_token the listener takes at most 1 MiB.",
    )

    public_url: str | None = Field(
        None,
        description="The address providers reach this listener at, e.g. "
        "'https://sync.example.com' (a reverse proxy in front of `listen`): provider webhooks "
        "are installed as {public_url}/hooks/{target}/{token}. Needed by targets with hooks.",
    )

    @property
    def enabled(self) -> bool:
        return self.listen.strip().lower() not in ("", "off", "false", "no")

    @field_validator("public_url")
    @classmethod
    def _usable_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = value.strip().rstrip("/")
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in ("http", "https") or not rest or "?" in rest or "#" in rest:
            raise ValueError(
                f"public_url must be an http(s):// address without query or fragment, not {value!r}"
            )
        return url

    @property
    def ingest_enabled(self) -> bool:
        return self.enabled and bool(self.ingest_token and self.ingest_token.get_secret_value())

    @field_validator("ingest_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and 0 < len(value.get_secret_value()) < 16:
            raise ValueError("ingest_token must be at least 16 characters (a random one)")
        return value

    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @model_validator(mode="after")
    def _check_listen(self) -> HttpConfig:
        if self.enabled:
            host, _, port = self.listen.rpartition(":")
            if not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError(f"listen must be host:port or 'off', not {self.listen!r}")
        return self


class DaemonConfig(_Strict):
    max_parallel: int = Field(4, ge=1, le=64, description="Targets synced at the same time.")
    stop_timeout: float = Field(
        10.0, gt=0, description="Seconds a stop waits for the batch in flight before exiting."
    )
    debounce: float = Field(
        0.5, ge=0, description="Seconds the inbox waits for a burst of files to settle."
    )
    ready_failing_for: float = Field(
        900.0, gt=0, description="/readyz fails once a target's cycles fail for longer than this."
    )
    retry_backoff_max: float = Field(
        300.0, gt=0, description="Longest wait before retrying a failed cycle (seconds)."
    )
    lease_timeout: float = Field(
        60.0,
        ge=1,
        description="Seconds a target's lease lasts unless renewed (every third of it while a "
        "cycle runs): a replica that dies gives its targets up to the others after this long.",
    )
    hook_check_interval: float = Field(
        300.0,
        ge=1,
        description="Seconds between checks of the provider webhooks of targets with hooks: a "
        "hook the provider stopped (after 24 h of failed deliveries) is installed again.",
    )


class IngestConfig(_Strict):
    default_region: str | None = Field(
        None,
        description="ISO country code used to read phones written without '+' (e.g. 'BY'). "
        "Without it such phones are rejected.",
    )
    reject_role_addresses: bool = Field(
        True, description="Reject role addresses (info@, sales@, no-reply@ ...) at ingestion."
    )
    encoding: str | None = Field(
        None,
        description="Text encoding of contact files without a byte order mark (default UTF-8), "
        "e.g. 'cp1251' for a Russian Excel export. A UTF-16/32 byte order mark wins.",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, cp1251, latin-1)") from None
        return value


WebhookEvent = Literal[
    "contact.created", "contact.updated", "contact.unsubscribed", "contact.deleted"
]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = (
    "contact.created",
    "contact.updated",
    "contact.unsubscribed",
    "contact.deleted",
)
_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}


def _duration_seconds(value: str, key: str) -> float:
    """A duration such as '30d' or '12h', in seconds; anything else is refused naming ``key``."""
    try:
        interval = parse_schedule(value)
    except ValueError:
        interval = None
    if not isinstance(interval, Interval):
        raise ValueError(f"{key} {value!r} must be a duration such as '30d' or '12h'")
    return float(interval.amount * _SECONDS[interval.unit])


class HistoryConfig(_Strict):
    keep: str = Field(
        "30d",
        description="How long each contact's history (`syncd explain`) is kept: '30d', '12h'. "
        "The daemon prunes older rows.",
    )

    @field_validator("keep")
    @classmethod
    def _check_keep(cls, value: str) -> str:
        _duration_seconds(value, "keep")
        return value

    @property
    def keep_seconds(self) -> float:
        return _duration_seconds(self.keep, "keep")


def _webhook_secret(value: SecretStr | None, key: str) -> SecretStr | None:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of at least 24 random bytes."""
    if value is None:
        return None
    raw = value.get_secret_value().strip()
    try:
        decoded = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ValueError(f"{key} must be whsec_ followed by base64") from None
    if len(decoded) < 24:
        raise ValueError(f"{key} must hold at least 24 random bytes (it holds {len(decoded)})")
    return SecretStr(raw)


class WebhookConfig(_Strict):
    """Every change event is sent at least once, in order per contact; failures are retried
    with exponential backoff until ``max_age``, then kept as dead letters (``syncd status``,
    ``syncd webhooks replay``). A 410 Gone answer turns the endpoint off."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Unique name.")
    url: str = Field(description="https:// endpoint (http:// only to this machine).")
    secret: SecretStr = Field(
        description="Signing secret: whsec_ and the base64 of 24+ random bytes (Standard "
        "Webhooks); use ${VAR}."
    )
    previous_secret: SecretStr | None = Field(
        None,
        description="During a rotation: the old secret, which signs too until it is removed.",
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(WEBHOOK_EVENTS),
        min_length=1,
        description="Event types sent (default: all).",
    )
    timeout: float = Field(
        10.0, gt=0, le=120, description="Seconds an answer may take; 2xx within it confirms."
    )
    max_age: str = Field(
        "3d", description="How long an event is retried before it is dead-lettered ('3d', '12h')."
    )
    backoff_first: float = Field(
        20.0,
        gt=0,
        le=3600,
        description="Seconds before the first retry (jittered down to half); each retry doubles.",
    )
    backoff_max: float = Field(3600.0, gt=0, description="Longest wait between two attempts.")

    @field_validator("url")
    @classmethod
    def _safe_url(cls, value: str) -> str:
        import httpx  # only to check a webhook's URL: every command loads the configuration

        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"url {value!r} is not a usable URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"url {value!r} must be an https:// URL")
        if url.scheme == "http" and not is_loopback_host(url.host):
            raise ValueError(
                f"url {value!r} would send contacts unencrypted to {url.host}: use https:// "
                "(http:// only to this machine)"
            )
        return value

    @field_validator("secret", "previous_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        return _webhook_secret(value, str(info.field_name))

    @field_validator("max_age")
    @classmethod
    def _check_max_age(cls, value: str) -> str:
        try:
            schedule = parse_schedule(value)
        except ValueError:
            schedule = None
        if not isinstance(schedule, Interval):
            raise ValueError(f"max_age {value!r} must be a duration such as '3d' or '12h'")
        return value

    @property
    def max_age_seconds(self) -> float:
        interval = parse_schedule(self.max_age)
        assert isinstance(interval, Interval)
        return float(interval.amount * _SECONDS[interval.unit])

    def secrets(self) -> list[str]:
        """The secrets that sign each delivery: the current one first."""
        found = [self.secret, self.previous_secret]
        return [s.get_secret_value() for s in found if s is not None]


#: The Unisender/Selzy events asked for by default: a list unsubscribe or subscribe, the address's
#: status, its data, its removal. The names are [ASSUMED] (unisender-selzy.md, "Event
#: notifications"): ``hook_events`` replaces them.
HOOK_EVENTS = ("unsubscribe", "subscribe", "email_status", "contact_update", "contact_delete")


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as '30s', '5m', '24h' or '3d'; ValueError for anything else."""
    try:
        schedule = parse_schedule(text)
    except ValueError:
        schedule = None
    if not isinstance(schedule, Interval):
        raise ValueError(f"{text!r} must be a duration such as '5m', '24h' or '3d'")
    return float(schedule.amount * _SECONDS[schedule.unit])


class SourceConfig(_Strict):
    """A query over the company's own database, read on a schedule into one local list: each
    read is diffed against the previous one, so changed rows become edits, new rows creates and
    vanished rows leave the list (under the mass-delete guard). The read is read-only, in one
    transaction, and bounded by ``timeout``; a failed read changes nothing."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Unique source name.")
    url: SecretStr = Field(
        description="SQLAlchemy URL of the database read (postgresql+psycopg://, sqlite:///, "
        "mysql+pymysql://); use ${VAR}: it holds credentials and is never shown."
    )
    query: str = Field(
        min_length=1,
        description="One SELECT; its columns map like a contact file's (email, phone, tags, "
        "lists, status, unsubscribed, delete; any other column is a custom field).",
    )
    list: str = Field(
        min_length=1, pattern=r"^[^,]*\S[^,]*$", description="The local list the rows feed."
    )
    key: Literal["email", "phone"] = Field(
        "email", description="The column that identifies a row's contact."
    )
    every: str | None = Field(
        None, description="Read at this interval ('5m', '1h'); default '5m' when cron is unset."
    )
    cron: str | None = Field(None, description="Or read on this five-field cron schedule (UTC).")
    before_cycle: bool = Field(
        True, description="Also read just before each cycle of a target fed by `list`."
    )
    mode: Literal["snapshot", "cursor"] = Field(
        "snapshot",
        description="snapshot: every read is the whole result, diffed against the last one; "
        "cursor: only rows whose cursor_column passed the last value seen (minus overlap), "
        "with a full snapshot every full_every to find deletes.",
    )
    cursor_column: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="cursor mode: a column of the query that grows on each change (a "
        "timestamp, or a number).",
    )
    overlap: str = Field(
        "5m",
        description="cursor mode: rows this far behind the last value seen are read again "
        "(transactions that commit late). A numeric cursor takes it in seconds.",
    )
    full_every: str = Field(
        "24h", description="cursor mode: a full snapshot this often, which finds deletes."
    )
    timeout: float = Field(
        300.0, gt=0, description="Seconds a read may take (query and rows); then it is abandoned."
    )

    @field_validator("url")
    @classmethod
    def _usable_url(cls, value: SecretStr) -> SecretStr:
        database_url(value.get_secret_value())
        return value

    @field_validator("every", "overlap", "full_every")
    @classmethod
    def _durations(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            try:
                duration_seconds(value)
            except ValueError as exc:
                raise ValueError(f"{info.field_name} {exc}") from None
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and isinstance(parse_schedule(value), Interval):
            raise ValueError(f"cron {value!r} is an interval: write it as every = {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SourceConfig:
        if self.every is not None and self.cron is not None:
            raise ValueError("give every or cron, not both")
        if self.mode == "cursor" and self.cursor_column is None:
            raise ValueError("mode = 'cursor' needs cursor_column (e.g. 'updated_at')")
        if self.mode == "snapshot" and self.cursor_column is not None:
            raise ValueError("cursor_column is only read in mode = 'cursor'")
        return self

    @property
    def schedule(self) -> str:
        """The schedule in ``syncd.schedule``'s syntax: ``cron``, else ``every`` (default 5m)."""
        return self.cron or self.every or "5m"

    @property
    def overlap_seconds(self) -> float:
        return duration_seconds(self.overlap)

    @property
    def full_every_seconds(self) -> float:
        return duration_seconds(self.full_every)


class TargetConfig(BaseModel):
    # The keys every provider shares (no docstring: it would become the schema's description).
    # The provider's own keys stay in ``model_extra``, checked with its settings model when
    # ``parse_config`` is given the provider table.
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Unique target name.")
    provider: str
    list_id: str = Field(
        min_length=1,
        description="The remote list (a number is read as its text).",
        json_schema_extra={"type": ["string", "integer"]},
    )
    local_list: str | None = Field(None, description="Local list feeding it (default: name).")
    key: Literal["email", "phone"] = "email"
    api_key: SecretStr = Field(
        description="API key (sms.by: the token); use ${VAR} to take it from the environment."
    )
    api_key_file: str | None = Field(
        None,
        description="Read the API key from this file instead (e.g. "
        "'${CREDENTIALS_DIRECTORY}/unisender_api_key' with systemd's LoadCredential=).",
    )
    callback_timeout: float = Field(
        3600.0,
        gt=0,
        description="Netcore: seconds a bulk upload may wait for its callback; after that its "
        "rows are sent again by the next cycle.",
    )
    base_url: str | None = Field(
        None,
        description="API root; default is the provider's own. https://, or http:// only to "
        "this machine (127.0.0.0/8, ::1, localhost): the key is never sent in clear.",
    )
    lang: str = Field("en", pattern=r"^[a-z]{2}$")
    fields: dict[str, str] = Field(
        default_factory=dict, description="Remote field name = local field name."
    )
    reference_field: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
        description="Unisender/Selzy: a custom field at the provider that holds syncd's stable id "
        "of each contact (created like the mapped fields), so that a create whose answer was lost, "
        "or a contact whose key changed at the provider, is recognised instead of duplicated. "
        "Not set: no such field.",
    )
    conflict: Policy | dict[str, Policy] = Field(
        "local",
        description="Who wins a field changed on both sides: local | remote | manual, or a table "
        "{ default = ..., RemoteField = ... } for per-field overrides.",
    )
    first_sync: Policy = Field(
        "manual",
        description="A contact on both sides with no history yet (a first sync against a filled "
        "list) whose fields differ: manual holds it as a conflict (syncd conflicts, syncd resolve "
        "--all), local or remote takes that side's values. Equal values are simply agreed; an "
        "opt-out stays whatever is chosen.",
    )
    on_local_delete: Literal["delete", "exclude"] = "delete"
    on_edit_delete: Literal["edit", "delete"] = Field(
        "edit", description="When one side edits and the other deletes: which wins."
    )
    max_delete_fraction: float = Field(0.2, ge=0.0, le=1.0)
    export_mode: Literal["async", "paged"] = Field(
        "async", description="async exportContacts with a CSV download, or the legacy paged call."
    )
    export_poll_interval: float = Field(2.0, gt=0)
    export_timeout: float = Field(600.0, gt=0)
    create_missing_fields: bool = True
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for one answer.")
    retries: int = Field(2, ge=0, le=10, description="Further tries after a timeout or 5xx.")
    rate_limit_per_minute: int = Field(1200, gt=0, description="API calls per minute per key.")
    export_rate_limit_per_minute: int = Field(
        20, gt=0, description="async/exportContacts calls per minute per key (provider: 20)."
    )
    schedule: str = Field(
        "5m", description="Interval ('30s', '5m', '1h') or a five-field cron expression."
    )
    jitter: float = Field(10.0, ge=0, description="Up to this many seconds added to each run.")
    hooks: bool = Field(
        False,
        description="Take the provider's event notifications at POST /hooks/{target}/{token}: "
        "each names contacts that are then re-read and reconciled at once (Octopush: a STOP "
        "opts the number out). Needs [http] listen and public_url; see `syncd hooks install`.",
    )
    hook_auth: Literal["on", "off"] = Field(
        "on",
        description="Unisender/Selzy: check each hook's `auth` (MD5 of the body with the API key "
        "in its place, an [ASSUMED] recipe); 'off' if the provider signs differently (the "
        "re-read keeps it safe: a hook is only a prompt).",
    )
    hook_events: list[str] = Field(
        default_factory=lambda: list(HOOK_EVENTS),
        min_length=1,
        description="Unisender/Selzy: the event names `syncd hooks install` asks for "
        "([ASSUMED] names: the provider's pages do not list them).",
    )

    # the provider's default API root, from the provider table (see ``bind_default_url``)
    _default_url: str | None = PrivateAttr(None)

    @field_validator("list_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        """An id is a name, but providers show numbers: ``list_id = 1`` means ``"1"``."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str, info: ValidationInfo) -> str:
        table = _table(info)
        if table is not None and value not in table:
            raise ValueError(f"unknown provider {value!r} (known: {', '.join(table)})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _key_from_file(cls, data: Any) -> Any:
        """``api_key_file`` fills ``api_key`` (exactly one of the two must be given)."""
        if not isinstance(data, dict) or data.get("api_key_file") in (None, ""):
            return data
        if data.get("api_key") not in (None, ""):
            raise ValueError("give api_key or api_key_file, not both")
        path = Path(str(data["api_key_file"]))
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"api_key_file {path}: cannot read it ({exc.strerror})") from None
        if not key:
            raise ValueError(f"api_key_file {path}: the file is empty")
        return {**data, "api_key": key}

    @model_validator(mode="after")
    def _provider_rules(self, info: ValidationInfo) -> TargetConfig:
        """The provider's own keys, its default API root and whether it can keep a reference."""
        table = _table(info)
        if table is None:
            return self
        rules = table[self.provider]
        rules.settings.of(self)  # a ValidationError names each of its keys at fault
        self._default_url = rules.default_url
        if self.hooks and not rules.capabilities.hooks:
            raise ValueError(
                f"hooks: provider {self.provider} sends no event notifications; remove the setting"
            )
        if self.reference_field is not None and not rules.capabilities.reference:
            raise ValueError(
                f"reference_field: provider {self.provider} cannot keep it (it needs custom "
                "fields and an export to read them back); remove the setting"
            )
        return self

    @model_validator(mode="after")
    def _key_never_in_clear(self) -> TargetConfig:
        """The API key travels in every request: only over TLS, or to this machine itself."""
        if self.base_url is None and self._default_url is None:
            return self  # built without a provider table: the provider's own root, https://
        root = self.api_root
        scheme, _, rest = root.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https") or not rest:
            raise ValueError(f"base_url {root!r} must be an https:// (or loopback http://) URL")
        if scheme == "http":
            import httpx  # only to check a loopback base_url: every command loads the config

            try:
                host = httpx.URL(root).host  # the host httpx will connect to, parsed its way
            except httpx.InvalidURL as exc:
                raise ValueError(f"base_url {root!r} is not a usable URL: {exc}") from None
            if not is_loopback_host(host):
                raise ValueError(
                    f"base_url {root!r} would send the API key unencrypted to {host or 'no host'}, "
                    "which is not this machine: use https://, or http:// only to 127.0.0.0/8, "
                    "::1 or localhost (an emulator)"
                )
        return self

    @model_validator(mode="after")
    def _check_reference_field(self) -> TargetConfig:
        if self.reference_field is None:
            return self
        if self.reference_field in self.fields:
            raise ValueError(
                f"reference_field {self.reference_field!r} is also in `fields`: syncd owns the "
                "reference field, so it cannot carry a local field too"
            )
        return self

    @property
    def remote_fields(self) -> list[str]:
        """Every custom field a cycle writes and reads: the mapped ones, then the reference."""
        return [*self.fields, *([self.reference_field] if self.reference_field else [])]

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @property
    def local_list_name(self) -> str:
        return self.local_list or self.name

    @property
    def api_root(self) -> str:
        """``base_url``, else the provider's default root (known once a provider table has
        validated this target, or ``bind_default_url`` was called)."""
        if self.base_url:
            return self.base_url.rstrip("/")
        if self._default_url is None:
            raise ValueError(
                f"target {self.name!r}: no base_url, and the default API root of provider "
                f"{self.provider!r} is not known here (validate it with the provider table)"
            )
        return self._default_url.format(lang=self.lang).rstrip("/")

    def same_account(self, other: TargetConfig) -> bool:
        """Both targets reach one account of one provider (its API root and key): the
        contacts there, their tags and status, are the same records for both lists."""
        try:
            same_root = self.api_root == other.api_root
        except ValueError:  # a default root not known here: cannot tell, so not the same
            return False
        key, other_key = self.api_key.get_secret_value(), other.api_key.get_secret_value()
        return self.provider == other.provider and same_root and key == other_key

    def bind_default_url(self, default_url: str) -> TargetConfig:
        """This target knowing its provider's default API root (a copy when it did not)."""
        if self._default_url == default_url:
            return self
        bound = self.model_copy()
        bound._default_url = default_url
        return bound

    def policy_for(self, remote_field: str) -> Policy:
        if isinstance(self.conflict, str):
            return self.conflict
        return self.conflict.get(remote_field, self.conflict.get("default", "local"))

    @model_validator(mode="after")
    def _check_conflict_table(self) -> TargetConfig:
        if isinstance(self.conflict, dict):
            unknown = set(self.conflict) - {"default", *self.fields, "tags", "status"}
            if unknown:
                raise ValueError(f"conflict names fields not in `fields`: {sorted(unknown)}")
        return self


class Config(_Strict):
    store: StoreConfig = StoreConfig()
    inbox: InboxConfig = InboxConfig()
    outbox: OutboxConfig = OutboxConfig()
    ingest: IngestConfig = IngestConfig()
    http: HttpConfig = HttpConfig()
    daemon: DaemonConfig = DaemonConfig()
    history: HistoryConfig = HistoryConfig()
    target: list[TargetConfig] = Field(default_factory=list)
    webhook: list[WebhookConfig] = Field(default_factory=list)
    source: list[SourceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_sources(self) -> Config:
        names = [s.name for s in self.source]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate source name(s): {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _unique_webhooks(self) -> Config:
        names = [w.name for w in self.webhook]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate webhook name(s): {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _listener_for_callbacks(self, info: ValidationInfo) -> Config:
        table = _table(info)
        if table is None or self.http.enabled:
            return self
        keys = {t.name: table[t.provider].settings.of(t).listener_key() for t in self.target}
        needing = [name for name, key in keys.items() if key]
        if needing:
            said = " / ".join(sorted({key for key in keys.values() if key}))
            raise ValueError(
                f"target(s) {', '.join(needing)} set {said}, which is served by the HTTP "
                'listener: set [http] listen (it is "off")'
            )
        return self

    @model_validator(mode="after")
    def _listener_for_hooks(self) -> Config:
        hooked = [t.name for t in self.target if t.hooks]
        if hooked and (not self.http.enabled or not self.http.public_url):
            raise ValueError(
                f"target(s) {', '.join(hooked)} set hooks = true: the provider reaches them "
                "through the HTTP listener, so set [http] listen and [http] public_url"
            )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        names = [t.name for t in self.target]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate target name(s): {', '.join(dupes)}")
        return self

    def targets(self, name: str | None = None) -> list[TargetConfig]:
        if name is None:
            return list(self.target)
        chosen = [t for t in self.target if t.name == name]
        if not chosen:
            known = ", ".join(t.name for t in self.target) or "none"
            raise ConfigError("command line", [f"--target {name}: no such target (known: {known})"])
        return chosen

    def account_peers(self, target: TargetConfig) -> tuple[str, ...]:
        """The other targets on ``target``'s provider account (``TargetConfig.same_account``)."""
        return tuple(
            t.name for t in self.target if t.name != target.name and t.same_account(target)
        )

    def sources(self, name: str | None = None) -> list[SourceConfig]:
        if name is None:
            return list(self.source)
        chosen = [s for s in self.source if s.name == name]
        if not chosen:
            known = ", ".join(s.name for s in self.source) or "none"
            raise ConfigError("command line", [f"--source {name}: no such source (known: {known})"])
        return chosen


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x.x.x) or the name localhost."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # any other name may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("SYNCD_CONFIG")
    return Path(env) if env else Path("syncd.toml")


def substitute_env(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Replace ``${VAR}`` in every string; a missing variable is a problem naming it."""
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in env:
                problems.append(f"{path}: environment variable {var} is not set")
                return ""
            return env[var]

        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {
            k: substitute_env(v, env, f"{path}.{k}" if path else k, problems)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int", "dict[str,literal['local','remote','manual']]") or (
            "literal[" in str(part)
        ):
            continue  # pydantic's union branch names add nothing for the reader
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


#: pydantic's error types in syncd's words (the value itself is never shown: it may be a key)
_MESSAGES = {
    "missing": "required key missing",
    "string_type": "must be text in quotes",
    "int_type": "must be a whole number, without quotes (e.g. 4)",
    "int_from_float": "must be a whole number (e.g. 4)",
    "float_type": "must be a number, without quotes (e.g. 2.5)",
    "bool_type": "must be true or false, without quotes",
    "dict_type": "must be a table ({ key = value, ... })",
    "list_type": "must be a list",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
}


def _message(err: Mapping[str, Any], known: list[str] | None) -> str:
    kind = str(err["type"])
    if kind == "extra_forbidden":
        leaf = str(err["loc"][-1]) if err["loc"] else ""
        close = difflib.get_close_matches(leaf, known or [], n=1, cutoff=0.6)
        return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    text = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        text = text.removeprefix(prefix)
    return text.replace("Input should be", "must be").replace("String should", "must")


def _either(messages: list[str]) -> str:
    """One key's messages as one: ``must be 'local' or 'remote', or a table``."""
    if len(messages) > 1 and all(m.startswith("must be ") for m in messages):
        return ", or ".join([messages[0], *(m.removeprefix("must be ") for m in messages[1:])])
    return "; ".join(messages)


def _known_keys(
    loc: tuple[Any, ...], data: Mapping[str, Any], table: ProviderTable
) -> list[str] | None:
    """The keys the table at ``loc``'s parent takes (None: not a table syncd knows)."""
    parent = loc[:-1]
    if not parent:
        return list(Config.model_fields)
    if parent[0] == "target" and len(parent) == 2 and isinstance(parent[1], int):
        keys = list(TargetConfig.model_fields)
        targets = data.get("target")
        entry = targets[parent[1]] if isinstance(targets, list) and parent[1] < len(targets) else {}
        provider = entry.get("provider") if isinstance(entry, dict) else None
        if isinstance(provider, str) and provider in table:
            keys += list(table[provider].settings.model_fields)
        return keys
    if len(parent) == 2 and parent[0] in ("source", "webhook") and isinstance(parent[1], int):
        return list((SourceConfig if parent[0] == "source" else WebhookConfig).model_fields)
    if len(parent) == 1 and parent[0] in Config.model_fields:
        model = Config.model_fields[str(parent[0])].annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            return list(model.model_fields)
    return None


def _placeholders(value: Any, path: str) -> list[str]:
    """Each value still reading the starter's ``CHANGE-ME``."""
    if isinstance(value, str):
        if PLACEHOLDER in value:
            return [f"{path}: still reads {PLACEHOLDER}: replace it with the real value"]
        return []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _placeholders(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _placeholders(v, f"{path}[{i}]")]
    return []


def _sqlite_file(url: str) -> str | None:
    """The database file an SQLite URL names (None: another database, memory, or no URL)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # the store reports a URL it cannot read when it opens it
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else database


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """The relative paths of ``data`` made absolute against ``base``, the config file's folder.

    A service is started from anywhere (systemd: /; cron: the home folder): the same file must
    name the same store, inbox and outbox wherever that is.
    """
    out = dict(data)

    def table(name: str) -> dict[str, Any] | None:
        value = out.get(name)
        if not isinstance(value, dict):
            return None
        copy = dict(value)
        out[name] = copy
        return copy

    def absolute(path: str) -> str:
        return path if Path(path).is_absolute() else str(base / path)

    store = table("store")
    if store is not None and isinstance(store.get("url"), str):
        database = _sqlite_file(store["url"])
        if database is not None and not Path(database).is_absolute():
            store["url"] = (
                make_url(store["url"]).set(database=absolute(database)).render_as_string(False)
            )
    if isinstance(out.get("source"), list):
        out["source"] = [_source_paths(entry, absolute) for entry in out["source"]]
    for name in ("inbox", "outbox"):
        folder = table(name)
        if folder is not None and isinstance(folder.get("path"), str):
            folder["path"] = absolute(folder["path"])
    if isinstance(out.get("target"), list):
        out["target"] = [
            {**t, "api_key_file": absolute(t["api_key_file"])}
            if isinstance(t, dict) and isinstance(t.get("api_key_file"), str) and t["api_key_file"]
            else t
            for t in out["target"]
        ]
    return out


def _source_paths(entry: Any, absolute: Callable[[str], str]) -> Any:
    """A source reading an SQLite file by a relative path reads it from the config's folder."""
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        return entry
    database = _sqlite_file(entry["url"])
    if database is None or Path(database).is_absolute():
        return entry
    url = make_url(entry["url"]).set(database=absolute(database)).render_as_string(False)
    return {**entry, "url": url}


def _store_folder_problems(config: Config, base: Path) -> list[str]:
    """A missing folder for the SQLite file is created only inside the config's own folder."""
    database = _sqlite_file(config.store.url)
    if database is None:
        return []
    folder = Path(database).parent
    if folder.exists() or folder.resolve().is_relative_to(base.resolve()):
        return []
    return [
        f"store.url: the folder {folder} does not exist; create it (syncd creates folders only "
        f"inside the configuration's folder {base})"
    ]


def _unknown_target_keys(data: Mapping[str, Any], table: ProviderTable) -> list[str]:
    """Found before validation: the provider's check of its own keys runs only once the shared
    keys are valid, and a misspelt key belongs in the same list as every other problem."""
    targets = data.get("target")
    problems = []
    for i, target in enumerate(targets if isinstance(targets, list) else []):
        if not isinstance(target, dict) or target.get("provider") not in table:
            continue
        try:
            table[target["provider"]]
        except ValueError:
            continue  # a provider that cannot be loaded: the validation names it
        known = _known_keys(("target", i, ""), data, table) or []
        for key in target:
            if key not in known:
                err = {"type": "extra_forbidden", "loc": ("target", i, key), "msg": ""}
                problems.append(f"{_loc(('target', i, key))}: {_message(err, known)}")
    return problems


def _duplicate_names(data: Mapping[str, Any]) -> list[str]:
    """Found before validation, so they are listed with every other problem."""
    targets = data.get("target")
    if not isinstance(targets, list):
        return []
    names = [t.get("name") for t in targets if isinstance(t, dict)]
    dupes = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    return [f"target: duplicate target name(s): {', '.join(dupes)}"] if dupes else []


def parse_config(
    data: Mapping[str, Any],
    source: str,
    env: Mapping[str, str] | None = None,
    *,
    providers: ProviderTable,
    base: Path | None = None,
) -> Config:
    """Validate ``data`` as a whole; ``providers`` is the provider table (name -> its rules).

    ``base`` is the folder of the file ``data`` came from: relative paths in it (the store,
    inbox, outbox, api_key_file) are taken from there, not from the working folder. Without it
    they stay relative to the working folder.
    """
    problems: list[str] = []
    resolved = substitute_env(dict(data), os.environ if env is None else env, "", problems)
    problems += _duplicate_names(resolved) + _placeholders(resolved, "")
    problems += _unknown_target_keys(resolved, providers)
    if base is not None:
        resolved = _resolve_paths(resolved, base)
    try:
        config = Config.model_validate(resolved, context={_CONTEXT_KEY: providers})
    except ValidationError as exc:
        said: dict[str, list[str]] = {}  # key -> its messages (a union says one per branch)
        for err in exc.errors():
            loc = tuple(err["loc"])
            known = (
                _known_keys(loc, resolved, providers) if err["type"] == "extra_forbidden" else None
            )
            message = _message(err, known)
            if message not in said.setdefault(_loc(loc), []):
                said[_loc(loc)].append(message)
        problems += [f"{key}: {_either(messages)}" for key, messages in said.items()]
        raise ConfigError(source, sorted(set(problems))) from None
    if base is not None:
        problems += _store_folder_problems(config, base)
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(
    explicit: str | os.PathLike[str] | None = None, *, providers: ProviderTable
) -> Config:
    path = find_config_path(explicit)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found (use --config or $SYNCD_CONFIG)"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse_config(data, str(path), providers=providers, base=path.absolute().parent)
