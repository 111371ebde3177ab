"""Service managers: systemd (system or user scope) and a small supervisor for hosts without one.

Both sit behind one interface and both go through the Host, so they work locally and over SSH.
The supervisor keeps each service as a detached process (``setsid``) with a pid file, an exit-code
file and a log file under ``<state_dir>/supervisor``; its state query prints ``systemctl show``-
shaped blocks so one parser serves both.  It does not restart crashed services (systemd's
``Restart=on-failure`` does); say which manager is in use wherever state is shown.
"""

from __future__ import annotations

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

    def reset_failed(self, unit: str) -> None:
        self._ctl("reset-failed", "--", unit, ok=(0, 1, 5))

    def daemon_reload(self) -> None:
        self._ctl("daemon-reload")

    def logs(self, unit: str, lines: int = 30) -> str:
        # a user unit's journal lives under the user's own stream: --user-unit, not --user -u
        argv = ["journalctl", *(["--user-unit", unit] if self.user else ["-u", unit]), "-n", str(lines), "--no-pager", "-o", "cat"]
        return self.host.run(argv, sudo=not self.user, ok=(0, 1)).stdout


# The supervisor's runner shell (``sh -c WRAPPER gpumod-supervise SPEC PIDFILE RCFILE``, the leader
# of its own session and process group): starts the unit, records its identity, waits, records the
# exit code. Identity: ``PIDFILE`` holds the pid, ``PIDFILE.id`` the process's start time (field 22
# of /proc/PID/stat, clock ticks since boot) and the boot id; a pid is the unit's only while both
# match, so a pid reused by another process after the unit died is never taken for it.
WRAPPER_SH = r'''spec=$1; pidf=$2; rc=$3
sh "$spec" & pid=$!
start=0; boot=-
if read -r line < "/proc/$pid/stat"; then rest=${line##*) }; set -f; set -- $rest; shift 19; start=$1; fi
read -r boot 2>/dev/null < /proc/sys/kernel/random/boot_id || boot=-
printf '%s %s\n' "$start" "$boot" > "$pidf.id.new" && mv -f "$pidf.id.new" "$pidf.id"
printf '%s\n' "$pid" > "$pidf.new" && mv -f "$pidf.new" "$pidf"
wait "$pid"; echo $? > "$rc"
'''

# ``ident PIDFILE`` sets why (running | gone | reused | garbled), pid (the unit's, or 0), pstart and
# rawpid. A unit whose pid file cannot be read is found through its runner shell (``runners SPEC
# PIDFILE RC``: by the paths in its command line, a process-group leader, never this script
# itself; sets found and kids): its state reads running with Result=pidfile-garbled while the
# runner's child lives (failed when none is found), and ``reap SPEC PIDFILE RC LOG`` stops it,
# logging why.
IDENTITY_SH = r'''set -f
ident() {
  pid=0; why=gone; pstart=0; rawpid=; raw=; idl=
  [ -f "$1" ] || return 0
  read -r raw 2>/dev/null < "$1"
  read -r idl 2>/dev/null < "$1.id"
  set -- $raw
  rawpid=$1
  [ $# -eq 1 ] || { why=garbled; return 0; }
  case "$1" in *[!0-9]*|0*) why=garbled; return 0;; esac
  p=$1
  set -- $idl
  [ $# -eq 2 ] || { why=garbled; return 0; }
  case "$1" in ''|*[!0-9]*) why=garbled; return 0;; esac
  want=$1; wboot=$2; boot=-
  read -r boot 2>/dev/null < /proc/sys/kernel/random/boot_id || boot=-
  line=
  read -r line 2>/dev/null < "/proc/$p/stat" || return 0
  rest=${line##*) }; set -- $rest; st=$1; shift 19
  case "$st" in Z|X|'') return 0;; esac
  if [ "$1" = "$want" ] && [ "$boot" = "$wboot" ]; then pid=$p; pstart=$1; why=running; else why=reused; fi
}
runners() {
  found=; kids=
  re=$(printf '%s' "$1 $2 $3" | sed 's/[][\.*^$+?(){}|]/\\&/g')
  for g in $(pgrep -f -- "$re" 2>/dev/null); do
    [ "$g" = $$ ] && continue
    line=; read -r line 2>/dev/null < "/proc/$g/stat" || continue
    rest=${line##*) }; set -- $rest
    [ "$3" = "$g" ] || continue  # a runner leads its own process group (setsid)
    found="$found $g"; kids="$kids $(pgrep -P "$g")"
  done
  return 0
}
reap() {
  r_pidf=$2; r_log=$4
  what=$(head -c 60 "$2" 2>/dev/null | tr -cd '[:print:]')
  runners "$1" "$2" "$3"
  echo "-- gpumod supervisor: pid file $r_pidf unreadable ('$what'); stopping the unit's runner${found:- (none found)}" >> "$r_log"
  [ -n "$found" ] || return 0
  for c in $kids; do kill -TERM "$c" 2>/dev/null; done  # the unit, as a plain stop would
  i=0; while [ $i -lt 600 ]; do
    alive=; for c in $kids; do
      line=; read -r line 2>/dev/null < "/proc/$c/stat" || continue
      rest=${line##*) }; case "$rest" in Z*|X*) ;; *) alive=1;; esac
    done
    [ -n "$alive" ] || break; sleep 0.005; i=$((i+1)); done
  for g in $found; do kill -KILL "-$g" 2>/dev/null; done  # what is left of the runner's group
  return 0
}
'''


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
            from .envfile import env_digest

            lines.append(f"# private environment: {len(spec.private_env)} variables, sha256 {env_digest(spec.private_env)}")
            lines.append(f"set -a; . {shlex.quote(spec.env_file)} || exit 1; set +a")
        envs = " ".join(shlex.quote(f"{k}={v}") for k, v in spec.env)
        lines.append("exec " + (f"env {envs} " if envs else "") + " ".join(shlex.quote(a) for a in spec.argv))
        return "\n".join(lines) + "\n"

    def install(self, unit: str, spec: ExecSpec) -> bool:
        if spec.env_file:
            from .envfile import write_env_file

            write_env_file(self.host, spec.env_file, spec.private_env)
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
        if self.host.is_this_machine:  # the same blocks read in this process, no sh forked
            from .facts.here import supervisor_state_text

            text = supervisor_state_text(self.root, units)
            if text is not None:
                return parse_systemctl_show(text, units)
        r = self.host.run(self.state_argv(units), what="supervisor state")
        return parse_systemctl_show(r.stdout, units)

    def state_argv(self, units: Sequence[str]) -> list[str]:
        # prints systemctl-show-shaped blocks; one round trip for all units
        # fork-free (shell builtins only) but for an unreadable pid file: this runs on every
        # observation, for every unit
        script = IDENTITY_SH + r'''
root=$1; shift
for u in "$@"; do
  pidf="$root/run/$u.pid"; rc="$root/run/$u.rc"; load=loaded
  [ -f "$root/units/$u.sh" ] || load=not-found
  active=inactive; sub=dead; result=success; start=0; rawpid=
  if [ -f "$pidf" ]; then
    ident "$pidf"
    if [ "$why" = running ]; then
      active=active; sub=running; start=$pstart
    elif [ "$why" = garbled ]; then
      # the pid file says nothing; the unit's runner shell, if alive, still knows its child
      result=pidfile-garbled; active=failed; sub=failed
      runners "$root/units/$u.sh" "$pidf" "$rc"
      for c in $kids; do
        line=; read -r line 2>/dev/null < "/proc/$c/stat" || continue
        rest=${line##*) }; set -- $rest; [ "$1" = Z ] && continue; shift 19
        pid=$c; start=$1; active=active; sub=running; break
      done
    else
      code=0
      [ -f "$rc" ] && read -r code < "$rc"
      if [ -f "$rc" ] && [ ! -f "$root/run/$u.stopped" ] && [ "$code" != 0 ]; then
        active=failed; sub=failed; result=exit-code
      fi
    fi
  else
    pid=0
  fi
  case "$rawpid" in ''|*[!0-9]*) rawpid=0;; esac
  printf 'Id=%s\nLoadState=%s\nActiveState=%s\nSubState=%s\nMainPID=%s\nResult=%s\nExecMainStartTimestampMonotonic=%s0000\nExecMainPID=%s\n\n' "$u" "$load" "$active" "$sub" "$pid" "$result" "$start" "$rawpid"
done
'''
        return ["sh", "-c", script, "sh", self.root, *units]

    def start(self, unit: str) -> None:
        p = self._paths(unit)
        script = IDENTITY_SH + r'''
spec=$1; pidf=$2; rc=$3; stopped=$4; log=$5
[ -f "$spec" ] || { echo "unit $(basename "$spec" .sh) is not installed" >&2; exit 5; }
ident "$pidf"
[ "$why" = running ] && exit 0
if [ "$why" = garbled ]; then
  # the runner still running the unit is the truth: write its child's identity back, no restart
  runners "$spec" "$pidf" "$rc"
  for c in $kids; do
    line=; read -r line 2>/dev/null < "/proc/$c/stat" || continue
    rest=${line##*) }; set -- $rest; [ "$1" = Z ] && continue; shift 19
    read -r boot 2>/dev/null < /proc/sys/kernel/random/boot_id || boot=-
    echo "-- gpumod supervisor: pid file $pidf unreadable; pid $c of the unit's runner written back" >> "$log"
    printf '%s %s\n' "$1" "$boot" > "$pidf.id.new" && mv -f "$pidf.id.new" "$pidf.id"
    printf '%s\n' "$c" > "$pidf.new" && mv -f "$pidf.new" "$pidf"
    exit 0
  done
fi
mkdir -p "$(dirname "$pidf")" "$(dirname "$log")"
rm -f "$pidf" "$pidf.id" "$rc" "$stopped"
echo "-- gpumod supervisor: starting $(basename "$spec" .sh) at $(date '+%F %T')" >> "$log"
setsid sh -c "$WRAPPER" gpumod-supervise "$spec" "$pidf" "$rc" >> "$log" 2>&1 < /dev/null &
i=0; while [ ! -s "$pidf" ] && [ $i -lt 200 ]; do sleep 0.005; i=$((i+1)); done
'''
        self.host.run(["sh", "-c", f"WRAPPER={shlex.quote(WRAPPER_SH)}\n" + script, "sh",
                       p["spec"], p["pid"], p["rc"], p["stopped"], p["log"]], what=f"start {unit}")

    def stop(self, unit: str) -> None:
        """Stop the unit's process, and only it: a pid file whose pid now names another process is
        dropped without a signal; an unreadable one is reaped through the unit's supervisor shell."""
        p = self._paths(unit)
        script = IDENTITY_SH + r'''
pidf=$1; stopped=$2; log=$3; spec=$4; rc=$5
[ -f "$pidf" ] || exit 0
touch "$stopped"
ident "$pidf"
if [ "$why" = running ]; then
  kill -TERM "$pid" 2>/dev/null
  i=0; while [ $i -lt 600 ]; do ident "$pidf"; [ "$why" = running ] || break; sleep 0.005; i=$((i+1)); done
  [ "$why" = running ] && kill -KILL "$pid" 2>/dev/null
elif [ "$why" = garbled ]; then
  reap "$spec" "$pidf" "$rc" "$log"
elif [ "$why" = reused ]; then
  echo "-- gpumod supervisor: pid $rawpid of $(basename "$pidf" .pid) is another process now; not signalled" >> "$log"
fi
rm -f "$pidf" "$pidf.id"
'''
        self.host.run(["sh", "-c", script, "sh", p["pid"], p["stopped"], p["log"], p["spec"], p["rc"]], what=f"stop {unit}")

    def logs(self, unit: str, lines: int = 30) -> str:
        r = self.host.run(["tail", "-n", str(lines), self._paths(unit)["log"]], ok=(0, 1))
        return r.stdout
