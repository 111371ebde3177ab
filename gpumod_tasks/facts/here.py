"""Command facts read in this process when the host is this very machine (no ``sh`` forked).

Each function prints exactly what its shell script prints (so one parser serves both, and the
script stays the truth for remote boxes and namespaces): the supervisor's ``systemctl show``-
shaped state blocks (``Supervisor.state_argv``) and the installed unit files' clock, mtime and
digest (``unitfiles.SCRIPT``).  A forked ``sh`` costs 5-14 ms per fact on a busy machine, two per
observation; these read a few small files.  Where the script would take its rare, slow path (a
pid file that cannot be read: it looks for the unit's runner with ``pgrep``), the state reader
answers None and the caller runs the script.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence

__all__ = ["supervisor_state_text", "unit_files_text"]


def _first_line(path: str) -> str | None:
    """The shell's ``read -r x < path``: the first line without surrounding blanks; None when the
    file cannot be opened ('' when it is empty)."""
    try:
        with open(path, "rb") as fh:
            line = fh.readline()
    except OSError:
        return None
    return line.decode("utf-8", "surrogateescape").rstrip("\n").strip(" \t")


def _ascii_digits(s: str) -> bool:
    return bool(s) and all("0" <= c <= "9" for c in s)


def _ident(pidf: str, boot: str) -> tuple[str, str, str, str] | None:
    """``ident PIDFILE`` of the supervisor's script: (why, pid, pstart, rawpid) with why one of
    running | gone | reused; None for garbled (the caller falls back to the script)."""
    raw = _first_line(pidf) or ""
    idl = _first_line(pidf + ".id") or ""
    words = raw.split()
    rawpid = words[0] if words else ""
    if len(words) != 1 or not _ascii_digits(words[0]) or words[0].startswith("0"):
        return None
    p = words[0]
    ids = idl.split()
    if len(ids) != 2 or not _ascii_digits(ids[0]):
        return None
    want, wboot = ids
    line = _first_line(f"/proc/{p}/stat")
    if line is None:
        return "gone", "0", "0", rawpid
    rest = line.rpartition(") ")[2]
    fields = rest.split()
    st = fields[0] if fields else ""
    if st in ("Z", "X", ""):
        return "gone", "0", "0", rawpid
    if len(fields) < 20:
        return None  # the script's `shift 19` would fail: let it say so
    start = fields[19]
    if start == want and boot == wboot:
        return "running", p, start, rawpid
    return "reused", "0", "0", rawpid


def supervisor_state_text(root: str, units: Sequence[str]) -> str | None:
    """What ``Supervisor.state_argv(units)`` prints, read here; None when a pid file is garbled."""
    boot = _first_line("/proc/sys/kernel/random/boot_id")
    boot = "-" if boot is None else boot
    out = []
    for u in units:
        pidf, rc = f"{root}/run/{u}.pid", f"{root}/run/{u}.rc"
        load = "loaded" if os.path.isfile(f"{root}/units/{u}.sh") else "not-found"
        active, sub, result, start, rawpid, pid = "inactive", "dead", "success", "0", "", "0"
        if os.path.isfile(pidf):
            got = _ident(pidf, boot)
            if got is None:
                return None
            why, pid, pstart, rawpid = got
            if why == "running":
                active, sub, start = "active", "running", pstart
            else:
                has_rc = os.path.isfile(rc)
                code = (_first_line(rc) or "") if has_rc else "0"
                if has_rc and not os.path.isfile(f"{root}/run/{u}.stopped") and code != "0":
                    active, sub, result = "failed", "failed", "exit-code"
        if not _ascii_digits(rawpid):
            rawpid = "0"
        out.append(f"Id={u}\nLoadState={load}\nActiveState={active}\nSubState={sub}\nMainPID={pid}\nResult={result}\n"
                   f"ExecMainStartTimestampMonotonic={start}0000\nExecMainPID={rawpid}\n\n")
    return "".join(out)


def _seconds(ns: int) -> str:
    """``date +%s.%N``."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def unit_files_text(directory: str, suffix: str, units: Sequence[str]) -> str:
    """What ``unitfiles.SCRIPT`` prints for ``units`` in ``directory``, read here."""
    try:
        with open("/proc/uptime") as fh:
            up = fh.read().split()[0]
    except (OSError, IndexError):
        up = ""
    lines = [f"clock {_seconds(time.time_ns())} {up}"]
    for u in units:
        f = f"{directory}/{u}{suffix}"
        try:
            if not os.path.isfile(f):
                raise FileNotFoundError(f)
            with open(f, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            mtime = os.stat(f).st_mtime_ns
        except OSError:
            lines.append(f"missing {u}")
            continue
        lines.append(f"file {u} {_seconds(mtime)} {digest}")
    return "\n".join(lines) + "\n"
