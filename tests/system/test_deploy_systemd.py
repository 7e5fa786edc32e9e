"""deploy/systemd: the units say what the issue asks, `systemd-analyze verify` accepts them, and
`systemd-analyze security` rates syncd.service's sandbox at 2.0 or lower.

No systemd PID 1 is needed: `verify` and `security --offline=true` read unit files only. `verify`
does insist that ExecStart='s binary exists, so it runs on copies whose /usr/local/bin/syncd is
this test's own syncd; nothing else in the copies differs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from syncd.config import parse_config
from syncd.providers import PROVIDERS

ROOT = Path(__file__).resolve().parents[2]
UNIT_DIR = ROOT / "deploy" / "systemd"
UNITS = ("syncd.service", "syncd-run-once.service", "syncd-run-once.timer")
EXAMPLE_CONFIG = ROOT / "deploy" / "syncd.example.toml"
INSTALLED_SYNCD = "/usr/local/bin/syncd"  # where deploy/README.md installs it
CONFIG_PATH = "/etc/syncd/syncd.toml"
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)",
)


def systemd_version() -> int:
    assert SYSTEMD_ANALYZE is not None
    out = subprocess.run([SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True).stdout
    found = re.match(r"systemd (\d+)", out)
    return int(found[1]) if found else 0


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with all its values in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


def show(request: pytest.FixtureRequest, line: str) -> None:
    """Print to the terminal whatever pytest captures (also from an xdist worker, whose stderr
    is the terminal's)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        sys.stderr.write(f"\n{line}\n")
        sys.stderr.flush()


def this_syncd() -> str:
    """The syncd command of the Python running the tests, for ExecStart= in the copies."""
    script = Path(sys.executable).with_name("syncd")
    return str(script) if script.exists() else f"{sys.executable} -m syncd"


@pytest.fixture
def unit_copies(tmp_path: Path) -> Path:
    for name in UNITS:
        text = (UNIT_DIR / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace(INSTALLED_SYNCD, this_syncd()), encoding="utf-8")
    return tmp_path


# --- what the units say ---------------------------------------------------------------------


def test_daemon_unit_has_what_the_issue_asks() -> None:
    unit = parse_unit(UNIT_DIR / "syncd.service")
    service = unit["Service"]

    def get(key: str) -> str:
        return one(unit, "Service", key)

    assert get("Type") == "notify"
    assert get("ExecStart").split() == [INSTALLED_SYNCD, "run", "--config", CONFIG_PATH]
    assert get("WatchdogSec")
    assert get("Restart") == "on-failure"
    assert get("StateDirectory") == "syncd"
    assert get("DynamicUser") == "yes" or get("User") not in ("", "root", "0")
    # secrets: a credential the config reads from $CREDENTIALS_DIRECTORY, not the environment
    assert re.fullmatch(r"unisender_api_key:/etc/syncd/credentials/\S+", get("LoadCredential"))
    assert "EnvironmentFile" not in service and "Environment" not in service
    # the hardening the issue names
    assert get("ProtectSystem") == "strict"
    assert get("ProtectHome") in ("yes", "true", "read-only", "tmpfs")
    assert get("PrivateTmp") == "yes"
    assert get("NoNewPrivileges") == "yes"
    assert set(get("RestrictAddressFamilies").split()) <= {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service["SystemCallFilter"][0] == "@system-service"
    assert get("UMask") == "0077"
    assert get("CapabilityBoundingSet") == ""
    # the daemon's stop wait ([daemon] stop_timeout, 10 s by default) fits in systemd's
    assert int(get("TimeoutStopSec").removesuffix("s")) > 10
    assert "multi-user.target" in one(unit, "Install", "WantedBy")


def test_timer_units_share_the_daemons_identity_state_and_sandbox() -> None:
    daemon = parse_unit(UNIT_DIR / "syncd.service")
    once = parse_unit(UNIT_DIR / "syncd-run-once.service")
    timer = parse_unit(UNIT_DIR / "syncd-run-once.timer")

    assert one(once, "Service", "Type") == "oneshot"
    assert one(once, "Service", "ExecStart").split() == [
        INSTALLED_SYNCD,
        "run-once",
        "--config",
        CONFIG_PATH,
    ]
    assert "syncd.service" in one(once, "Unit", "Conflicts").split()
    # the same store and key as the daemon, and the same sandbox line for line (only the
    # daemon's lifecycle lines may differ)
    lifecycle = {
        "Type",
        "ExecStart",
        "ExecReload",
        "WatchdogSec",
        "Restart",
        "RestartSec",
        "RestartPreventExitStatus",
        "TimeoutStopSec",
        "TimeoutStartSec",
        "NotifyAccess",
    }
    sandbox = {k: v for k, v in daemon["Service"].items() if k not in lifecycle}
    assert {k: v for k, v in once["Service"].items() if k not in lifecycle} == sandbox
    assert one(timer, "Timer", "OnCalendar")
    assert one(timer, "Timer", "Persistent") == "true"
    assert timer["Timer"].get("Unit", ["syncd-run-once.service"]) == ["syncd-run-once.service"]
    assert "timers.target" in one(timer, "Install", "WantedBy")


def test_example_config_reads_the_units_credential_and_writes_only_in_its_state_directory(
    tmp_path: Path,
) -> None:
    unit = parse_unit(UNIT_DIR / "syncd.service")
    credential = one(unit, "Service", "LoadCredential").split(":", 1)[0]
    state = Path("/var/lib") / one(unit, "Service", "StateDirectory")
    (tmp_path / credential).write_text("key-from-credential\n", encoding="utf-8")

    data = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    config = parse_config(
        data, str(EXAMPLE_CONFIG), env={"CREDENTIALS_DIRECTORY": str(tmp_path)}, providers=PROVIDERS
    )

    assert [t.api_key.get_secret_value() for t in config.target] == ["key-from-credential"]
    assert all(t.api_key_file == f"{tmp_path}/{credential}" for t in config.target), (
        "the config must read the key from the credential the unit loads"
    )
    store = config.store.url.removeprefix("sqlite:///")
    for path in (store, config.inbox.path, config.outbox.path):
        assert Path(path).is_relative_to(state), f"{path} is outside StateDirectory= {state}"
    host, _port = config.http.address()
    assert host == "127.0.0.1"


# --- systemd-analyze ------------------------------------------------------------------------


@needs_analyze
def test_systemd_analyze_verify_accepts_every_unit(unit_copies: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    if (version := systemd_version()) < 247:
        pytest.skip(f"systemd {version} does not know ProtectProc=/ProcSubset= (247 and later)")
    paths = [str(unit_copies / name) for name in UNITS]
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *paths], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for an unknown or misspelt directive, which it only warns about: any
    # line about our units is a failure too
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(unit_copies) in line or any(name in line for name in UNITS)
    ]
    assert result.returncode == 0, result.stdout + result.stderr
    assert not ours, "\n".join(ours)


@needs_analyze
def test_systemd_analyze_security_rates_the_daemon_at_most_2(
    unit_copies: Path, request: pytest.FixtureRequest, record_property: pytest.RecordProperty
) -> None:
    assert SYSTEMD_ANALYZE is not None
    if (version := systemd_version()) < 250:
        pytest.skip(f"systemd {version}: `security --offline=true` needs systemd 250 or later")
    result = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "security",
            "--offline=true",
            f"--threshold={round(MAX_EXPOSURE * 10)}",  # the scale is 0..100 here
            "--no-pager",
            str(unit_copies / "syncd.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    found = re.search(r"Overall exposure level for syncd\.service: (\d+(?:\.\d+)?) (\w+)", output)
    assert found, output
    exposure = float(found.group(1))
    show(request, f"syncd.service: systemd-analyze security exposure {exposure} {found[2]}")
    record_property("exposure", exposure)
    assert exposure <= MAX_EXPOSURE, output
    assert result.returncode == 0, output  # --threshold agrees
