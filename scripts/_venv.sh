# Shared by scripts/demo and scripts/test: make ./.venv, install syncd into it once, compile it.
# Re-installs when pyproject.toml is newer than the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.installed-$1"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root$2"
  touch "$stamp"
fi
# The package's bytecode, made here: an editable install leaves it to the first run, and where
# PYTHONDONTWRITEBYTECODE is set every run would compile syncd's modules again (about 0.1 s of
# CPU a `syncd run-once`). Only modules changed since are compiled again.
"$venv/bin/python" -m compileall -q "$root/syncd" >/dev/null
