"""Service managers: systemd (system or user scope) and a small supervisor for hosts without one.

Both sit behind one interface and both go through the Host, so they work locally and over SSH.
The supervisor keeps each service as a detached process (``setsid``) with a pid file, an exit-code
file and a log file under ``<state_dir>/supervisor``; its state query prints ``systemctl show``-
shaped blocks so one parser serves both.  It does not restart crashed services (systemd's
``Restart=on-failure`` does); say which manager is in use wherever state is shown.
"""

from __future__ import annotations

import json
import shlex
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from .facts.units import UnitState, parse_systemctl_show, systemctl_show_argv, user_scoped
from .host.base import Host


@dataclass(frozen=True)
class ExecSpec:
    """What a unit runs, independent of how it is supervised."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    pre: tuple[tuple[str, ...], ...] = ()  # ExecStartPre commands
    workdir: str = ""
    private_env: tuple[tuple[str, str], ...] = ()  # the preset's env: in env_file (0600), never in the unit
    env_file: str = ""


class ServiceManager(ABC):
    kind: str = ""

    def __init__(self, host: Host):
        self.host = host

    @abstractmethod
    def states(self, units: Sequence[str]) -> dict[str, UnitState]: ...

    @abstractmethod
    def state_argv(self, units: Sequence[str]) -> list[str]:
        """The command whose output ``parse_systemctl_show`` reads (batched into fact round trips)."""

    @abstractmethod
    def start(self, unit: str) -> None: ...

    @abstractmethod
    def stop(self, unit: str) -> None: ...

    def restart(self, unit: str) -> None:
        self.stop(unit)
        self.start(unit)

    @abstractmethod
    def logs(self, unit: str, lines: int = 30) -> str: ...


class Systemd(ServiceManager):
    kind = "systemd"

    def __init__(self, host: Host, user: bool = False):
        super().__init__(host)
        self.user = user

    def _ctl(self, *args: str, ok: Sequence[int] = (0,)) -> str:
        argv = user_scoped(["systemctl", *args], self.user)
        return self.host.run(argv, sudo=not self.user, ok=ok, what=" ".join(["systemctl", *args])).stdout

    def state_argv(self, units: Sequence[str]) -> list[str]:
        return systemctl_show_argv(units, self.user)

    def states(self, units: Sequence[str]) -> dict[str, UnitState]:
        if not units:
            return {}
        r = self.host.run(self.state_argv(units), what="systemctl show")
        return parse_systemctl_show(r.stdout, units)

    def start(self, unit: str) -> None:
        self._ctl("start", "--", unit)

    def stop(self, unit: str) -> None:
        self._ctl("stop", "--", unit)

    def restart(self, unit: str) -> None:
        self._ctl("restart", "--", unit)

    def reset_failed(self, unit: str) -> None:
        self._ctl("reset-failed", "--", unit, ok=(0, 1, 5))

    def daemon_reload(self) -> None:
        self._ctl("daemon-reload")

    def logs(self, unit: str, lines: int = 30) -> str:
        # a user unit's journal lives under the user's own stream: --user-unit, not --user -u
        argv = ["journalctl", *(["--user-unit", unit] if self.user else ["-u", unit]), "-n", str(lines), "--no-pager", "-o", "cat"]
        return self.host.run(argv, sudo=not self.user, ok=(0, 1)).stdout


class Supervisor(ServiceManager):
    kind = "supervisor"

    def __init__(self, host: Host, state_dir: str):
        super().__init__(host)
        self.root = f"{state_dir}/supervisor"

    def _paths(self, unit: str) -> dict[str, str]:
        return {
            "spec": f"{self.root}/units/{unit}.sh",
            "pid": f"{self.root}/run/{unit}.pid",
            "rc": f"{self.root}/run/{unit}.rc",
            "stopped": f"{self.root}/run/{unit}.stopped",
            "log": f"{self.root}/log/{unit}.log",
        }

    def script(self, unit: str, spec: ExecSpec) -> str:
        """The runner script for a unit: ExecStartPre checks, then exec of the command."""
        lines = ["#!/bin/sh", f"# gpumod supervisor unit {unit} (generated; do not edit)"]
        for argv in spec.pre:
            lines.append(" ".join(shlex.quote(a) for a in argv) + " || exit 1")
        if spec.workdir:
            lines.append(f"cd {shlex.quote(spec.workdir)} || exit 1")
        if spec.env_file:
            from .render import env_digest

            lines.append(f"# private environment: {len(spec.private_env)} variables, sha256 {env_digest(spec.private_env)}")
            lines.append(f"set -a; . {shlex.quote(spec.env_file)} || exit 1; set +a")
        envs = " ".join(shlex.quote(f"{k}={v}") for k, v in spec.env)
        lines.append("exec " + (f"env {envs} " if envs else "") + " ".join(shlex.quote(a) for a in spec.argv))
        return "\n".join(lines) + "\n"

    def install(self, unit: str, spec: ExecSpec) -> bool:
        if spec.env_file:
            from .render import write_env_file

            write_env_file(self.host, spec)
        return self.host.write_file(self._paths(unit)["spec"], self.script(unit, spec), mode=0o755)

    def uninstall(self, unit: str) -> bool:
        return self.host.remove_file(self._paths(unit)["spec"])

    def installed(self) -> list[str]:
        r = self.host.sh(f"ls {shlex.quote(self.root)}/units 2>/dev/null || true")
        return sorted(n[:-3] for n in r.stdout.split() if n.endswith(".sh"))

    def spec_text(self, unit: str) -> str | None:
        return self.host.read_file(self._paths(unit)["spec"])

    def states(self, units: Sequence[str]) -> dict[str, UnitState]:
        if not units:
            return {}
        r = self.host.run(self.state_argv(units), what="supervisor state")
        return parse_systemctl_show(r.stdout, units)

    def state_argv(self, units: Sequence[str]) -> list[str]:
        # prints systemctl-show-shaped blocks; one round trip for all units
        # fork-free (shell builtins only): this runs on every observation, for every unit
        script = r'''
root=$1; shift
for u in "$@"; do
  pidf="$root/run/$u.pid"; rc="$root/run/$u.rc"; load=loaded
  [ -f "$root/units/$u.sh" ] || load=not-found
  pid=0; active=inactive; sub=dead; result=success; start=0
  if [ -f "$pidf" ]; then
    read -r pid < "$pidf" || pid=0
    st=
    if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
      # field 3 is the state, field 22 the start time in clock ticks since boot (USER_HZ = 100)
      read -r line < "/proc/$pid/stat" 2>/dev/null && { rest=${line##*) }; st=${rest%% *}; set -- $rest; shift 19; start=${1:-0}; }
    fi
    if [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]; then
      active=active; sub=running
    else
      pid=0; code=0; start=0
      [ -f "$rc" ] && read -r code < "$rc"
      if [ -f "$rc" ] && [ ! -f "$root/run/$u.stopped" ] && [ "$code" != 0 ]; then
        active=failed; sub=failed; result=exit-code
      fi
    fi
  fi
  printf 'Id=%s\nLoadState=%s\nActiveState=%s\nSubState=%s\nMainPID=%s\nResult=%s\nExecMainStartTimestampMonotonic=%s0000\n\n' "$u" "$load" "$active" "$sub" "$pid" "$result" "$start"
done
'''
        return ["sh", "-c", script, "sh", self.root, *units]

    def start(self, unit: str) -> None:
        p = self._paths(unit)
        script = r'''
spec=$1; pidf=$2; rc=$3; stopped=$4; log=$5
[ -f "$spec" ] || { echo "unit $(basename "$spec" .sh) is not installed" >&2; exit 5; }
if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then exit 0; fi
mkdir -p "$(dirname "$pidf")" "$(dirname "$log")"
rm -f "$pidf" "$rc" "$stopped"
echo "-- gpumod supervisor: starting $(basename "$spec" .sh) at $(date '+%F %T')" >> "$log"
setsid sh -c 'sh "$0" & echo $! > "$1"; wait $!; echo $? > "$2"' "$spec" "$pidf" "$rc" >> "$log" 2>&1 < /dev/null &
i=0; while [ ! -s "$pidf" ] && [ $i -lt 200 ]; do sleep 0.005; i=$((i+1)); done
'''
        self.host.run(["sh", "-c", script, "sh", p["spec"], p["pid"], p["rc"], p["stopped"], p["log"]], what=f"start {unit}")

    def stop(self, unit: str) -> None:
        p = self._paths(unit)
        script = r'''
pidf=$1; stopped=$2
[ -f "$pidf" ] || exit 0
touch "$stopped"; pid=$(cat "$pidf")
kill -TERM "$pid" 2>/dev/null
i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 600 ]; do
  st=$(sed -e 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1); [ "$st" = Z ] && break
  sleep 0.005; i=$((i+1)); done
kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
rm -f "$pidf"
'''
        self.host.run(["sh", "-c", script, "sh", p["pid"], p["stopped"]], what=f"stop {unit}")

    def logs(self, unit: str, lines: int = 30) -> str:
        r = self.host.run(["tail", "-n", str(lines), self._paths(unit)["log"]], ok=(0, 1))
        return r.stdout

    def status_json(self) -> str:
        return json.dumps({"kind": self.kind, "root": self.root})
