#!/usr/bin/env bash
# One command: set up gpumod in .venv and run the main job on the embedded default, the
# simulated GPU host (RTX 4090 profile, stand-in vLLM / llama.cpp servers, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
# editable_mode=compat: the checkout is put on sys.path by a plain .pth line, where setuptools'
# default editable finder is imported by every Python start in the venv (~10 ms of each command);
# a setuptools that no longer has the mode gets the default one
if [ ! -x .venv/bin/inv ] || [ pyproject.toml -nt .venv/.installed ] || ! grep -qxE 'compat|default' .venv/.installed 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  if .venv/bin/pip install --quiet -e '.[test]' --config-settings editable_mode=compat 2>/dev/null; then
    echo compat > .venv/.installed
  else
    .venv/bin/pip install --quiet -e '.[test]'
    echo default > .venv/.installed
  fi
fi
# byte-compiled as a pip install leaves a package (Python reads these even under PYTHONDONTWRITEBYTECODE)
.venv/bin/python -m compileall -q gpumod_tasks >/dev/null
export GPUMOD_STATE_DIR="${GPUMOD_STATE_DIR:-$PWD/.state}"
.venv/bin/inv mode.switch --name rag
.venv/bin/inv status
