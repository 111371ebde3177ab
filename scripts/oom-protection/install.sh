#!/bin/sh
# gpumod: keep the box reachable under memory pressure (idempotent systemd drop-ins).
#
# Each protected unit (default: sshd.service and code-server.service) gets a drop-in with a
# guaranteed memory floor (MemoryMin=) and a low OOM score (OOMScoreAdjust=), so the OOM killer
# takes a model server (gpumod's units run with OOMScoreAdjust=500) long before your shell.
#
# usage: install.sh [--root DIR] [--memory-min SIZE] [--oom-score N] [UNIT ...]
#   --root DIR         install under DIR instead of / (nothing live is touched then)
#   --memory-min SIZE  memory floor per unit (default 512M)
#   --oom-score N      OOMScoreAdjust for protected units (default -900)
# Prints "changed PATH" / "ok PATH" per drop-in, then what was applied live. Exit 0 on success.
set -eu
case " $* " in
  *" --root "*|*" --root="*) ;;
  *) if [ "$(id -u)" != 0 ]; then exec sudo -n -- "$0" "$@"; fi ;;
esac
root=/ memmin=512M score=-900 units=
while [ $# -gt 0 ]; do
  case $1 in
    --root) root=$2; shift 2 ;;
    --root=*) root=${1#*=}; shift ;;
    --memory-min) memmin=$2; shift 2 ;;
    --memory-min=*) memmin=${1#*=}; shift ;;
    --oom-score) score=$2; shift 2 ;;
    --oom-score=*) score=${1#*=}; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "oom-protection: unknown option: $1" >&2; exit 2 ;;
    *) units="$units $1"; shift ;;
  esac
done
[ -n "$units" ] || units="sshd.service code-server.service"
case $score in -[0-9]*|[0-9]*) ;; *) echo "oom-protection: --oom-score must be -1000..1000, got '$score'" >&2; exit 2 ;; esac
root=${root%/}
changed=no
for u in $units; do
  case $u in *.service) ;; *) u="$u.service" ;; esac
  file="$root/etc/systemd/system/$u.d/90-gpumod-oom.conf"
  want="# Installed by gpumod (oom-protection/install.sh); do not edit, re-run it instead.
[Service]
MemoryMin=$memmin
OOMScoreAdjust=$score"
  if [ -f "$file" ] && [ "$(cat "$file")" = "$want" ]; then
    echo "ok $file"
  else
    mkdir -p "$(dirname "$file")"
    tmp=$(mktemp "$file.XXXXXX")
    printf '%s\n' "$want" > "$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$file"
    echo "changed $file"
    changed=yes
  fi
done
if [ -n "$root" ]; then
  echo "note not applied: installed under --root $root"
  exit 0
fi
if [ ! -d /run/systemd/system ]; then
  echo "note systemd is not running: drop-ins take effect when it does"
  exit 0
fi
if [ "$changed" = yes ]; then
  systemctl daemon-reload
  echo "applied daemon-reload"
fi
# OOMScoreAdjust= is read when a process starts: set it on running main processes now
for u in $units; do
  case $u in *.service) ;; *) u="$u.service" ;; esac
  pid=$(systemctl show -p MainPID --value "$u" 2>/dev/null || echo 0)
  if [ -n "$pid" ] && [ "$pid" != 0 ] && [ -w "/proc/$pid/oom_score_adj" ]; then
    if [ "$(cat "/proc/$pid/oom_score_adj")" != "$score" ]; then
      echo "$score" > "/proc/$pid/oom_score_adj"
      echo "applied oom_score_adj=$score to $u (pid $pid)"
    fi
  fi
done
