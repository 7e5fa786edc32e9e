"""The JSON Schemas in schemas/: current with the code, and true of every example file.

Drift: each checked-in schema must be exactly what ``syncd.schemas`` generates, and the README's
configuration reference exactly what it renders. Examples: the starters of ``syncd init``, any
``deploy/**/*.toml``, the README's TOML blocks, ``schemas/examples/inbox/*`` and
``schemas/examples/outbox/*`` must validate, and the inbox and outbox examples must also be
accepted by the code that reads or writes them, so the schemas describe what the code does.
"""

from __future__ import annotations

import csv
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text as sql
from sqlalchemy.engine import Engine

from syncd import schemas
from syncd.cli import main
from syncd.commands.starter import PROVIDER_NAMES, STARTERS, starter_text
from syncd.config import Config, IngestConfig, parse_config
from syncd.errors import ConfigError
from syncd.local.change_event import ChangeEvent
from syncd.local.ingest import ingest_file
from syncd.local.ingest.check import validate
from syncd.local.ingest.read import read_rows
from syncd.providers import PROVIDERS
from syncd.store import open_engine

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
EXAMPLES = SCHEMAS / "examples"
README = ROOT / "README.md"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_schema(name: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / name).read_text(encoding="utf-8")))


def validator(name: str, ref: str | None = None) -> Any:
    """A validator for a checked-in schema, or for one of its ``$defs`` (``ref``)."""
    schema = load_schema(name)
    if ref is None:
        return jsonschema.Draft202012Validator(schema)
    resource = referencing.Resource.from_contents(schema)
    registry = referencing.Registry().with_resource(schema["$id"], resource)
    return jsonschema.Draft202012Validator({"$ref": f"{schema['$id']}{ref}"}, registry=registry)


def errors(v: Any, instance: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in v.iter_errors(instance)]


# -- drift ------------------------------------------------------------------------------------


def test_checked_in_schemas_are_what_the_code_generates() -> None:
    assert schemas.check_all(SCHEMAS) == []
    for name, generate in schemas.GENERATORS.items():
        assert load_schema(name) == generate(), f"{name} is stale"


def test_check_all_names_a_stale_or_missing_file(tmp_path: Path) -> None:
    written = schemas.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(schemas.GENERATORS)
    assert schemas.write_all(tmp_path) == []  # nothing changed, nothing rewritten
    for name in schemas.GENERATORS:
        assert (tmp_path / name).read_text() == (SCHEMAS / name).read_text()
    (tmp_path / schemas.CONFIG_FILE).write_text("{}\n")
    (tmp_path / schemas.INBOX_RECORD_FILE).unlink()
    problems = schemas.check_all(tmp_path)
    assert len(problems) == 2
    assert any("config.schema.json: stale" in p for p in problems)
    assert any("inbox-record.schema.json: missing" in p for p in problems)


def _schemas_cli(*args: str) -> int:
    return CliRunner().invoke(main, ["schemas", *args]).exit_code


def test_the_command_line_checks_and_writes(tmp_path: Path) -> None:
    assert _schemas_cli("check", "--dir", str(SCHEMAS), "--readme", str(README)) == 0
    assert _schemas_cli("check", "--dir", str(tmp_path), "--readme", str(README)) == 1
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{schemas.README_START}\nold\n{schemas.README_END}\n\nafter\n")
    assert _schemas_cli("write", "--dir", str(tmp_path), "--readme", str(readme)) == 0
    assert schemas.check_all(tmp_path) == []
    assert schemas.readme_problems(readme) == []
    assert readme.read_text().endswith(f"{schemas.README_END}\n\nafter\n")


def test_schemas_are_draft_2020_12_with_stable_ids() -> None:
    ids = {
        schemas.CONFIG_FILE: "urn:syncd:schema:config:1",
        schemas.INBOX_RECORD_FILE: "urn:syncd:schema:inbox-record:1",
        schemas.CHANGE_EVENT_FILE: "urn:syncd:schema:change-event:1",
    }
    for name, schema_id in ids.items():
        schema = load_schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == schema_id


def test_readme_reference_is_the_rendered_schema() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index(schemas.README_START) + len(schemas.README_START) + 1
    end = text.index(schemas.README_END)
    assert text[start:end] == schemas.config_reference_markdown(), (
        "README.md's configuration reference is stale: syncd schemas write"
    )
    assert "## Configuration reference" in text[: text.index(schemas.README_START)]
    assert schemas.readme_problems(README) == []


def test_reference_has_every_key_with_a_description() -> None:
    schema = schemas.config_schema()
    reference = schemas.config_reference_markdown()
    for section, prop in schema["properties"].items():
        heading = f"### `[[{section}]]`" if prop.get("type") == "array" else f"### `[{section}]`"
        assert heading in reference
        assert prop["description"]
    for name, definition in schema["$defs"].items():
        for key, prop in definition["properties"].items():
            assert prop.get("description"), f"{name}.{key} has no description"
            assert f"| `{key}` |" in reference


def test_secrets_are_strings_without_a_default() -> None:
    target = schemas.config_schema()["$defs"]["TargetConfig"]
    api_key = target["properties"]["api_key"]
    assert api_key["type"] == "string"
    assert "default" not in api_key
    row = next(
        r for r in schemas.config_reference_markdown().splitlines() if r.startswith("| `api_key` |")
    )
    assert row.startswith("| `api_key` | string (secret) | — |")


def test_optional_keys_are_typed_without_null() -> None:
    """TOML cannot say null: an optional key is left out, so the schema never offers null."""
    assert '"null"' not in (SCHEMAS / schemas.CONFIG_FILE).read_text()


# -- configuration files ----------------------------------------------------------------------


#: A webhook secret has a format of its own: whsec_ and the base64 of random bytes.
_FAKE_WHSEC = "whsec_" + "A" * 44


def fake_env(text: str) -> dict[str, str]:
    return {name: _fake_value(name) for name in _VAR.findall(text)}


def _fake_value(name: str) -> str:
    if "WEBHOOK_SECRET" in name:
        return _FAKE_WHSEC
    if name.endswith("DATABASE_URL"):  # a [[source]]'s url must be a database URL
        return "postgresql+psycopg://reader:not-a-secret@db.internal:5432/app"
    return f"value-of-{name.lower()}"


def assert_valid_config(text: str, where: str, *, load: bool = True) -> Config | None:
    """Valid against the schema (as written and after ${VAR}), and loadable by the daemon."""
    from syncd.config import substitute_env

    data = tomllib.loads(text)
    env = fake_env(text)
    v = validator(schemas.CONFIG_FILE)
    assert errors(v, data) == [], where
    assert errors(v, substitute_env(data, env, "", [])) == [], where
    if not load:
        return None
    return parse_config(data, where, env, providers=PROVIDERS)


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_every_starter_validates(provider: str, tmp_path: Path) -> None:
    filled = {"list_id": "7", "base_url": "http://127.0.0.1:9/api", "fields": {"Na me": "name"}}
    for text in (starter_text(provider), starter_text(provider, tmp_path, **filled)):
        # the values only the user knows read CHANGE-ME, which is refused until replaced
        text = text.replace("CHANGE-ME", "me@example.com")
        config = assert_valid_config(text, f"starter {provider}")
        assert config is not None
        (target,) = config.target
        assert target.provider == provider
        assert target.api_key.get_secret_value() == f"value-of-{STARTERS[provider].env.lower()}"


def deploy_configs() -> list[Path]:
    return sorted((ROOT / "deploy").glob("**/*.toml"))


@pytest.mark.parametrize("path", deploy_configs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_deploy_configs_validate(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # api_key_file names a file on the deployed machine: check those against the schema only
    assert_valid_config(text, str(path), load="api_key_file" not in text)


def readme_configs() -> Iterator[tuple[int, str]]:
    """The README's ```toml blocks that are whole configurations (only top-level sections)."""
    text = README.read_text(encoding="utf-8")
    sections = set(Config.model_fields)
    for number, match in enumerate(re.finditer(r"```toml\n(.*?)```", text, re.S), start=1):
        try:
            data = tomllib.loads(match.group(1))
        except tomllib.TOMLDecodeError:
            continue  # a fragment, not a file
        if data and set(data) <= sections:
            yield number, match.group(1)


def test_readme_has_whole_configurations() -> None:
    assert len(list(readme_configs())) >= 1


README_CONFIGS = list(readme_configs())


@pytest.mark.parametrize(
    ("number", "text"), README_CONFIGS, ids=[f"block{n}" for n, _ in README_CONFIGS]
)
def test_readme_configs_validate(number: int, text: str) -> None:
    assert_valid_config(text, f"README.md toml block {number}")


# The schema and the loader agree: what one refuses the other refuses (the loader also checks
# what the schema cannot say, e.g. the schedule's syntax, see test_loader_checks_more).
_TARGET = {"name": "t", "provider": "unisender", "list_id": "1", "api_key": "k"}
AGREE: list[tuple[str, dict[str, Any], bool]] = [
    ("minimal", {}, True),
    ("a target", {"target": [_TARGET]}, True),
    ("conflict table", {"target": [{**_TARGET, "conflict": {"default": "remote"}}]}, True),
    (
        "octopush with login",
        {"target": [{**_TARGET, "provider": "octopush", "api_login": "me"}]},
        True,
    ),
    ("unknown section", {"mailer": {}}, False),
    ("unknown key", {"store": {"url": "sqlite://", "colour": "red"}}, False),
    ("unknown provider", {"target": [{**_TARGET, "provider": "mailchimp"}]}, False),
    ("no key at all", {"target": [{k: v for k, v in _TARGET.items() if k != "api_key"}]}, False),
    ("octopush without login", {"target": [{**_TARGET, "provider": "octopush"}]}, False),
    (
        "octopush empty login",
        {"target": [{**_TARGET, "provider": "octopush", "api_login": ""}]},
        False,
    ),
    ("empty list id", {"target": [{**_TARGET, "list_id": ""}]}, False),
    ("bad name", {"target": [{**_TARGET, "name": "-x"}]}, False),
    ("bad policy", {"target": [{**_TARGET, "conflict": "mine"}]}, False),
    ("too parallel", {"daemon": {"max_parallel": 65}}, False),
    ("key is a number", {"target": [{**_TARGET, "api_key": 1234}]}, False),
]


@pytest.mark.parametrize(("case", "data", "valid"), AGREE, ids=[c[0] for c in AGREE])
def test_schema_and_loader_agree(case: str, data: dict[str, Any], valid: bool) -> None:
    schema_ok = not errors(validator(schemas.CONFIG_FILE), data)
    try:
        parse_config(data, case, {}, providers=PROVIDERS)
        loader_ok = True
    except ConfigError:
        loader_ok = False
    assert (schema_ok, loader_ok) == (valid, valid)


def test_key_file_rules_agree(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("secret\n")
    from_file = {k: v for k, v in _TARGET.items() if k != "api_key"} | {
        "api_key_file": str(key_file)
    }
    both = {**from_file, "api_key": "k"}
    v = validator(schemas.CONFIG_FILE)
    assert errors(v, {"target": [from_file]}) == []
    assert parse_config({"target": [from_file]}, "x", {}, providers=PROVIDERS).target[
        0
    ].api_key.get_secret_value() == ("secret")
    assert errors(v, {"target": [both]})
    with pytest.raises(ConfigError, match="not both"):
        parse_config({"target": [both]}, "x", {}, providers=PROVIDERS)


def test_loader_checks_more_than_the_schema_can_say() -> None:
    data = {"target": [{**_TARGET, "schedule": "every tuesday"}]}
    assert errors(validator(schemas.CONFIG_FILE), data) == []
    with pytest.raises(ConfigError, match="schedule"):
        parse_config(data, "x", {}, providers=PROVIDERS)


# -- inbox records ----------------------------------------------------------------------------


def inbox_examples(suffix: str) -> list[Path]:
    return sorted((EXAMPLES / "inbox").glob(f"*{suffix}"))


def test_there_are_inbox_examples_of_each_kind() -> None:
    assert inbox_examples(".csv") and inbox_examples(".ndjson")


@pytest.mark.parametrize("path", inbox_examples(".csv"), ids=lambda p: p.name)
def test_csv_examples_validate_as_rows(path: Path) -> None:
    v = validator(schemas.INBOX_RECORD_FILE, "#/$defs/CsvRow")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    for number, row in enumerate(rows, start=2):
        assert errors(v, row) == [], f"{path.name} line {number}"
    # a CSV row is also a record (every value a string)
    assert all(not errors(validator(schemas.INBOX_RECORD_FILE), row) for row in rows)


@pytest.mark.parametrize("path", inbox_examples(".ndjson"), ids=lambda p: p.name)
def test_ndjson_examples_validate(path: Path) -> None:
    v = validator(schemas.INBOX_RECORD_FILE)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines
    for number, line in enumerate(lines, start=1):
        assert errors(v, json.loads(line)) == [], f"{path.name} line {number}"


@pytest.fixture
def db(tmp_path: Path) -> Engine:
    return open_engine(f"sqlite:///{tmp_path / 'mirror.db'}")


@pytest.mark.parametrize(
    "path", inbox_examples(".csv") + inbox_examples(".ndjson"), ids=lambda p: p.name
)
def test_inbox_examples_ingest_without_a_rejection(path: Path, db: Engine) -> None:
    # integer phones (NDJSON) are national numbers: they need the region
    report = ingest_file(db, path, IngestConfig(default_region="BY")).to_dict()
    assert report["rejected"] == []
    assert report["rows"] >= 3
    with db.connect() as conn:
        states = set(conn.execute(sql("SELECT state FROM membership")).scalars())
    assert states == {"active", "unsubscribed"}  # each shows a list left and a list kept


def test_a_csv_row_that_breaks_the_schema_is_rejected_by_ingest(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("email,status,delete\na@example.com,sleeping,\nb@example.com,,maybe\n")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    v = validator(schemas.INBOX_RECORD_FILE, "#/$defs/CsvRow")
    assert all(errors(v, row) for row in rows)
    changes, rejected = validate(read_rows(path), IngestConfig())
    assert changes == [] and len(rejected) == 2


def ingest_accepts(record: Mapping[str, Any], tmp_path: Path) -> bool:
    path = tmp_path / "one.ndjson"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    changes, rejected = validate(read_rows(path), IngestConfig(reject_role_addresses=False))
    return bool(changes) and not rejected


E = "ann@example.com"
RECORDS: list[tuple[str, dict[str, Any], bool]] = [
    ("email only", {"email": E}, True),
    ("phone only", {"phone": "+375291234567"}, True),
    ("email and empty phone", {"email": E, "phone": ""}, True),
    ("null identity beside email", {"email": E, "phone": None}, True),
    (
        "every reserved name",
        {"email": E, "tags": ["a"], "lists": "x,y", "status": "Active", "delete": "no"},
        True,
    ),
    ("null tags and lists", {"email": E, "tags": None, "lists": []}, True),
    ("lists left as an array", {"email": E, "unsubscribed_lists": ["x"]}, True),
    ("lists left as a string", {"email": E, "lists": "x", "unsubscribed_lists": "x,y"}, True),
    ("no list left", {"email": E, "unsubscribed_lists": None}, True),
    ("list left not a string", {"email": E, "unsubscribed_lists": [1]}, False),
    ("list left with a comma", {"email": E, "unsubscribed_lists": ["a,b"]}, False),
    ("lists left an object", {"email": E, "unsubscribed_lists": {"x": 1}}, False),
    ("status padded", {"email": E, "status": " blocked "}, True),
    ("empty status", {"email": E, "status": ""}, True),
    ("delete true", {"email": E, "delete": True}, True),
    ("delete 1", {"email": E, "delete": 1}, True),
    ("delete YES", {"email": E, "delete": "YES"}, True),
    (
        "field values",
        {"email": E, "Age": 41, "Score": 2.5, "Opt": False, "Nick": None, "City": ""},
        True,
    ),
    ("no identity", {"Name": "x"}, False),
    ("empty identity", {"email": " ", "phone": ""}, False),
    ("email a number", {"email": 5, "phone": "+375291234567"}, False),
    ("phone a boolean", {"email": E, "phone": True}, False),
    ("nested field", {"email": E, "Address": {"city": "Minsk"}}, False),
    ("list field", {"email": E, "Kids": ["a"]}, False),
    ("tag not a string", {"email": E, "tags": ["a", 1]}, False),
    ("tag with a comma", {"email": E, "tags": ["a,b"]}, False),
    ("tags an object", {"email": E, "tags": {"a": 1}}, False),
    ("unknown status", {"email": E, "status": "sleeping"}, False),
    ("status a number", {"email": E, "status": 1}, False),
    ("delete 2", {"email": E, "delete": 2}, False),
    ("delete maybe", {"email": E, "delete": "maybe"}, False),
    ("empty name", {"email": E, "": "x"}, False),
]


@pytest.mark.parametrize(("case", "record", "valid"), RECORDS, ids=[c[0] for c in RECORDS])
def test_record_schema_and_ingest_agree(
    case: str, record: dict[str, Any], valid: bool, tmp_path: Path
) -> None:
    schema_ok = not errors(validator(schemas.INBOX_RECORD_FILE), record)
    assert (schema_ok, ingest_accepts(record, tmp_path)) == (valid, valid)


@pytest.mark.parametrize(
    "record", [{"Email": E}, {"email": E, " City ": "x"}], ids=["reserved in capitals", "padded"]
)
def test_schema_asks_for_plain_names_that_ingest_also_tolerates(
    record: dict[str, Any], tmp_path: Path
) -> None:
    """Never the other way round: what the schema accepts, ingest accepts."""
    assert errors(validator(schemas.INBOX_RECORD_FILE), record)
    assert ingest_accepts(record, tmp_path)


# -- outbox lines -----------------------------------------------------------------------------


def outbox_examples() -> list[Path]:
    return sorted((EXAMPLES / "outbox").glob("*.ndjson"))


@pytest.mark.parametrize("path", outbox_examples(), ids=lambda p: p.name)
def test_outbox_examples_validate_and_parse(path: Path) -> None:
    v = validator(schemas.CHANGE_EVENT_FILE)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines
    hour = path.name.removeprefix("changes-").removesuffix(".ndjson")
    for line in lines:
        assert errors(v, json.loads(line)) == []
        event = ChangeEvent.model_validate_json(line)
        assert event.hour == hour  # each line is in its hour's file
        assert event.model_dump_json() == line  # exactly as the outbox writes it
    kinds = {json.loads(line)["kind"] for line in lines}
    assert {"signup", "update", "unsubscribe", "list_unsubscribe", "delete"} <= kinds
