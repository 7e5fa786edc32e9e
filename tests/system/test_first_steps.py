"""The edges a new user and an operator meet first, through real `syncd` processes.

Relative paths follow the config file, not the working folder; config mistakes are named in
syncd's words and exit 2; no traceback reaches a user; the same mistake gives the same exit code
in every command; `status` and `conflicts` say by their exit code that a conflict is open.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    emulator_fixture,
    free_port,
    newsletter_config,
    people_csv,
    run_syncd,
    syncd_env,
)

KEY = "first-steps-key-51c2"
VAR = ("TEST_UNISENDER_KEY", KEY)
syncd = run_syncd
pytestmark = pytest.mark.slow

emulator = emulator_fixture("unisender", KEY)


def no_traceback(r: subprocess.CompletedProcess[str]) -> bool:
    return "Traceback" not in r.stdout + r.stderr


# -- paths ---------------------------------------------------------------------------------------


def test_relative_paths_follow_the_config_file_not_the_working_folder(
    tmp_path: Path, emulator: str
) -> None:
    etc, elsewhere = tmp_path / "etc" / "syncd", tmp_path / "elsewhere"
    elsewhere.mkdir()
    init = syncd(
        "init",
        "--config",
        str(etc / "syncd.toml"),
        "--list-id",
        "1",
        "--base-url",
        f"{emulator}/en/api",
        "--field",
        "Name=name",
        cwd=tmp_path,
    )
    assert init.returncode == 0, init.stderr
    assert "CHANGE-ME" not in init.stdout  # nothing left to replace
    text = (etc / "syncd.toml").read_text()
    assert 'url = "sqlite:///./syncd.db"' in text and 'path = "./inbox"' in text
    # the key comes from the environment as the starter says; the config is found by the variable
    env = syncd_env(("UNISENDER_API_KEY", KEY)) | {"SYNCD_CONFIG": str(etc / "syncd.toml")}
    (elsewhere / "people.csv").write_text(people_csv(range(3)))
    assert syncd("ingest", "people.csv", env=env, cwd=elsewhere).returncode == 0
    assert syncd("run-once", env=env, cwd=elsewhere).returncode == 0

    status = syncd("status", env=env, cwd=tmp_path)  # a third folder
    assert status.returncode == 0, status.stdout + status.stderr
    assert "last run" in status.stdout and "converged" in status.stdout
    assert "0 rejected rows, 0 open conflicts" in status.stdout
    assert (etc / "syncd.db").exists()
    assert not list(elsewhere.glob("syncd.db*")) and not list(tmp_path.glob("syncd.db*"))
    assert not (elsewhere / "outbox").exists()  # the outbox is the config's too


def test_a_missing_store_folder_outside_the_configs_tree_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "nowhere" / "deeper"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "syncd.toml").write_text(f'[store]\nurl = "sqlite:///{outside}/s.db"\n')
    r = syncd("status", "--config", "conf/syncd.toml", cwd=tmp_path)
    assert r.returncode == 2 and f"the folder {outside} does not exist" in r.stderr
    assert not (tmp_path / "nowhere").exists()
    # inside the config's own folder it is created, as the starter's layout expects
    (tmp_path / "conf" / "syncd.toml").write_text('[store]\nurl = "sqlite:///./state/s.db"\n')
    assert syncd("status", "--config", "conf/syncd.toml", cwd=tmp_path).returncode == 0
    assert (tmp_path / "conf" / "state" / "s.db").exists()


# -- config mistakes -----------------------------------------------------------------------------

MISTAKES = """
[stor]
url = "sqlite:///./syncd.db"

[daemon]
max_parallel = "4"

[[target]]
name = "news"
provider = "unisender"
list_id = 12
api_key = "${TEST_UNISENDER_KEY}"
scheduel = "5m"
timeout = "30"
conflict = "mine"
"""


@pytest.mark.parametrize("command", ["check-config", "run-once", "status"])
def test_config_mistakes_are_named_in_syncds_words(tmp_path: Path, command: str) -> None:
    (tmp_path / "syncd.toml").write_text(MISTAKES)
    r = syncd(command, cwd=tmp_path, key=VAR)
    assert r.returncode == 2 and no_traceback(r), r.stdout + r.stderr
    said = r.stdout + r.stderr
    assert "stor: unknown key; did you mean 'store'?" in said
    assert "target[0].scheduel: unknown key; did you mean 'schedule'?" in said
    assert "daemon.max_parallel: must be a whole number, without quotes (e.g. 4)" in said
    assert "target[0].timeout: must be a number, without quotes" in said
    assert "target[0].conflict: must be 'local', 'remote' or 'manual', or a table" in said
    assert "list_id" not in said  # a number is an id like any other
    assert "Extra inputs" not in said and "Input should" not in said  # not pydantic's words


def test_change_me_is_refused_until_replaced(tmp_path: Path) -> None:
    made = syncd("init", "--provider", "octopush", cwd=tmp_path)
    assert made.returncode == 0 and "replace CHANGE-ME" in made.stdout
    r = syncd("check-config", cwd=tmp_path, key=("OCTOPUSH_API_KEY", "k" * 12))
    assert r.returncode == 2
    assert "target[0].list_id: still reads CHANGE-ME" in r.stdout
    assert "target[0].api_login: still reads CHANGE-ME" in r.stdout


def test_a_field_octopush_cannot_hold_is_a_config_error_offline(tmp_path: Path) -> None:
    (tmp_path / "syncd.toml").write_text(
        '[[target]]\nname = "sms"\nprovider = "octopush"\nlist_id = "news"\nkey = "phone"\n'
        'api_key = "${TEST_UNISENDER_KEY}"\napi_login = "me@example.com"\n'
        'fields = { Name = "name" }\n'
    )
    r = syncd("check-config", cwd=tmp_path, key=VAR)  # offline: nothing leaves the machine
    assert r.returncode == 2, r.stdout
    assert "target[0]: target 'sms': an Octopush contact holds only first_name" in r.stdout
    assert "(not Name)" in r.stdout


# -- the command line ----------------------------------------------------------------------------


def test_config_before_the_command(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine.toml").write_text("[store]\nurl = 'sqlite:///./m.db'\n")
    r = syncd("--config", "conf/mine.toml", "status", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "conf" / "m.db").exists() and not (tmp_path / "syncd.toml").exists()
    missing = syncd("--config", "conf/other.toml", "check-config", cwd=tmp_path)
    assert missing.returncode == 2 and "conf/other.toml: file not found" in missing.stdout


def test_the_same_wrong_key_exits_2_in_check_config_and_run_once(
    tmp_path: Path, emulator: str
) -> None:
    (tmp_path / "syncd.toml").write_text(newsletter_config(tmp_path, emulator, retries=0))
    wrong = ("TEST_UNISENDER_KEY", "not-the-key-at-all")
    check = syncd("check-config", "--online", cwd=tmp_path, key=wrong)
    once = syncd("run-once", cwd=tmp_path, key=wrong)
    assert check.returncode == once.returncode == 2, check.stdout + once.stdout
    assert "invalid_api_key" in once.stdout and "not-the-key-at-all" not in once.stdout


def test_status_and_conflicts_exit_1_while_a_conflict_is_open(
    tmp_path: Path, emulator: str
) -> None:
    (tmp_path / "syncd.toml").write_text(
        newsletter_config(tmp_path, emulator, conflict="manual", first_sync="manual")
    )
    none = syncd("conflicts", "--json", cwd=tmp_path, key=VAR)
    assert none.returncode == 0 and json.loads(none.stdout) == []
    assert syncd("conflicts", cwd=tmp_path, key=VAR).stdout.strip() == "no conflicts"

    (tmp_path / "a.csv").write_text(people_csv(range(2), "Local"))
    syncd("ingest", "a.csv", cwd=tmp_path, key=VAR)
    assert syncd("run-once", cwd=tmp_path, key=VAR).returncode == 0
    # both sides edit the same field: held under conflict = "manual"
    import httpx

    httpx.post(
        f"{emulator}/_emulator/contact",
        json={"action": "edit", "email": "user0@example.com", "fields": {"Name": "Remote"}},
    ).raise_for_status()
    (tmp_path / "b.csv").write_text(people_csv(range(1), "Edited"))
    syncd("ingest", "b.csv", cwd=tmp_path, key=VAR)
    held = syncd("run-once", cwd=tmp_path, key=VAR)
    assert held.returncode == 1, held.stdout + held.stderr

    status = syncd("status", cwd=tmp_path, key=VAR)
    assert status.returncode == 1 and "1 open conflict" in status.stdout
    listed = syncd("conflicts", "--json", cwd=tmp_path, key=VAR)
    assert listed.returncode == 1 and [c["key"] for c in json.loads(listed.stdout)] == [
        "user0@example.com"
    ]
    chosen = syncd("resolve", "user0@example.com", "--take", "local", cwd=tmp_path, key=VAR)
    assert chosen.returncode == 0
    # settled, waiting for the next cycle: nothing is open any more
    assert syncd("conflicts", cwd=tmp_path, key=VAR).returncode == 0


# -- no traceback --------------------------------------------------------------------------------


def test_a_wrong_log_level_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "syncd.toml").write_text("[http]\nlisten = 'off'\n")
    r = syncd("run", "--log-level", "LOUD", cwd=tmp_path)
    assert r.returncode == 2 and no_traceback(r)
    assert "'LOUD' is not one of" in r.stderr


def test_a_missing_database_driver_is_named(tmp_path: Path) -> None:
    (tmp_path / "syncd.toml").write_text(
        "[store]\nurl = 'postgresql+pg8000://syncd:hunter2@127.0.0.1/syncd'\n"
    )
    for command in ("status", "check-config"):
        r = syncd(command, cwd=tmp_path)
        assert r.returncode == 2 and no_traceback(r), r.stderr
        said = r.stdout + r.stderr
        assert "store.url: the database driver of 'postgresql+pg8000' is not installed" in said
        assert "hunter2" not in said


def test_an_unreachable_store_server_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "syncd.toml").write_text(
        f"[store]\nurl = 'postgresql+psycopg://syncd:hunter2@127.0.0.1:{port}/syncd'\n"
    )
    r = syncd("status", cwd=tmp_path)
    assert r.returncode == 1 and no_traceback(r), r.stderr
    assert r.stderr.startswith("error: cannot open the store ([store] url):")
    assert len(r.stderr.strip().splitlines()) == 1 and "hunter2" not in r.stderr


@pytest.fixture
def taken_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_taken_listen_port_exits_2_naming_the_address(tmp_path: Path, taken_port: int) -> None:
    (tmp_path / "syncd.toml").write_text(f"[http]\nlisten = '127.0.0.1:{taken_port}'\n")
    r = syncd("run", cwd=tmp_path)
    assert r.returncode == 2 and no_traceback(r), r.stdout + r.stderr
    assert f"error: cannot listen on 127.0.0.1:{taken_port} ([http] listen)" in r.stderr


def test_a_taken_emulator_port_exits_2_naming_the_address(taken_port: int, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "syncd", "emulate", "unisender", "--port", str(taken_port)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and no_traceback(r), r.stdout + r.stderr
    assert f"cannot listen on 127.0.0.1:{taken_port}" in r.stderr and "--port" in r.stderr


def test_a_phone_without_plus_points_at_default_region(tmp_path: Path) -> None:
    (tmp_path / "syncd.toml").write_text("[store]\nurl = 'sqlite:///./s.db'\n")
    (tmp_path / "people.ndjson").write_text('{"phone": 375447778899, "name": "Fiona"}\n')
    r = syncd("ingest", "people.ndjson", cwd=tmp_path)
    assert r.returncode == 1 and "line 1: phone must be in international format" in r.stderr
    assert "[ingest] default_region" in r.stderr
    (tmp_path / "syncd.toml").write_text(
        "[store]\nurl = 'sqlite:///./s.db'\n[ingest]\ndefault_region = 'BY'\n"
    )
    assert syncd("ingest", "people.ndjson", cwd=tmp_path).returncode == 0


# -- contact files as spreadsheets write them ------------------------------------------------------

EXCEL_RU = (
    "email;name;city\r\nanna@example.com;Анна Иванова;Минск\r\nboris@example.com;Борис;Брест\r\n"
)


def exported_names(tmp_path: Path) -> dict[str, tuple[str, str]]:
    out = syncd("export", cwd=tmp_path).stdout.splitlines()
    return {r["email"]: (r["name"], r["city"]) for r in map(json.loads, out)}


@pytest.mark.parametrize(
    ("settings", "name", "data"),
    [
        ("encoding = 'cp1251'", "excel-ru.csv", EXCEL_RU.encode("cp1251")),
        ("", "utf8.csv", EXCEL_RU.encode("utf-8")),
        ("", "bom.csv", EXCEL_RU.encode("utf-8-sig")),
        ("encoding = 'cp1251'", "utf16.csv", EXCEL_RU.replace(";", "\t").encode("utf-16")),
        ("", "tabs.csv", EXCEL_RU.replace(";", "\t").encode("utf-8")),
        (
            "encoding = 'cp1251'",
            "rows.ndjson",
            '{"email": "anna@example.com", "name": "Анна '
            'Иванова", "city": "Минск"}\n{"email": "boris@example.com", "name": "Борис", '
            '"city": "Брест"}\n'.encode("cp1251"),
        ),
    ],
)
def test_spreadsheet_exports_are_read(
    tmp_path: Path, settings: str, name: str, data: bytes
) -> None:
    (tmp_path / "syncd.toml").write_text(
        f"[store]\nurl = 'sqlite:///./s.db'\n[ingest]\n{settings}\n"
    )
    (tmp_path / name).write_bytes(data)
    r = syncd("ingest", name, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "created 2" in r.stdout
    assert exported_names(tmp_path) == {
        "anna@example.com": ("Анна Иванова", "Минск"),
        "boris@example.com": ("Борис", "Брест"),
    }


def test_a_cp1251_file_without_the_setting_names_it(tmp_path: Path) -> None:
    (tmp_path / "syncd.toml").write_text("[store]\nurl = 'sqlite:///./s.db'\n")
    (tmp_path / "excel-ru.csv").write_bytes(EXCEL_RU.encode("cp1251"))
    r = syncd("ingest", "excel-ru.csv", cwd=tmp_path)
    assert r.returncode == 1 and "line 2 is not valid UTF-8" in r.stderr
    assert exported_names(tmp_path) == {}
    (tmp_path / "syncd.toml").write_text(
        "[store]\nurl = 'sqlite:///./s.db'\n[ingest]\nencoding = 'klingon'\n"
    )
    bad = syncd("ingest", "excel-ru.csv", cwd=tmp_path)
    assert bad.returncode == 2 and "ingest.encoding: unknown encoding 'klingon'" in bad.stderr


def test_unknown_file_types_name_every_json_suffix(tmp_path: Path) -> None:
    (tmp_path / "syncd.toml").write_text("[store]\nurl = 'sqlite:///./s.db'\n")
    (tmp_path / "people.txt").write_text("email\na@example.com\n")
    r = syncd("ingest", "people.txt", cwd=tmp_path)
    assert r.returncode == 1 and "use .csv, .ndjson, .jsonl or .json" in r.stderr


def test_the_demo_writes_nothing_outside_its_temporary_folder(tmp_path: Path) -> None:
    here = tmp_path / "here"
    here.mkdir()
    r = syncd("demo", "--contacts", "40", cwd=here)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(here.iterdir()) == []  # no outbox, store or sample in the working folder
    folder = Path(r.stdout.split("files in ", 1)[1].split()[0])
    assert folder.name.startswith("syncd-demo-") and not folder.exists()


# -- logs ----------------------------------------------------------------------------------------


def test_verbose_commands_leave_out_the_libraries_chatter(tmp_path: Path) -> None:
    (tmp_path / "syncd.toml").write_text("[store]\nurl = 'sqlite:///./s.db'\n")
    r = syncd("-v", "status", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "alembic" not in r.stderr and "Context impl" not in r.stderr


def test_the_service_writes_priorities_when_its_output_is_the_journal(tmp_path: Path) -> None:
    import os
    import signal
    import time

    (tmp_path / "syncd.toml").write_text("[http]\nlisten = 'off'\n")
    with (tmp_path / "journal").open("w") as journal:
        info = os.fstat(journal.fileno())
        env = syncd_env() | {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run"], cwd=tmp_path, env=env, stdout=journal
        )
        try:
            deadline = time.monotonic() + 60
            while '"started"' not in (tmp_path / "journal").read_text():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    written = (tmp_path / "journal").read_text().splitlines()
    assert written and all(line.startswith("<6>{") for line in written), written


def test_shell_completion_as_the_readme_shows_it(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert 'eval "$(_SYNCD_COMPLETE=bash_source syncd)"' in readme
    source = syncd(cwd=tmp_path, env=syncd_env() | {"_SYNCD_COMPLETE": "bash_source"})
    assert source.returncode == 0 and "complete " in source.stdout
    words = {"_SYNCD_COMPLETE": "bash_complete", "COMP_WORDS": "syncd run-o", "COMP_CWORD": "1"}
    answer = syncd(cwd=tmp_path, env=syncd_env() | words)
    assert answer.stdout.split() == ["plain,run-once"]
