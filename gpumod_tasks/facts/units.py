"""Unit state fact: one ``systemctl show`` for every unit, parsed without a host.

``systemctl show -p Id,LoadState,ActiveState,SubState,MainPID,Result,ActiveEnterTimestampMonotonic``
prints one block of ``Key=Value`` lines per unit, blocks separated by a blank line, in the order
asked.  We read properties rather than exit codes (systemctl's own advice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PROPS = ("Id", "LoadState", "ActiveState", "SubState", "MainPID", "Result", "ExecMainStartTimestampMonotonic", "ExecMainPID")


@dataclass(frozen=True)
class UnitState:
    unit: str
    load: str = "not-found"
    active: str = "inactive"  # active | reloading | inactive | failed | activating | deactivating
    sub: str = "dead"
    main_pid: int = 0
    result: str = "success"
    started_mono_us: int = 0
    last_pid: int = 0  # ExecMainPID: the main process of the last run, kept after it exited

    @property
    def is_running(self) -> bool:
        return self.active in ("active", "activating", "reloading") and self.sub != "exited"

    @property
    def is_failed(self) -> bool:
        return self.active == "failed"


# `systemctl --user` finds the user manager through $XDG_RUNTIME_DIR, which a non-login command
# (sudo, nsenter, `ssh host cmd` without pam_systemd) may lack: default it to /run/user/UID.
USER_BUS = ["sh", "-c", 'XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}" exec "$@"', "sh"]


def user_scoped(argv: Sequence[str], user: bool) -> list[str]:
    """``systemctl ARGS`` or ``journalctl ARGS`` for the system or the user manager."""
    if not user:
        return list(argv)
    return [*USER_BUS, argv[0], "--user", *argv[1:]]


def systemctl_show_argv(units: Sequence[str], user: bool = False) -> list[str]:
    return user_scoped(["systemctl", "show", "--no-pager", "-p", ",".join(PROPS), "--", *units], user)


def parse_systemctl_show(text: str, units: Sequence[str]) -> dict[str, UnitState]:
    """Blocks appear in the order the units were given; a unit missing from output is not-found."""
    blocks: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur = {}
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier():
            continue  # garbage line
        cur[key] = value
    if cur:
        blocks.append(cur)
    out: dict[str, UnitState] = {}
    by_id = {b.get("Id", ""): b for b in blocks}
    for i, unit in enumerate(units):
        b = by_id.get(unit) or (blocks[i] if i < len(blocks) and "Id" not in blocks[i] else None)
        if b is None:
            out[unit] = UnitState(unit)
            continue
        pid = b.get("MainPID", "0")
        mono = b.get("ExecMainStartTimestampMonotonic", "0")
        out[unit] = UnitState(
            unit=unit,
            load=b.get("LoadState", "not-found"),
            active=b.get("ActiveState", "inactive"),
            sub=b.get("SubState", "dead"),
            main_pid=int(pid) if pid.isdigit() else 0,
            result=b.get("Result", "success"),
            started_mono_us=int(mono) if mono.isdigit() else 0,
            last_pid=int(b.get("ExecMainPID", "0")) if b.get("ExecMainPID", "0").isdigit() else 0,
        )
    return out
