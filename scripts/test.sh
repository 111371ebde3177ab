#!/usr/bin/env bash
# The test command: installs what it needs into .venv, then runs the whole suite.
# pytest's exit code 5 ("no tests collected") is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/pytest ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv || exit 1
  .venv/bin/pip install --quiet --upgrade pip || exit 1
  .venv/bin/pip install --quiet -e '.[test]' || exit 1
  touch .venv/.installed
fi
.venv/bin/pytest -q "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi
exit $rc
