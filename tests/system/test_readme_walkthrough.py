"""The README's walkthrough ("Try it against the emulator first"), run as written.

Its first ```sh block starts the emulator; the second sets syncd up against it and syncs the
example contacts. Both run in a shell as they are printed, with two changes a parallel test run
needs: a free port instead of 8765, and `syncd` meaning this tree's syncd. The example files are
copied beside the shell, where a user in a clone of the repository finds them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import free_port, syncd_env

ROOT = Path(__file__).resolve().parents[2]
SECTION = "### Try it against the emulator first"
pytestmark = pytest.mark.slow


def walkthrough_blocks() -> list[str]:
    """The ```sh blocks of the walkthrough section, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    return re.findall(r"```sh\n(.*?)```", text[start:end], flags=re.S)


def shell_env(tmp_path: Path) -> dict[str, str]:
    """A PATH whose `syncd` is this interpreter running this tree's syncd."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "syncd"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m syncd "$@"\n')
    shim.chmod(0o755)
    env = syncd_env()
    env.pop("UNISENDER_API_KEY", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    emulate, setup = walkthrough_blocks()
    assert "syncd emulate unisender --port 8765" in emulate
    port = str(free_port())
    work = tmp_path / "clone"
    shutil.copytree(ROOT / "schemas" / "examples", work / "schemas" / "examples")
    env = shell_env(tmp_path)

    # `&` leaves the emulator running after its block; the test stops it by its process group
    server = subprocess.Popen(
        ["bash", "-c", emulate.replace("8765", port).replace("&", "")],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", setup.replace("8765", port)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        out = run.stdout
        assert "key accepted: yes, list 1 exists: yes" in out
        assert "rejected 0" in out and "rejected 1" not in out  # every example row is taken
        assert "newsletter: converged" in out and "0 open conflicts" in out

        # the example's names and cities reached the provider under its field names
        state = httpx.get(f"http://127.0.0.1:{port}/_emulator/state", params={"list_id": 1})
        by_email = {c["email"]: c["fields"] for c in state.json()["contacts"]}
        assert by_email["anna.k@example.com"] == {"Name": "Anna", "City": "Minsk"}
        assert by_email["dana@example.com"]["Name"] == "Dana"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
