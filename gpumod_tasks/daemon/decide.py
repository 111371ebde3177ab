"""The router daemon's decisions, as plain functions of one observation (no I/O, no asyncio).

- ``choose_mode``: which mode to switch to for a model outside the current mode: every candidate
  is planned from the same observation (the planner is pure), refused ones are dropped, and the
  one with the shortest expected time wins (ties: fewer steps, then the mode id). Given the
  catalog with measured footprints (``learn.measured_catalog``), fits use the measured figures
  and times the learned durations of each service's starts, wakes and sleeps.
- ``service_state``: the state ``/models`` shows (homeGPT's vocabulary).
- ``idle_candidates``: services of the current mode due for their ``sleep_on_idle`` sleep.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..catalog.model import Catalog, Driver, Mode, Preset
from ..errors import PlanRefused
from ..observed import Observed, SvcState
from ..plan import Plan, Policy, plan_switch
from ..plan.steps import AwaitHealthy, DaemonReload, InstallUnit, Quiesce, RouterLoad, RouterUnload, Sleep, Start, Step, Stop, WaitRelease, Wake

# Expected seconds per step when nothing better is known (the published figures in
# shared/reference/servers.md D2: vLLM L1 wake 0.26-6 s, L2 0.5-2.6 s, cold start 37-58 s;
# a llama.cpp load is a model read, a few seconds for a small GGUF).
DEFAULT_START_S = {Driver.VLLM: 45.0, Driver.LLAMACPP: 8.0, Driver.FASTAPI: 10.0, Driver.DOCKER: 20.0}
DEFAULT_WAKE_S = {1: 2.0, 2: 4.0}
DEFAULT_SLEEP_S = 1.0
DEFAULT_STOP_S = 2.0
DEFAULT_RELEASE_S = 1.0


def _learned(p: Preset | None, kind: str) -> float | None:
    return p.learned(kind) if p is not None else None


def step_seconds(step: Step, catalog: Catalog) -> float:
    """Expected duration of one step: what this service's transitions took on this host
    (``Preset.learned``, from the measured footprints), else the engine's defaults."""
    p: Preset | None = catalog.presets.get(getattr(step, "service", "") or "")
    if isinstance(step, Start):
        if step.router:
            return 0.5
        return _learned(p, "start") or (DEFAULT_START_S[p.driver] if p else 10.0)
    if isinstance(step, RouterLoad):
        return _learned(p, "router_load") or DEFAULT_START_S[Driver.LLAMACPP]
    if isinstance(step, Wake):
        return _learned(p, f"wake_l{step.level}") or DEFAULT_WAKE_S.get(step.level, 4.0)
    if isinstance(step, AwaitHealthy):
        return DEFAULT_START_S[p.driver] / 2 if p else 5.0
    if isinstance(step, Sleep):
        return _learned(p, f"sleep_l{step.level}") or DEFAULT_SLEEP_S
    if isinstance(step, RouterUnload):
        return _learned(p, "router_unload") or DEFAULT_SLEEP_S
    if isinstance(step, Stop):
        return _learned(p, "stop") or DEFAULT_STOP_S
    if isinstance(step, WaitRelease):
        return DEFAULT_RELEASE_S
    if isinstance(step, Quiesce):
        return step.seconds if step.wait else 0.0
    if isinstance(step, (InstallUnit, DaemonReload)):
        return 0.1
    return 0.0


def expected_seconds(plan: Plan, catalog: Catalog) -> float:
    return sum(step_seconds(s, catalog) for s in plan.steps)


@dataclass(frozen=True)
class ModeChoice:
    mode: str
    plan: Plan
    expected_s: float


class NoModeFits(Exception):
    def __init__(self, sid: str, reasons: list[str]):
        self.sid, self.reasons = sid, reasons
        super().__init__(f"{sid} is in no mode; add it to one (modes/*.yaml)" if not reasons
                         else f"no mode containing {sid} fits: " + "; ".join(reasons))


def choose_mode(catalog: Catalog, seen: Observed, sid: str, policy: Policy) -> ModeChoice:
    """The mode containing ``sid`` that is quickest to reach from what ``seen`` shows."""
    best: ModeChoice | None = None
    refused: list[str] = []
    for m in sorted(catalog.modes.values(), key=lambda m: m.id):
        if sid not in m.service_ids:
            continue
        try:
            plan = plan_switch(catalog, seen, m, policy)
        except PlanRefused as exc:
            refused.append(f"{m.id}: {exc}")
            continue
        c = ModeChoice(m.id, plan, expected_seconds(plan, catalog))
        if best is None or (c.expected_s, len(c.plan.steps)) < (best.expected_s, len(best.plan.steps)):
            best = c
    if best is None:
        raise NoModeFits(sid, refused)
    return best


def service_state(seen: Observed | None, sid: str, *, errors: Mapping[str, str], leaving: set[str],
                  pending: set[str], switching: bool) -> str:
    """active | sleeping | stopped | switching | error."""
    if sid in errors:
        return "error"
    if sid in leaving or (sid in pending and switching):
        return "switching"
    o = seen.services.get(sid) if seen else None
    if o is None:
        return "stopped"
    # a crashed or killed service is not running: "stopped" (the next request restarts it)
    return {SvcState.RUNNING: "active", SvcState.SLEEPING: "sleeping", SvcState.STOPPED: "stopped",
            SvcState.FAILED: "stopped", SvcState.STARTING: "switching"}.get(o.state, "error")


def idle_candidates(catalog: Catalog, mode: Mode | None, seen: Observed | None, *, last_request: Mapping[str, float],
                    in_flight: Mapping[str, int], pending: set[str], errors: Mapping[str, str], now: float) -> list[str]:
    """Services of ``mode`` with ``sleep_on_idle`` that are awake, idle that long, and can sleep.
    A service with no request on record is not due (the caller starts its clock)."""
    if mode is None or seen is None:
        return []
    out = []
    for ms in mode.services:
        o = seen.services.get(ms.id)
        if not ms.sleep_on_idle or o is None or o.state is not SvcState.RUNNING or ms.id in errors:
            continue
        if in_flight.get(ms.id, 0) or ms.id in pending or not catalog.presets[ms.id].can_sleep:
            continue
        last = last_request.get(ms.id)
        if last is not None and now - last >= ms.sleep_on_idle:
            out.append(ms.id)
    return out
