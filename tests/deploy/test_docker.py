"""deploy/docker on a real Docker engine: the image is built with the legacy builder and with
BuildKit on a base made without any registry (scripts/docker-test-base), then run read-only with
its volume beside the Unisender emulator, and a contact file dropped in the volume's inbox must
reach the emulator.

The emulator runs in a container of the same image (`syncd emulate unisender`, no network but
loopback) and syncd joins its network namespace (`--network container:...`), as in
docker-compose.yml: syncd reaches the emulator on 127.0.0.1 and nothing binds a host port, so
parallel runs do not clash. Only the builds use the host's network (`--network host`), for pip.

Needs a Docker engine (`docker info` works) and, unless SYNCD_TEST_DOCKER_BASE names a Debian
bookworm image with python3 and python3-venv, root and debootstrap. Skipped without them, except
where SYNCD_TEST_DOCKER_REQUIRED=1 (.ci/run sets it): there it fails.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
REQUIRED = os.environ.get("SYNCD_TEST_DOCKER_REQUIRED") == "1"
# Debian's docker.io client where it is installed: it has BuildKit built in, where Docker's own
# client needs the buildx plugin for DOCKER_BUILDKIT=1.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
BUILDERS = {"legacy": "0", "buildkit": "1"}
API_KEY = "docker-test-key"
LIST = "newsletter"  # the local list of the image's syncd.docker.toml's [[target]]


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (SYNCD_TEST_DOCKER_REQUIRED=1)")
    pytest.skip(reason)


def docker(
    *args: str, builder: str | None = None, timeout: float = 120, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    assert DOCKER
    env = dict(os.environ)
    if builder is not None:
        env["DOCKER_BUILDKIT"] = BUILDERS[builder]
    return subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def show(request: pytest.FixtureRequest, line: str) -> None:
    """Print to the terminal whatever pytest captures (also from an xdist worker)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        sys.stderr.write(f"\n{line}\n")
        sys.stderr.flush()


def ignore_patterns(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [p.strip() for p in lines if p.strip() and not p.lstrip().startswith("#")]


# --- without an engine ------------------------------------------------------------------------


def test_dockerfile_needs_neither_buildkit_nor_a_frontend_from_docker_hub() -> None:
    full = DOCKERFILE.read_text(encoding="utf-8")
    # a parser directive pulls docker/dockerfile from Docker Hub on every BuildKit build
    assert not re.search(r"^#\s*syntax\s*=", full, re.MULTILINE | re.IGNORECASE)
    text = "\n".join(line for line in full.splitlines() if not line.lstrip().startswith("#"))
    # `RUN --mount` stops the legacy builder ("the --mount option requires BuildKit")
    assert not re.search(r"^\s*RUN\s+--", text, re.MULTILINE)
    # --start-interval and --chmod/--link are unknown to Debian's docker.io (20.10)
    assert "--start-interval" not in text
    assert not re.search(r"^\s*COPY\s+.*--(chmod|link)", text, re.MULTILINE)


def test_both_builders_get_the_same_allow_listed_context() -> None:
    legacy = ignore_patterns(ROOT / ".dockerignore")
    buildkit = ignore_patterns(DOCKERFILE.with_name("Dockerfile.dockerignore"))
    assert legacy == buildkit
    assert legacy[0] == "*", "an allow-list: everything ignored, then what the image needs"


# --- on an engine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> None:
    if DOCKER is None:
        unavailable("no docker client")
    info = docker("info", "--format", "{{.ServerVersion}}", timeout=60)
    if info.returncode != 0:
        unavailable(f"no Docker engine answers: {info.stderr.strip()}")


@pytest.fixture(scope="module")
def base_image(engine: None, request: pytest.FixtureRequest) -> str:
    given = os.environ.get("SYNCD_TEST_DOCKER_BASE")
    if given:
        return given
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        unavailable("no SYNCD_TEST_DOCKER_BASE, and no root with debootstrap to make one")
    started = time.monotonic()
    made = subprocess.run(
        [str(ROOT / "scripts" / "docker-test-base")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert made.returncode == 0, f"scripts/docker-test-base failed:\n{made.stderr[-3000:]}"
    tag = made.stdout.strip().splitlines()[-1]
    show(request, f"docker base image {tag} ready in {time.monotonic() - started:.0f} s")
    return tag


_built: dict[str, str] = {}


def build(builder: str, base: str, request: pytest.FixtureRequest) -> str:
    if builder in _built:
        return _built[builder]
    tag = f"syncd-test:{builder}"
    started = time.monotonic()
    # One build at a time across test workers: the second finds every step in the cache.
    with (Path(tempfile.gettempdir()) / "syncd-test-docker-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = docker(
            "build",
            "--network",
            "host",
            "--build-arg",
            f"PYTHON_IMAGE={base}",
            "-f",
            str(DOCKERFILE),
            "-t",
            tag,
            str(ROOT),
            builder=builder,
            timeout=900,
        )
    output = result.stdout + result.stderr
    if builder == "buildkit" and "buildx component is missing" in output:
        unavailable(f"{DOCKER} has no BuildKit (Docker's client without the buildx plugin)")
    assert "requires BuildKit" not in output, output
    ok(result)
    size = int(ok(docker("image", "inspect", "-f", "{{.Size}}", tag)))
    show(
        request,
        f"docker build ({builder}): {time.monotonic() - started:.0f} s, image {size / 1e6:.0f} MB",
    )
    _built[builder] = tag
    return tag


@pytest.fixture(scope="module", params=list(BUILDERS))
def image(base_image: str, request: pytest.FixtureRequest) -> str:
    return build(request.param, base_image, request)


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    """Unique container and volume names, removed afterwards whatever happened."""
    suffix = uuid.uuid4().hex[:10]
    made = {
        "emulator": f"syncd-test-emulator-{suffix}",
        "syncd": f"syncd-test-{suffix}",
        "app": f"syncd-test-app-{suffix}",
        "volume": f"syncd-test-data-{suffix}",
    }
    yield made
    docker("rm", "--force", "--volumes", made["syncd"], made["emulator"], made["app"])
    docker("volume", "rm", "--force", made["volume"])


def logs(container: str) -> str:
    result = docker("logs", container)
    return result.stdout + result.stderr


def exec_in(container: str, *command: str, stdin: str | None = None) -> str:
    return ok(docker("exec", "-i", container, *command, input=stdin))


def emulator_emails(syncd: str) -> set[str]:
    """The emulator's list 1, asked from the syncd container (they share one loopback)."""
    probe = (
        "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
        "'http://127.0.0.1:8765/_emulator/state?list_id=1', timeout=5).read().decode())"
    )
    return set(re.findall(r"[\w.+-]+@[\w.-]+", exec_in(syncd, "python", "-c", probe)))


def timestamp(text: str) -> datetime:
    """Docker's RFC 3339 time, nanoseconds cut to what datetime holds."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", text).replace("Z", "+00:00"))


def health(container: str) -> str:
    return ok(docker("inspect", "-f", "{{.State.Health.Status}}", container)).strip()


@pytest.mark.slow
def test_the_image_syncs_its_inbox_healthy_as_uid_10001_on_a_read_only_root_and_stops_cleanly(
    image: str, names: dict[str, str], request: pytest.FixtureRequest
) -> None:
    emulator, syncd = names["emulator"], names["syncd"]
    ok(
        docker(
            "run", "--detach", "--name", emulator, "--network", "none", "--read-only",
            "--no-healthcheck", image,
            "emulate", "unisender", "--host", "127.0.0.1", "--port", "8765",
            "--api-key", API_KEY,
        )
    )  # fmt: skip
    wait_for(lambda: "listening" in logs(emulator), "the emulator container to listen")

    ok(
        docker(
            "run", "--detach", "--name", syncd, "--network", f"container:{emulator}",
            "--read-only", "--volume", f"{names['volume']}:/var/lib/syncd",
            "--env", f"UNISENDER_API_KEY={API_KEY}", "--env", "UNISENDER_LIST_ID=1",
            "--env", "UNISENDER_BASE_URL=http://127.0.0.1:8765/en/api",
            # the shipped config also takes contacts over HTTP and signs webhooks
            "--env", "SYNCD_INGEST_TOKEN=docker-test-token",
            "--env", f"SYNCD_WEBHOOK_SECRET=whsec_{base64.b64encode(b'x' * 32).decode()}",
            image,
        )
    )  # fmt: skip
    wait_for(lambda: health(syncd) == "healthy", "the image's HEALTHCHECK to pass", timeout=60)
    # The probe's pace: the first passing probe comes at most one 5 s interval (plus the probe's
    # own run) after /healthz started listening, and, counted from the container's start (not
    # from `docker run`, which on the vfs storage driver first copies the image), in seconds,
    # not the 30 s a first probe used to wait.
    state = json.loads(ok(docker("inspect", "-f", "{{json .State}}", syncd)))
    healthy = timestamp(next(p for p in state["Health"]["Log"] if p["ExitCode"] == 0)["End"])
    stamped = docker("logs", "--timestamps", syncd)
    stamped_lines = stamped.stdout + stamped.stderr
    listening = timestamp(re.findall(r"^(\S+) .*listening on http", stamped_lines, re.MULTILINE)[0])
    assert (healthy - listening).total_seconds() < 7, f"listening {listening}, healthy {healthy}"
    healthy_after = (healthy - timestamp(state["StartedAt"])).total_seconds()
    assert healthy_after < 20, f"healthy only {healthy_after:.0f} s after the start"

    # the application's side: a contact file written beside the watch and renamed into the inbox
    inbox = "/var/lib/syncd/inbox"
    exec_in(
        syncd,
        "sh",
        "-c",
        f"cat > {inbox}/.signup.csv.part && mv {inbox}/.signup.csv.part {inbox}/signup.csv",
        stdin=f"email,name,city,lists\nada.docker@example.com,Ada,Minsk,{LIST}\n",
    )
    wait_for(
        lambda: "ada.docker@example.com" in emulator_emails(syncd),
        "the inbox file's contact to reach the emulator",
        timeout=60,
    )
    assert "signup.csv" in exec_in(syncd, "ls", f"{inbox}/processed")

    # uid 10001 is syncd's own (PID 1's), not only what `docker exec` defaults to
    status = exec_in(syncd, "cat", "/proc/1/status")
    assert re.search(r"^Uid:\s+10001\s+10001\s+10001\s+10001$", status, re.MULTILINE), status
    # a read-only root: nothing outside the volume is writable, /tmp included
    assert ok(docker("inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", syncd)).strip() == "true"
    for path in ("/etc/syncd/written", "/tmp/written", "/opt/syncd/written"):
        wrote = docker("exec", syncd, "sh", "-c", f": > {path}")
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, path

    started = time.monotonic()
    ok(docker("stop", syncd, timeout=60))
    stopped_in = time.monotonic() - started
    state = json.loads(ok(docker("inspect", "-f", "{{json .State}}", syncd)))
    assert state["ExitCode"] == 0, logs(syncd)[-3000:]
    assert stopped_in < 8, f"docker stop took {stopped_in:.1f} s (stop_timeout is 10 s)"
    show(
        request,
        f"docker run ({image}): healthy in {healthy_after:.1f} s, "
        f"docker stop in {stopped_in:.1f} s",
    )


@pytest.mark.slow
def test_the_example_app_stops_on_sigterm_as_pid_1(
    base_image: str, names: dict[str, str], request: pytest.FixtureRequest
) -> None:
    image = build("legacy", base_image, request)
    app = names["app"]
    ok(
        docker(
            "run", "--detach", "--name", app, "--network", "none", "--read-only",
            "--no-healthcheck", "--volume", f"{names['volume']}:/var/lib/syncd",
            "--volume", f"{ROOT / 'deploy/docker/example_app.py'}:/opt/example-app/app.py:ro",
            "--entrypoint", "python", image, "/opt/example-app/app.py",
        )
    )  # fmt: skip
    wait_for(lambda: "dropped inbox/signup-1.csv" in logs(app), "the example app to start")
    started = time.monotonic()
    ok(docker("stop", app, timeout=60))
    stopped_in = time.monotonic() - started
    assert ok(docker("inspect", "-f", "{{.State.ExitCode}}", app)).strip() == "0"
    assert stopped_in < 5, f"docker stop took {stopped_in:.1f} s: SIGTERM was ignored"


@pytest.mark.slow
def test_the_legacy_builder_sends_no_env_venv_or_git(base_image: str, tmp_path: Path) -> None:
    """The root .dockerignore is what the legacy builder applies: a context holding the usual
    suspects is built with it, and the image shows what arrived."""
    shutil.copy(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    files = [
        "pyproject.toml", "README.md", "syncd/__init__.py", "deploy/docker/syncd.docker.toml",
        ".env", "deploy/docker/.env", ".venv/bin/python", ".git/config", "syncd.db",
        "syncd/__pycache__/x.cpython-311.pyc", "tests/test_x.py",
    ]  # fmt: skip
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    dockerfile = f"FROM {base_image}\nCOPY . /context\nRUN cd /context && find . -type f\n"
    result = docker(
        "build", "--no-cache", "-f", "-", "-t", "syncd-test:context", str(tmp_path),
        builder="legacy", input=dockerfile,
    )  # fmt: skip
    sent = set(re.findall(r"^\./(\S+)$", ok(result), re.MULTILINE))
    docker("image", "rm", "syncd-test:context")
    assert sent == {
        "pyproject.toml", "README.md", "syncd/__init__.py", "deploy/docker/syncd.docker.toml"
    }, sent  # fmt: skip
