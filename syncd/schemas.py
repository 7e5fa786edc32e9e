"""JSON Schemas (draft 2020-12) of syncd's files, generated from the code's own models.

Six schemas live in ``schemas/`` and are checked by the tests against what this module
generates, so they cannot drift from the code:

- ``config.schema.json``: the configuration file (``syncd.config.Config``), as TOML data, with
  each built-in provider's own ``[[target]]`` keys from its settings model (the provider table,
  ``syncd.providers.registry``);
- ``inbox-record.schema.json``: one record of an inbox file (:class:`InboxRecord`): an NDJSON
  object, or a CSV row read as an object of string cells (``$defs/CsvRow``);
- ``change-event.schema.json``: one line of an outbox file, and the body of a webhook
  (``syncd.local.change_event.event_schema``);
- ``ingest-answer.schema.json``: the answer of ``POST /v1/contacts``
  (``syncd.local.intake.answer_schema``);
- ``explain.schema.json`` and ``runs.schema.json``: what ``syncd explain KEY --json`` and
  ``syncd runs --json`` print (``syncd.commands.explain``).

The README's configuration reference is rendered from the config schema by
:func:`config_reference_markdown`. ``syncd schemas write`` regenerates the schema files and the
README's reference; ``syncd schemas check`` lists what is stale (the commands are in ``syncd.cli``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from syncd.commands import explain
from syncd.config import Config
from syncd.core.projection import STATUSES
from syncd.local import change_event, intake
from syncd.local.ingest.read import RESERVED
from syncd.providers.registry import BUILTIN_PROVIDERS
from syncd.providers.spec import ProviderSpec

log = logging.getLogger(__name__)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
CONFIG_ID = "urn:syncd:schema:config:1"
INBOX_RECORD_ID = "urn:syncd:schema:inbox-record:1"

CONFIG_FILE = "config.schema.json"
INBOX_RECORD_FILE = "inbox-record.schema.json"
CHANGE_EVENT_FILE = "change-event.schema.json"
INGEST_ANSWER_FILE = "ingest-answer.schema.json"
EXPLAIN_FILE = "explain.schema.json"
RUNS_FILE = "runs.schema.json"

README_START = "<!-- config-reference:start -->"
README_END = "<!-- config-reference:end -->"

JsonSchema = dict[str, Any]


# -- the configuration file -------------------------------------------------------------------

#: What each top-level table is for (the models carry no descriptions of their own sections).
_SECTION_DESCRIPTIONS = {
    "store": "Where the local mirror lives.",
    "inbox": "The watched folder contact files are dropped into (`processed/` and `failed/` "
    "are created inside it).",
    "outbox": "Where change events that came from providers are written, one NDJSON file per "
    "UTC hour (see `schemas/change-event.schema.json`).",
    "ingest": "How contact files are read.",
    "http": "The listener of `syncd run`: health, metrics, and the ingest API "
    "(`POST /v1/contacts`) when `ingest_token` is set.",
    "daemon": "The long-running service, `syncd run`.",
    "history": "What `syncd explain` shows of each contact: every cycle that decided something "
    "about it, kept this long.",
    "webhook": "A company endpoint every change event is POSTed to, signed (Standard "
    "Webhooks, `schemas/change-event.schema.json` as the body); repeat `[[webhook]]` for each. "
    "Webhook names must be unique.",
    "source": "A query over the company's own database read into a local list on a schedule "
    "(see Reading from your database); repeat `[[source]]` for each. Source names must be "
    "unique.",
    "target": "One provider list kept in agreement with a local list; repeat `[[target]]` for "
    "each. Target names must be unique.",
}

#: Descriptions for keys whose model field has none. A description in the model wins.
_KEY_DESCRIPTIONS = {
    "TargetConfig": {
        "provider": "Whose API: unisender, selzy (Unisender's international brand, same API), "
        "smsby, octopush or netcore (Netcore Smartech), or a provider an installed package "
        "registers. Its own keys are listed after this table.",
        "key": "What contacts are matched on at this target: email, or phone (E.164).",
        "lang": "Language segment of the Unisender/Selzy API address.",
        "on_local_delete": "A contact deleted locally: delete it at the provider, or only take "
        "it off the list (exclude).",
        "max_delete_fraction": "Mass-delete guard: a cycle that would delete more than this "
        "share of either side's list (and more than 10) stops before writing anything.",
        "export_poll_interval": "Seconds between polls of an async export task.",
        "export_timeout": "Seconds an async export may take before the cycle gives up; nothing "
        "is inferred from an export that did not finish.",
        "create_missing_fields": "Create mapped fields that are missing at the provider; when "
        "false a missing field stops the cycle.",
    }
}

_TARGET_RULES = (
    "Give exactly one of `api_key` and `api_key_file`. Besides the keys below, a target takes "
    "the keys of its provider (the tables after this one) and no others. Not expressed in "
    "this schema but checked when the file is loaded: `schedule` must be an "
    "interval or a cron expression, the keys of a `conflict` table must be `default`, `tags`, "
    "`status` or remote names in `fields`, and target names must be unique."
)


def config_schema(providers: Mapping[str, ProviderSpec] = BUILTIN_PROVIDERS) -> JsonSchema:
    """The JSON Schema of the configuration file, as checked in at schemas/config.schema.json.

    It describes the TOML data after ``${VAR}`` substitution. TOML has no null, so optional keys
    are typed by their value alone and are simply left out when not wanted. ``providers`` is the
    provider table whose names and own keys it lists (the built-in ones by default; ``syncd
    check-config`` passes every installed one).
    """
    generated = Config.model_json_schema()
    generated.pop("title", None)
    defs: dict[str, JsonSchema] = generated["$defs"]
    models = _models(Config)
    _factory_defaults(Config, generated)
    for name, definition in defs.items():
        _factory_defaults(models[name], definition)
        for key, prop in definition.get("properties", {}).items():
            _drop_null(prop)
            extra = _KEY_DESCRIPTIONS.get(name, {}).get(key)
            if extra and not prop.get("description"):
                prop["description"] = extra
    for section, prop in generated["properties"].items():
        prop["description"] = _SECTION_DESCRIPTIONS.get(section, "")
    _target_rules(defs["TargetConfig"])
    _provider_rules(defs, providers)
    return {
        "$schema": DRAFT,
        "$id": CONFIG_ID,
        "title": "syncd configuration",
        "description": "The syncd configuration file (TOML; ${VAR} in any string is replaced "
        "from the environment before validation). Every key is optional except in "
        "[[target]] tables.",
        **generated,
    }


def _models(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model nested in ``model``'s fields, by class name (the schema's $defs keys)."""
    found: dict[str, type[BaseModel]] = {}
    todo: list[Any] = [f.annotation for f in model.model_fields.values()]
    while todo:
        hint = todo.pop()
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            if hint.__name__ not in found:
                found[hint.__name__] = hint
                todo += [f.annotation for f in hint.model_fields.values()]
        else:
            todo += get_args(hint)
    return found


def _factory_defaults(model: type[BaseModel], definition: JsonSchema) -> None:
    """Defaults made by a factory (``fields = {}``): pydantic leaves them out, the reference not."""
    for name, field in model.model_fields.items():
        prop = definition["properties"].get(field.alias or name)
        if prop is not None and field.default_factory is not None and "default" not in prop:
            prop["default"] = field.get_default(call_default_factory=True, validated_data={})


def _drop_null(prop: JsonSchema) -> None:
    """``X | None = None`` becomes plain ``X`` without a default: TOML cannot say null."""
    branches = prop.get("anyOf")
    if branches is None or {"type": "null"} not in branches:
        return
    rest = [b for b in branches if b != {"type": "null"}]
    del prop["anyOf"]
    if len(rest) == 1:
        prop.update(rest[0])
    else:
        prop["anyOf"] = rest
    if prop.get("default", ...) is None:
        del prop["default"]


def _target_rules(target: JsonSchema) -> None:
    """What the model checks in validators, where JSON Schema can say it too."""
    target["description"] = " ".join(filter(None, [target.get("description"), _TARGET_RULES]))
    target["required"] = [k for k in target["required"] if k != "api_key"]
    api_key = target["properties"]["api_key"]
    api_key["description"] = "Required unless `api_key_file` is given. " + api_key.get(
        "description", ""
    )
    # exactly one source for the key (an empty api_key_file counts as not given)
    target["anyOf"] = [
        {"required": ["api_key"]},
        {"required": ["api_key_file"], "properties": {"api_key_file": {"minLength": 1}}},
    ]
    target["not"] = {
        "required": ["api_key", "api_key_file"],
        "properties": {"api_key_file": {"minLength": 1}},
    }


def _provider_rules(defs: dict[str, JsonSchema], providers: Mapping[str, ProviderSpec]) -> None:
    """The provider names, and each provider's own keys as an ``if provider = X then`` branch.

    A target takes the shared keys and those of its provider's settings model, nothing else
    (``unevaluatedProperties`` sees the keys the matching branch declares).
    """
    target = defs["TargetConfig"]
    target.pop("additionalProperties", None)
    target["unevaluatedProperties"] = False
    target["properties"]["provider"]["enum"] = list(providers)
    specs: dict[str, ProviderSpec] = {}
    for name in providers:
        try:
            specs[name] = providers[name]
        except ValueError as exc:  # a broken package: the loader reports it where it is used
            log.warning("provider %s left out of the schema's own keys: %s", name, exc)
    branches: list[JsonSchema] = []
    for name, spec in specs.items():
        settings = spec.settings
        if not settings.model_fields:
            continue
        key = settings.__name__
        if key not in defs:
            defs[key] = _settings_schema(settings, specs)
        branches.append(
            {
                "if": {"required": ["provider"], "properties": {"provider": {"const": name}}},
                "then": {"$ref": f"#/$defs/{key}"},
            }
        )
    if branches:
        target["allOf"] = branches


def _settings_schema(
    settings: type[BaseModel], providers: Mapping[str, ProviderSpec]
) -> JsonSchema:
    """One provider settings model as the keys it adds to a ``[[target]]`` table."""
    schema = settings.model_json_schema()
    schema.pop("additionalProperties", None)  # the target's schema says what else may be there
    for prop in schema["properties"].values():
        _drop_null(prop)
    _factory_defaults(settings, schema)
    names = [f"`{n}`" for n in providers if providers[n].settings is settings]
    schema["description"] = f"The keys only a target of provider {' or '.join(names)} takes."
    return schema


# -- the inbox record -------------------------------------------------------------------------


def _any_case(words: Sequence[str]) -> str:
    """A regex alternation matching each word in any letter case (JSON Schema has no flags)."""
    return "|".join("".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in w) for w in words)


_STATUS_PATTERN = r"^\s*(?:" + _any_case(STATUSES) + r")?\s*$"
_DELETE_PATTERN = r"^\s*(?:1|0|" + _any_case(("true", "yes", "false", "no")) + r")?\s*$"
_NAME_ITEM = Annotated[str, StringConstraints(pattern=r"^[^,]*$")]
_HAS_TEXT = r"\S"


def _no_default(schema: JsonSchema) -> None:
    # An absent column means "not carried", which is not the same as null; offer no default.
    schema.pop("default", None)


def _record_rules(schema: JsonSchema) -> None:
    """Rules of ``syncd.local.ingest`` that a model field cannot carry."""
    schema.pop("title", None)
    schema["propertyNames"] = {
        # names are trimmed by ingest; a trimmed-away or empty name is refused
        "pattern": r"^\S(?:[\s\S]*\S)?$",
        # reserved names are matched in any case; this schema asks for the lower-case spelling
        "anyOf": [{"enum": list(RESERVED)}, {"not": {"pattern": f"^(?:{_any_case(RESERVED)})$"}}],
    }
    schema["anyOf"] = [
        {"required": ["email"], "properties": {"email": {"type": "string", "pattern": _HAS_TEXT}}},
        {
            "required": ["phone"],
            "properties": {
                "phone": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": _HAS_TEXT}]}
            },
        },
    ]


class InboxRecord(BaseModel):
    """One contact record of an inbox file, as ``syncd.local.ingest`` reads it.

    This model documents the format and generates its schema; ingestion itself is done by
    ``syncd.local.ingest``, whose rules the schema follows (the tests check that both agree).
    """

    model_config = ConfigDict(extra="allow", json_schema_extra=_record_rules)

    # Every other name is a custom field holding one value; "" or null removes the field.
    __pydantic_extra__: dict[str, str | float | bool | None] = Field(init=False)

    email: str | None = Field(
        None,
        description="The contact's email (trimmed, checked, lower-cased). Empty or null: not "
        "given. A record needs a non-empty email or phone.",
        json_schema_extra=_no_default,
    )
    phone: str | int | None = Field(
        None,
        description="The contact's phone, stored as E.164; without '+' it is read with "
        "[ingest] default_region. Empty or null: not given.",
        json_schema_extra=_no_default,
    )
    tags: list[_NAME_ITEM] | str | None = Field(
        None,
        description="Replaces the contact's tags: an array of names, or one comma-separated "
        "string (as in CSV). Empty, [] or null: no tags. Absent: tags unchanged.",
        json_schema_extra=_no_default,
    )
    lists: list[_NAME_ITEM] | str | None = Field(
        None,
        description="Replaces the contact's local list memberships, written like tags; a list "
        "kept keeps its state (active, or unsubscribed from it). Absent: memberships unchanged.",
        json_schema_extra=_no_default,
    )
    unsubscribed_lists: list[_NAME_ITEM] | str | None = Field(
        None,
        description="Replaces the set of lists the contact has left, written like tags: each is "
        "a membership in state unsubscribed (joined if need be), every other membership becomes "
        "active. With lists: the memberships are both together. Empty, [] or null: none left. "
        "Absent: states unchanged.",
        json_schema_extra=_no_default,
    )
    status: Annotated[str, StringConstraints(pattern=_STATUS_PATTERN)] | None = Field(
        None,
        description="active | unsubscribed | blocked, in any case. Empty or null: not given. "
        "A contact revived from a deletion keeps an opted-out status.",
        json_schema_extra=_no_default,
    )
    delete: (
        bool | Literal[0, 1] | Annotated[str, StringConstraints(pattern=_DELETE_PATTERN)] | None
    ) = Field(
        None,
        description="1, true or yes (any case) deletes the contact, keeping its identity "
        "and consent; 0, false, no, empty or null: no.",
        json_schema_extra=_no_default,
    )


def inbox_record_schema() -> JsonSchema:
    """The JSON Schema of one inbox record, as checked in at schemas/inbox-record.schema.json."""
    generated = InboxRecord.model_json_schema()
    generated.pop("description", None)  # the class docstring speaks of code, not of the format
    return {
        "$schema": DRAFT,
        "$id": INBOX_RECORD_ID,
        "title": "syncd inbox record",
        "description": "One contact record of an inbox file. NDJSON (.ndjson, .jsonl, .json): "
        "one such object per line, or one JSON array of them. CSV (.csv, UTF-8, header row): "
        "each row is this object with the header's names and every value a string (see "
        "$defs/CsvRow). Reserved names are email, phone, tags, lists, unsubscribed_lists, status "
        "and delete; every other name is a custom field holding one value (string, number, "
        "boolean or null; stored as text; empty or null removes it). Only the names a record "
        "carries change.",
        **generated,
        "$defs": {
            "CsvRow": {
                "description": "A CSV row read with its header: the same record, every cell a "
                "string; tags, lists and unsubscribed_lists are comma-separated and an empty "
                "cell clears its field. A cell starting with an apostrophe before =, +, -, @, a "
                "tab or a carriage return is read without that apostrophe (the spreadsheet's "
                "mark of text, which syncd export writes).",
                "$ref": "#",
                "additionalProperties": {"type": "string"},
            }
        },
    }


# -- files ------------------------------------------------------------------------------------


def _text(schema: JsonSchema) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


GENERATORS: dict[str, Callable[[], JsonSchema]] = {
    CONFIG_FILE: config_schema,
    INBOX_RECORD_FILE: inbox_record_schema,
    CHANGE_EVENT_FILE: change_event.event_schema,
    INGEST_ANSWER_FILE: intake.answer_schema,
    EXPLAIN_FILE: explain.explain_schema,
    RUNS_FILE: explain.runs_schema,
}


def schema_texts() -> dict[str, str]:
    """Each schema file's exact text, by file name."""
    return {name: _text(generate()) for name, generate in GENERATORS.items()}


def write_all(folder: str | Path) -> list[Path]:
    """Write every schema into ``folder``; returns the files whose text changed."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_texts().items():
        path = target / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def check_all(folder: str | Path) -> list[str]:
    """One problem per schema file in ``folder`` that is missing or differs from the code's."""
    problems = []
    for name, text in schema_texts().items():
        path = Path(folder) / name
        if not path.exists():
            problems.append(f"{path}: missing; run syncd schemas write")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: stale (the models changed); run syncd schemas write")
    return problems


# -- the configuration reference --------------------------------------------------------------


def config_reference_markdown() -> str:
    """The configuration reference: one table per section (key, type, default, description)."""
    schema = config_schema()
    defs: dict[str, JsonSchema] = schema["$defs"]
    out = [
        "Generated from `schemas/config.schema.json` (`syncd schemas write` "
        "refreshes it and this section). Values are TOML; `${VAR}` in any string is taken from "
        "the environment. `syncd init [--provider NAME]` writes a commented starter file; "
        "`syncd check-config` checks one (`--online` also tries each target's key and list).",
        "",
    ]
    for section, prop in schema["properties"].items():
        if prop.get("type") == "array":
            heading, definition = f"[[{section}]]", _resolve(prop["items"], defs)
        else:
            heading, definition = f"[{section}]", _resolve(prop, defs)
        out += [f"### `{heading}`", "", prop["description"]]
        if definition.get("description"):
            out += ["", definition["description"]]
        out += ["", *_key_table(definition, defs), ""]
        for branch in definition.get("allOf", ()):  # a provider's own keys
            name = branch["if"]["properties"]["provider"]["const"]
            own = _resolve(branch["then"], defs)
            out += [f"#### `provider = {json.dumps(name)}`", "", own["description"], ""]
            out += [*_key_table(own, defs), ""]
    return "\n".join(out)


def _key_table(definition: JsonSchema, defs: dict[str, JsonSchema]) -> list[str]:
    """One row per key of ``definition``: key, type, default, description."""
    out = ["| key | type | default | description |", "|---|---|---|---|"]
    required = set(definition.get("required", ()))
    for key, field in definition["properties"].items():
        cells = [
            f"`{key}`",
            _type_text(field, defs),
            _default_text(field, key in required),
            field.get("description", ""),
        ]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out


def _resolve(prop: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    ref = prop.get("$ref")
    if ref is None:
        return prop
    return defs[ref.rsplit("/", 1)[-1]]


def _type_text(prop: JsonSchema, defs: dict[str, JsonSchema]) -> str:
    prop = _resolve(prop, defs)
    if "anyOf" in prop:
        return " or ".join(_type_text(branch, defs) for branch in prop["anyOf"])
    if "enum" in prop:
        return " | ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kind = prop.get("type", "any")
    if kind == "string" and prop.get("writeOnly"):
        text = "string (secret)"
    elif kind == "string" and prop.get("minLength") == 1:
        text = "non-empty string"
    elif kind == "array":
        text = f"array of {_type_text(prop.get('items', {}), defs)}"
    elif kind == "object":
        values = prop.get("additionalProperties")
        text = f"table of {_type_text(values, defs)}" if isinstance(values, dict) else "table"
    else:
        text = str(kind)
    return " ".join([text, *_constraints(prop)])


def _constraints(prop: JsonSchema) -> list[str]:
    words = {
        "minimum": "≥ {}",
        "exclusiveMinimum": "> {}",
        "maximum": "≤ {}",
        "exclusiveMaximum": "< {}",
        "minLength": "of at least {} characters",
        "pattern": "matching `{}`",
    }
    found = [
        template.format(prop[key])
        for key, template in words.items()
        if key in prop and not (key == "minLength" and prop[key] == 1)  # "non-empty string"
    ]
    return [", ".join(found)] if found else []


def _default_text(prop: JsonSchema, required: bool) -> str:
    if required:
        return "required"
    if prop.get("writeOnly"):
        return "—"  # a secret never has a default
    if "default" in prop:
        return f"`{_toml_value(prop['default'])}`"
    return "not set"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _cell(text: str) -> str:
    """A table cell: one line, pipes escaped (GitHub requires it even inside code spans)."""
    return " ".join(text.split()).replace("|", "\\|")


def readme_section() -> str:
    """The README's reference block, markers included."""
    return f"{README_START}\n{config_reference_markdown()}{README_END}"


def readme_problems(readme: str | Path) -> list[str]:
    """Why the README's reference block is not what the schema renders (empty when it is)."""
    text = Path(readme).read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return [f"{readme}: no {README_START} ... {README_END} block"]
    if text[start : end + len(README_END)] != readme_section():
        return [f"{readme}: the configuration reference is stale; run syncd schemas write"]
    return []


def write_readme(readme: str | Path) -> bool:
    """Replace the README's reference block with the rendered one; True when it changed."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no {README_START} ... {README_END} block to replace")
    new = text[:start] + readme_section() + text[end + len(README_END) :]
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True
