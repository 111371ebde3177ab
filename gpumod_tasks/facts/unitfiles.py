"""Installed unit files fact: digest and mtime of each unit file, with the host's clock, in one
command (sha256sum and GNU date, both coreutils). The parser is pure.

Output: a line ``clock NOW UPTIME`` (epoch seconds, seconds since boot), then per unit either
``file UNIT MTIME DIGEST`` or ``missing UNIT``. The boot time NOW - UPTIME turns a unit's
``ExecMainStartTimestampMonotonic`` into a wall time to compare with the file's mtime.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..observed import UnitFile

SCRIPT = r'''
dir=$1; suffix=$2; shift 2
read -r up _ < /proc/uptime
echo "clock $(date +%s.%N) $up"
for u in "$@"; do
  f="$dir/$u$suffix"
  if [ -f "$f" ]; then
    set -- $(sha256sum < "$f")
    echo "file $u $(date -r "$f" +%s.%N) $1"
  else
    echo "missing $u"
  fi
done
'''


def unit_files_argv(directory: str, suffix: str, units: Sequence[str]) -> list[str]:
    return ["sh", "-c", SCRIPT, "sh", directory, suffix, *units]


def parse_unit_files(text: str, units: Sequence[str]) -> tuple[dict[str, UnitFile], float]:
    """-> ({unit: UnitFile}, boot time). Units absent from the output read as not installed."""
    out: dict[str, UnitFile] = {}
    boot = 0.0
    for line in text.splitlines():
        parts = line.split()
        try:
            if parts[:1] == ["clock"] and len(parts) >= 3:
                boot = float(parts[1]) - float(parts[2])
            elif parts[:1] == ["file"] and len(parts) >= 4:
                out[parts[1]] = UnitFile(parts[1], True, parts[3], float(parts[2]))
            elif parts[:1] == ["missing"] and len(parts) >= 2:
                out[parts[1]] = UnitFile(parts[1], False)
        except ValueError:
            continue  # a garbled line: that unit reads as unknown below
    for u in units:
        out.setdefault(u, UnitFile(u, False))
    return out, boot
