"""deploy/docker without a Docker engine: the Dockerfile and compose file are parsed and checked,
and the container's own command line runs here as it would in the container.

The run test takes ENTRYPOINT + CMD, ENV and HEALTHCHECK from the Dockerfile, the config the
image holds and the variables of .env.example, and runs syncd as user nobody against a loopback
emulator, with the state directory ("/var/lib/syncd") the only writable place. The differences
from a container are spelled out where they are made: /var/lib/syncd and /etc/syncd get a
temporary prefix, and /healthz a free port instead of 9187 so that parallel tests do not clash.

"Only the state directory writable": as root with mount namespaces (`unshare --mount`), the
command runs in a namespace where every mount is remounted read-only except the state directory,
which is what `docker run --read-only -v ...:/var/lib/syncd` gives. Without them, only file
permissions keep nobody out (world-writable /tmp stays writable); the test says which it used.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

import syncd
from syncd.config import parse_config
from syncd.providers import PROVIDERS

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
STATE = "/var/lib/syncd"
SECRETISH = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)


# --- a Dockerfile reader --------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.image}: no {keyword}"
        return found[-1]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with continuation lines joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comments (parser directives too) may sit inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        if logical:
            keyword, _, args = logical.partition(" ")
            out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continuation"
    return out


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in instructions(path.read_text(encoding="utf-8")):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument; shell form would put /bin/sh between Docker and
    syncd, and sh does not pass SIGTERM on."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(stage: Stage) -> list[str]:
    words = stage.last("HEALTHCHECK")
    options, _, command = words.partition("CMD ")
    assert all(o.startswith("--") for o in options.split()), words
    return exec_form(command)


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"ENV {args}: use the KEY=value form"
            env[key] = value
    return env


def copy_sources(stage: Stage) -> list[str]:
    """What COPY/ADD take from the build context (not from another stage)."""
    sources: list[str] = []
    for keyword, args in stage.instructions:
        if keyword in ("COPY", "ADD"):
            words = [w for w in args.split() if not w.startswith("--")]
            if not any(w.startswith("--from") for w in args.split()):
                sources += words[:-1]
    return sources


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: {line!r} is not KEY=value"
            env[key.strip()] = value.strip()
    return env


def config_variables(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+)\}", text))


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile()


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def image_config_path(runtime: Stage) -> tuple[Path, str]:
    """The config file the image holds: (its source in the repository, its path in the image)."""
    for args in runtime.all("COPY"):
        words = args.split()
        if words[-1].endswith(".toml"):
            return ROOT / words[-2], words[-1]
    raise AssertionError("the runtime stage copies no configuration")


def show(request: pytest.FixtureRequest, line: str) -> None:
    """Print to the terminal whatever pytest captures (also from an xdist worker)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        sys.stderr.write(f"\n{line}\n")
        sys.stderr.flush()


# --- the Dockerfile -------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_a_pinned_slim_python_and_installs_a_wheel(
    stages: list[Stage], runtime: Stage
) -> None:
    assert len(stages) >= 2
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image not in names:
            # python:3.11.14-slim-bookworm: a full version, not a moving 3.11 or latest
            assert re.fullmatch(
                r"python:\d+\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.image
            )
    build = stages[0]
    assert any(re.search(r"\bpip wheel\b", run) for run in build.all("RUN"))
    # the build stage installs the wheels it built, and only those, into a virtualenv that the
    # runtime stage copies whole (a COPY --from works with the legacy builder; RUN --mount not)
    install = [run for run in build.all("RUN") if re.search(r"\bpip install\b", run)]
    assert install and all("--no-index" in run for run in install), install
    venv = re.search(r"\bvenv (/\S+)", " ".join(build.all("RUN")))
    assert venv, "the build stage installs into a virtualenv"
    assert build.name and f"--from={build.name} {venv[1]} {venv[1]}" in runtime.all("COPY"), (
        "the runtime stage must take the installed virtualenv from the build stage"
    )
    # one image for both stores: the PostgreSQL driver is built and installed with syncd
    assert any(re.search(r"pip wheel\b.*\[postgres\]", run) for run in build.all("RUN"))
    assert any("syncd[postgres]" in run for run in install), install
    assert not any("pip " in run or "setup.py" in run for run in runtime.all("RUN"))
    assert "syncd" not in copy_sources(runtime), "the runtime stage gets syncd as a wheel only"


def test_dockerfile_runs_as_non_root_with_the_state_volume_healthcheck_and_sigterm(
    runtime: Stage,
) -> None:
    user = runtime.last("USER").split(":")[0]
    assert user not in ("", "root", "0"), "must not run as root"
    assert user.isdigit(), "a numeric uid, so runAsNonRoot-style checks can verify it"
    volumes = runtime.last("VOLUME")
    assert STATE in (json.loads(volumes) if volumes.startswith("[") else volumes.split())
    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    probe = healthcheck_command(runtime)
    assert any("/healthz" in word for word in probe), probe
    command = exec_form(runtime.last("ENTRYPOINT")) + exec_form(runtime.last("CMD"))
    _source, in_image = image_config_path(runtime)
    assert command == ["syncd", "run", "--config", in_image]


def test_image_config_keeps_every_write_in_the_volume_and_no_secret(runtime: Stage) -> None:
    source, _in_image = image_config_path(runtime)
    text = source.read_text(encoding="utf-8")
    # with the example's values: its base_url must pass the plain-HTTP rule too
    env = {v: "x" for v in config_variables(text)} | read_env_file(DOCKER / ".env.example")
    config = parse_config(tomllib.loads(text), str(source), env=env, providers=PROVIDERS)
    store = config.store.url.removeprefix("sqlite:///")
    for path in (store, config.inbox.path, config.outbox.path):
        assert Path(path).is_relative_to(STATE), f"{path} is outside the volume {STATE}"
    # SQLite's temporary files too: /tmp is read-only, or compose's small tmpfs
    assert Path(env_of(runtime)["SQLITE_TMPDIR"]).is_relative_to(STATE)
    # /healthz listens where the HEALTHCHECK looks
    host, port = config.http.address()
    assert f"http://{host}:{port}/healthz" in " ".join(healthcheck_command(runtime))
    # the key is a reference, never a value in the file
    for target in tomllib.loads(text)["target"]:
        key = target.get("api_key", "")
        assert not key or re.fullmatch(r"\$\{\w+\}", key), "a literal api_key in the image"


def test_no_secret_is_baked_into_the_image_or_its_build_context(stages: list[Stage]) -> None:
    for stage in stages:
        for keyword in ("ENV", "ARG"):
            for args in stage.all(keyword):
                names = [w.partition("=")[0] for w in shlex.split(args)]
                assert not [n for n in names if SECRETISH.search(n)], f"{keyword} {args}"
        for source in copy_sources(stage):
            assert ".env" not in source and "credential" not in source.lower(), source
        assert not any(re.match(r"https?://", a) for a in stage.all("ADD"))
    # the build context is an allow-list: everything ignored, then exactly what COPY takes
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore").read_text(encoding="utf-8")
    patterns = [p.strip() for p in ignore.splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {s.rstrip("/") for stage in stages for s in copy_sources(stage) if s != "."}
    assert copied <= allowed, f"COPY takes {copied - allowed}, which the context leaves out"
    assert not [a for a in allowed if ".env" in a or a.endswith(".db")]


def test_env_file_is_git_ignored_and_the_example_holds_placeholders_only() -> None:
    example = read_env_file(DOCKER / ".env.example")
    config_vars = config_variables((DOCKER / "syncd.docker.toml").read_text(encoding="utf-8"))
    assert config_vars <= set(example), f"not in .env.example: {config_vars - set(example)}"
    for key, value in example.items():
        if SECRETISH.search(key):
            assert "placeholder" in value.lower(), f"{key} must be a placeholder, not {value!r}"
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot ask git whether deploy/docker/.env is ignored")

    def ignored(path: str) -> bool:
        command = [git, "check-ignore", "--no-index", "-q", path]
        return subprocess.run(command, cwd=ROOT, check=False).returncode == 0

    assert ignored("deploy/docker/.env"), "deploy/docker/.env (the secrets) is not git-ignored"
    assert not ignored("deploy/docker/.env.example"), "the example must be committed"


# --- the compose file -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip(
        "yaml", reason="PyYAML is not installed (the dev extra needs pyyaml to read compose)"
    )
    loaded = yaml.safe_load((DOCKER / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def volume_at(service: dict[str, Any], target: str) -> str | None:
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            if rest.split(":")[0] == target:
                return source
        elif volume.get("target") == target:
            return str(volume.get("source"))
    return None


def test_compose_runs_an_app_with_syncd_as_sidecar_and_the_emulator(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    syncd_svc, app, emulator = services["syncd"], services["app"], services["emulator"]
    for svc in (syncd_svc, app, emulator):
        build = svc.get("build", {})
        assert svc.get("image") == syncd_svc.get("image")
        assert not build or (DOCKER / build["context"] / build["dockerfile"]).resolve() == (
            DOCKERFILE
        )
        assert svc.get("read_only") is True
        assert svc.get("user") in (None, "10001", "10001:10001")  # the image's non-root user
    # the sidecar and the app share the volume holding the inbox and outbox
    shared = volume_at(syncd_svc, STATE)
    assert shared and shared == volume_at(app, STATE) and shared in compose.get("volumes", {})
    # the emulator listens on the compose network (for the app) and syncd, in its network
    # namespace, reaches it on loopback: the only place plain http:// may carry a key
    command = emulator["command"]
    assert command[:2] == ["emulate", "unisender"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert syncd_svc.get("network_mode") == "service:emulator"
    example = read_env_file(DOCKER / ".env.example")
    assert example["UNISENDER_BASE_URL"].startswith(f"http://127.0.0.1:{port}/")
    assert "emulator" in syncd_svc.get("depends_on", {})
    assert "syncd" in app.get("depends_on", {})
    # syncd uses the image's command and health check
    assert "command" not in syncd_svc and "entrypoint" not in syncd_svc
    assert not syncd_svc.get("healthcheck", {}).get("test")


def test_compose_takes_secrets_from_the_git_ignored_env_file_only(
    compose: dict[str, Any],
) -> None:
    env_files = compose["services"]["syncd"]["env_file"]
    env_files = [env_files] if isinstance(env_files, str) else env_files
    paths = [e if isinstance(e, str) else e["path"] for e in env_files]
    assert paths == [".env"]
    for name, svc in compose["services"].items():
        environment = svc.get("environment", {})
        if isinstance(environment, list):
            environment = dict(e.partition("=")[::2] for e in environment)
        leaked = [k for k in environment if SECRETISH.search(k)]
        assert not leaked, f"service {name} sets {leaked} in the compose file"


# --- the container's command line, run here ---------------------------------------------------

NOBODY = "nobody"


def wait_for(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    log: Path,
    proc: subprocess.Popen[bytes] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            last = f"syncd exited with {proc.returncode}"
            break
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    tail = log.read_text(encoding="utf-8", errors="replace")[-4000:] if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n--- syncd log:\n{tail}")


def nobody_can_enter(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def blocking_dir(
    path: Path, uid: int, gid: int, passable: frozenset[Path] = frozenset()
) -> Path | None:
    """The first directory on the way to ``path`` (resolved) that ``uid`` cannot enter."""
    current = Path("/")
    for part in (*path.parts[1:], None):
        if current not in passable and not nobody_can_enter(current.stat(), uid, gid):
            return current
        if part is None or not (current / part).is_dir():
            return None
        current = current / part
    return None


def needed_paths() -> list[Path]:
    """What running syncd reads: the interpreter, the standard library, the installed packages
    and syncd itself (an editable install points outside site-packages)."""
    paths = {Path(sys.executable).parent, Path(os.path.realpath(sys.executable))}
    paths.add(Path(syncd.__file__).resolve().parent)
    paths |= {Path(p).resolve() for p in sys.path if p and Path(p).is_dir()}
    return sorted(paths)


# Run as root inside `unshare --mount` (a private copy of the mount table), then exec the command
# as nobody. argv: JSON spec, then the command. It only changes mounts inside that namespace.
SANDBOX = r"""
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])

def mount(*args):
    subprocess.run(["mount", *args], check=True)

# A directory nobody cannot enter (say /root, 0700) on the way to the interpreter: cover it with an
# empty tmpfs and bind back only what syncd needs below it, the rest staying hidden.
for n, cover in enumerate(spec["covers"]):
    staged = []
    for i, keep in enumerate(cover["keep"]):
        stage = os.path.join(spec["stage"], f"bind-{n}-{i}")
        is_dir = os.path.isdir(keep)
        if is_dir:
            os.makedirs(stage, exist_ok=True)
        else:
            open(stage, "a").close()
        mount("--bind", keep, stage)
        staged.append((stage, keep, is_dir))
    mount("-t", "tmpfs", "-o", "mode=0755,size=1m", "tmpfs", cover["dir"])
    for stage, keep, is_dir in staged:
        if is_dir:
            os.makedirs(keep, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(keep), exist_ok=True)
            open(keep, "a").close()
        mount("--bind", stage, keep)

# Every mount read-only (remount,bind changes only this namespace's view) but the state dir.
writable = spec["writable"]
mount("--bind", writable, writable)
points = []
with open("/proc/self/mountinfo") as f:
    for line in f:
        point = line.split()[4].encode().decode("unicode_escape")
        if point != writable and point not in points:
            points.append(point)
for point in points:
    if point in ("/proc", "/sys") or point.startswith(("/proc/", "/sys/")):
        continue  # the kernel's views, as in a container
    if not os.path.exists(point):
        continue  # under a covered directory: hidden anyway
    if subprocess.run(["mount", "-o", "remount,bind,ro", point], capture_output=True).returncode:
        sys.exit(f"sandbox: could not make {point} read-only")
os.execvp(sys.argv[2], sys.argv[2:])
"""


@dataclass
class Sandbox:
    """How a command runs as nobody: the prefix, and what the test can claim about it."""

    root: Path
    writable: Path
    uid: int
    gid: int
    namespaced: bool
    covers: list[dict[str, Any]]

    def command(self, argv: list[str]) -> list[str]:
        setpriv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        if not self.namespaced:
            return [*setpriv, *argv]
        spec = {"writable": str(self.writable), "covers": self.covers, "stage": str(self.root)}
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            SANDBOX,
            json.dumps(spec),
            *setpriv,
            *argv,
        ]

    def describe(self) -> str:
        if self.namespaced:
            covered = ", ".join(c["dir"] for c in self.covers)
            return "every mount read-only except the state directory" + (
                f" (unreadable {covered} covered, the interpreter bound back in)" if covered else ""
            )
        return "file permissions only (no mount namespace here; /tmp stays writable)"


def mount_namespaces_work() -> bool:
    if not (shutil.which("unshare") and shutil.which("mount")):
        return False
    probe = ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "t", "/mnt"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("needs root: to create a directory owned by nobody and to run as nobody")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    try:
        user = pwd.getpwnam(NOBODY)
    except KeyError:
        pytest.skip("there is no user nobody")
    uid, gid = user.pw_uid, user.pw_gid
    # not pytest's tmp_path: its parent is 0700, so nobody could not reach it
    root = Path(tempfile.mkdtemp(prefix="syncd-deploy-"))
    try:
        root.chmod(0o755)
        if (blocked := blocking_dir(root, uid, gid)) is not None:
            pytest.skip(f"{blocked} keeps nobody out of the temporary directory {root}")
        writable = root / STATE.lstrip("/")
        writable.mkdir(parents=True)
        os.chown(writable, uid, gid)
        writable.chmod(0o700)
        namespaced = mount_namespaces_work()
        covers: dict[Path, set[Path]] = {}
        for path in needed_paths():
            blocked = blocking_dir(path, uid, gid)
            if blocked is None:
                continue
            if not namespaced:
                pytest.skip(
                    f"user nobody cannot reach {path} (needed to run syncd): {blocked} is "
                    f"{stat.filemode(blocked.stat().st_mode)} and mount namespaces, which would "
                    "let the test bind it in, are not available (needs root with CAP_SYS_ADMIN)"
                )
            keep = blocked / path.relative_to(blocked).parts[0]
            deeper = blocking_dir(path, uid, gid, passable=frozenset({blocked}))
            if deeper is not None:
                pytest.skip(f"user nobody cannot reach {path}: {blocked} and {deeper} keep it out")
            covers.setdefault(blocked, set()).add(keep)
        yield Sandbox(
            root,
            writable,
            uid,
            gid,
            namespaced,
            [{"dir": str(d), "keep": sorted(map(str, keep))} for d, keep in covers.items()],
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def emulator_for() -> Iterator[Callable[[str], str]]:
    """Start `syncd emulate unisender` on loopback accepting one key; returns its base URL."""
    procs: list[subprocess.Popen[str]] = []

    def start(api_key: str) -> str:
        port = free_port()
        command = [sys.executable, "-m", "syncd", "emulate", "unisender", "--port", str(port)]
        proc = subprocess.Popen(
            [*command, "--api-key", api_key],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_container_command_runs_as_nobody_with_only_the_state_dir_writable(
    runtime: Stage,
    sandbox: Sandbox,
    emulator_for: Callable[[str], str],
    request: pytest.FixtureRequest,
) -> None:
    # What the container would run, from the Dockerfile and the files it names.
    entrypoint = exec_form(runtime.last("ENTRYPOINT")) + exec_form(runtime.last("CMD"))
    probe = healthcheck_command(runtime)
    image_env = env_of(runtime)
    source, in_image = image_config_path(runtime)
    env_file = read_env_file(DOCKER / ".env.example")
    listen = parse_config(
        tomllib.loads(source.read_text(encoding="utf-8")),
        str(source),
        env={v: "x" for v in config_variables(source.read_text(encoding="utf-8"))} | env_file,
        providers=PROVIDERS,
    ).http.listen

    # The only changes: a prefix for the container's paths, a free port for /healthz, the
    # emulator's loopback address, and `syncd`/`python` resolved to this test's interpreter.
    prefix = sandbox.root
    http_port = free_port()
    local_listen = f"127.0.0.1:{http_port}"

    def local(text: str) -> str:
        for path in (STATE, str(Path(in_image).parent)):
            text = text.replace(path, f"{prefix}{path}")
        return text.replace(listen, local_listen)

    config_file = Path(local(in_image))
    config_file.parent.mkdir(parents=True)
    config_file.write_text(local(source.read_text(encoding="utf-8")), encoding="utf-8")
    for directory in (config_file.parent, config_file.parent.parent):
        directory.chmod(0o755)
    config_file.chmod(0o644)

    base = emulator_for(env_file["UNISENDER_API_KEY"])
    path = "/usr/local/bin:/usr/bin:/bin"
    env = {
        "PATH": path,
        "HOME": f"{prefix}{STATE}",  # the image's syncd user has its home in the volume
        "LANG": "C.UTF-8",
        # ENV PATH=/opt/syncd/bin:$PATH extends the base image's PATH
        **{k: local(v).replace("$PATH", path) for k, v in image_env.items()},
        **env_file,
        "UNISENDER_BASE_URL": f"{base}/en/api",
    }
    script = Path(sys.executable).with_name("syncd")
    syncd_cmd = [str(script)] if script.exists() else [sys.executable, "-m", "syncd"]
    assert entrypoint[0] == "syncd"
    argv = syncd_cmd + [local(word) for word in entrypoint[1:]]
    probe_argv = [sys.executable if w == "python" else local(w) for w in probe]
    show(request, f"container command as {NOBODY}: {shlex.join(argv)}; {sandbox.describe()}")

    # Before syncd: the sandbox really leaves only the state directory writable.
    if sandbox.namespaced:
        others = ["/tmp", "/var/tmp", "/dev/shm", str(prefix), str(config_file.parent)]
        check = (
            "import os, sys, tempfile\n"
            "def can_write(d):\n"
            "    try:\n"
            "        tempfile.TemporaryFile(dir=d).close()\n"
            "        return True\n"
            "    except OSError:\n"
            "        return False\n"
            f"bad = [d for d in {others!r} if os.path.isdir(d) and can_write(d)]\n"
            f"bad += [] if can_write({str(sandbox.writable)!r}) else ['NOT the state dir']\n"
            "sys.exit(', '.join(bad) or None)\n"
        )
        result = subprocess.run(
            sandbox.command([sys.executable, "-c", check]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"writable in the sandbox: {result.stderr}"

    log = prefix / "syncd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            sandbox.command(argv),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=local(runtime.last("WORKDIR")),
        )
    try:
        healthz = f"http://{local_listen}/healthz"
        wait_for(
            lambda: httpx.get(healthz, timeout=2).status_code == 200, 60, "/healthz", log, proc
        )
        # the image's own HEALTHCHECK command, run as the container user in the same sandbox
        result = subprocess.run(
            sandbox.command(probe_argv), env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"HEALTHCHECK failed: {result.stdout}{result.stderr}"

        # the whole path works as nobody: a file in the inbox reaches the provider
        inbox = sandbox.writable / "inbox"
        wait_for(inbox.is_dir, 30, "the inbox folder", log, proc)
        part = inbox / ".signup.csv.part"
        part.write_text("email,name,lists\ncontainer.run@example.com,Ann,newsletter\n")
        os.chown(part, sandbox.uid, sandbox.gid)
        part.rename(inbox / "signup.csv")
        state = f"{base}/_emulator/state?list_id={env_file['UNISENDER_LIST_ID']}"
        wait_for(
            lambda: (
                "container.run@example.com"
                in {c.get("email") for c in httpx.get(state, timeout=5).json()["contacts"]}
            ),
            60,
            "the inbox contact at the emulator",
            log,
            proc,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
    assert code == 0, f"exit {code} after SIGTERM\n{tail}"
    assert '"stopped"' in tail
    store = sandbox.writable / "syncd.db"
    assert store.stat().st_uid == sandbox.uid
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
