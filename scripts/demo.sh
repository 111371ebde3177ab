#!/usr/bin/env bash
# One command: set up gpumod in .venv and run the main job on the embedded default, the
# simulated GPU host (RTX 4090 profile, stand-in vLLM / llama.cpp servers, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/inv ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[test]'
  touch .venv/.installed
fi
export GPUMOD_STATE_DIR="${GPUMOD_STATE_DIR:-$PWD/.state}"
.venv/bin/inv mode.switch --name rag
.venv/bin/inv status
