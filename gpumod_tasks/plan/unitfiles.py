"""Unit-file decisions (pure): which units to write before a start, when to daemon-reload, and
when a running process must restart because its unit changed under it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..observed import Observed, RenderedUnit
from .policy import Policy
from .steps import DaemonReload, InstallUnit, Step


def stale_reason(seen: Observed, sid: str, unit: str, rendered: Mapping[str, RenderedUnit] | None, policy: Policy) -> str:
    """Why the running process of ``sid`` runs an outdated definition ("" when it does not)."""
    uf = seen.unit_files.get(unit)
    if uf is None or not uf.installed:
        return ""
    r = (rendered or {}).get(unit)
    if r is not None and uf.digest != r.digest:
        return "restart: its preset changed since the unit was installed"
    started = seen.started_at(sid)
    if started and uf.mtime > started + policy.stale_unit_slack_s:
        return f"restart: unit file written {uf.mtime - started:.0f}s after the process started"
    return ""


def install_steps(units: Iterable[str], rendered: Mapping[str, RenderedUnit] | None, seen: Observed) -> list[Step]:
    """InstallUnit for each unit that is missing or differs from its rendering; one daemon-reload
    after them under systemd."""
    if rendered is None:
        return []
    steps: list[Step] = []
    done: set[str] = set()
    for u in units:
        r = rendered.get(u)
        uf = seen.unit_files.get(u)
        if r is None or u in done or uf is None:
            continue
        done.add(u)
        if not uf.installed:
            steps.append(InstallUnit(u, "not installed", r.body, r.digest, r.spec))
        elif uf.digest != r.digest:
            steps.append(InstallUnit(u, "differs from the rendered preset", r.body, r.digest, r.spec))
    if steps and seen.manager == "systemd":
        steps.append(DaemonReload(tuple(s.unit for s in steps if isinstance(s, InstallUnit))))
    return steps
