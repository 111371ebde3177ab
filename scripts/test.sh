#!/usr/bin/env bash
# The test command: installs what it needs into .venv, then runs the whole suite.
# pytest's exit code 5 ("no tests collected") is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
# The tests use real parts: systemd (unshare/nsenter), Debian's sshd in network namespaces
# (iproute2; sudo for a non-root login there), a llama-server compiled from source (cmake,
# g++), Debian's chromium with its chromedriver for the dashboard, and patch (a piped
# template.diff must apply). Install what is missing.
need=""
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh-keygen >/dev/null || need="$need openssh-client"
command -v ip >/dev/null || need="$need iproute2"
command -v sudo >/dev/null || need="$need sudo"
command -v cmake >/dev/null || need="$need cmake"
command -v g++ >/dev/null || need="$need g++"
command -v patch >/dev/null || need="$need patch"
[ -x /usr/bin/chromium ] || need="$need chromium"
[ -x /usr/bin/chromedriver ] || need="$need chromium-driver"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing:$need" >&2
    # never start the installed daemons on this machine (the tests start their own sshd)
    policy=/usr/sbin/policy-rc.d; made_policy=no
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=yes; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
    rc=$?
    [ "$made_policy" = yes ] && rm -f "$policy"
    [ $rc -eq 0 ] || { echo "could not install:$need" >&2; exit 1; }
  else
    echo "missing:$need (install them, as root: apt-get install$need)" >&2
  fi
fi
# editable_mode=compat: the checkout is put on sys.path by a plain .pth line, where setuptools'
# default editable finder is imported by every Python start in the venv (~10 ms of each command);
# a setuptools that no longer has the mode gets the default one
if [ ! -x .venv/bin/pytest ] || [ pyproject.toml -nt .venv/.installed ] || ! grep -qxE 'compat|default' .venv/.installed 2>/dev/null; then
  python3 -m venv .venv || exit 1
  .venv/bin/pip install --quiet --upgrade pip || exit 1
  if .venv/bin/pip install --quiet -e '.[test]' --config-settings editable_mode=compat 2>/dev/null; then
    echo compat > .venv/.installed
  else
    .venv/bin/pip install --quiet -e '.[test]' || exit 1
    echo default > .venv/.installed
  fi
fi
# byte-compiled as a pip install leaves a package (Python reads these even under PYTHONDONTWRITEBYTECODE)
.venv/bin/python -m compileall -q gpumod_tasks >/dev/null || exit 1
# LiteLLM's proxy (tests/test_fleet.py) gets a venv of its own, as `fleet.python` allows: litellm
# pins many packages, and gpumod runs it as a child process, never importing it
if [ ! -x .venv-fleet/bin/python ] || [ pyproject.toml -nt .venv-fleet/.installed ]; then
  mapfile -t fleet_reqs < <(python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['fleet']))")
  if python3 -m venv .venv-fleet && .venv-fleet/bin/pip install --quiet "${fleet_reqs[@]}"; then
    touch .venv-fleet/.installed
  else
    echo "could not install ${fleet_reqs[*]} into .venv-fleet: tests/test_fleet.py's proxy test is skipped" >&2
  fi
fi
# the habits that keep the code readable: lint and type checks (configured in pyproject.toml)
checks=0
if [ $# -eq 0 ]; then
  .venv/bin/ruff check . || { echo "ruff found problems (see above)" >&2; checks=1; }
  .venv/bin/mypy || { echo "mypy found problems (see above)" >&2; checks=1; }
fi
.venv/bin/pytest -q "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi
[ $rc -eq 0 ] && [ $checks -ne 0 ] && rc=1
exit $rc
