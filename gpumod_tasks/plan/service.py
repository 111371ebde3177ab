"""The single-service planner (``service.start|stop|restart|sleep|wake``). Pure.

A service operation gets the same checks as a switch: VRAM fit (what is awake now, plus what
this operation wakes or starts) with alternatives, the RAM preflight, the quiesce window, and
dependencies (a start brings up what the service depends on first; a stop takes its dependents
down first). The recorded mode stays; the record step keeps the sleep levels true.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..catalog.model import Catalog
from ..errors import PlanRefused
from ..observed import Observed, RenderedUnit, SvcState
from .fitcheck import await_releasing, fit_gpus, refuse_unless_ram
from .order import dependents_of, with_dependencies
from .placement import Placement, arithmetic, box_mb, move_reason
from .policy import Policy
from .release import release_wait
from .result import GpuPlan, Plan
from .sleep_level import choose_sleep_level
from .steps import Record, RouterLoad, RouterUnload, Sleep, Start, Step, Stop, WaitRelease, Wake
from .switch import is_router, refuse_over_router_limit, start_steps
from .unitfiles import install_steps

ACTIONS = ("start", "stop", "restart", "sleep", "wake")
AWAKE = (SvcState.RUNNING, SvcState.STARTING, SvcState.UNHEALTHY)


@dataclass(frozen=True)
class ServiceOp:
    action: str  # start | stop | restart | sleep | wake
    service: str
    level: int | None = None  # sleep: 1 or 2 (default: the preset's)
    quiesce: bool = True  # start: honour the quiesce window after a heavy stop

    def describe(self) -> str:
        return f"service.{self.action} {self.service}"


def _sleeping_now(seen: Observed) -> dict[str, int]:
    return {s: (o.sleep_level or 0) for s, o in seen.services.items() if o.state is SvcState.SLEEPING}


def _awake_now(seen: Observed) -> list[str]:
    return [s for s, o in seen.services.items() if o.state in AWAKE]


def _stop_step(catalog: Catalog, seen: Observed, sid: str, reason: str, going: frozenset[str] = frozenset()) -> Step:
    """A router model whose router serves other running models (none of ``going``, the services
    this plan takes down with it) is unloaded; anything else stops."""
    p = catalog.presets[sid]
    o = seen.services[sid]
    if is_router(p):
        peers_up = [q.id for q in catalog.unit_peers(p)
                    if q.id != sid and q.id not in going and seen.services[q.id].state in AWAKE]
        if peers_up:
            return RouterUnload(sid, f"{reason}; its router stays up for {', '.join(peers_up)}", o.vram_mb)
    return Stop(sid, reason, o.vram_mb, p.unit)


def plan_service(catalog: Catalog, seen: Observed, op: ServiceOp, policy: Policy,
                 rendered: Mapping[str, RenderedUnit] | None = None, *, now: float = 0.0,
                 placement: Mapping[str, tuple[int, ...]] | None = None) -> Plan:
    """``placement``: the GPUs the units were rendered for (decided by a plan made first without
    ``rendered``, ``pipeline.prepare``); kept as it is."""

    def _wait(seen: Observed, leaving: list[Step], policy: Policy) -> WaitRelease:
        return release_wait(catalog, seen, leaving, policy)

    if op.action not in ACTIONS:
        raise ValueError(op.action)
    sid = op.service
    p = catalog.preset(sid)
    o = seen.services[sid]
    sleeping = _sleeping_now(seen)
    awake = _awake_now(seen)
    rec = seen.record
    steps: list[Step] = []
    nothing = ""
    what = op.describe()

    def plan(steps: list[Step], sleeping_after: dict[str, int], awake_after: list[str], proj: int = 0,
             placed: tuple[Placement, tuple[GpuPlan, ...]] | None = None) -> Plan:
        if steps:
            steps = await_releasing(seen, steps, policy) + [Record(None, tuple(sorted(sleeping_after.items())))]
        pl, gpus = placed or arithmetic(catalog, seen, policy, awake_after, sleeping_after, placement)
        return Plan(mode=rec.mode or "", steps=tuple(steps), keep=tuple(s for s in awake_after if s != sid),
                    projected_mb=proj, budget_mb=box_mb(seen, policy)[1], gpu_total_mb=box_mb(seen, policy)[0],
                    previous_mode=rec.mode, sleeping_after=tuple(sorted(sleeping_after.items())), operation=what,
                    nothing_to_do=nothing, placement=tuple(sorted(pl.gpus.items())), gpus=gpus)

    if op.action == "start" or (op.action == "wake" and o.state is SvcState.SLEEPING):
        if op.action == "start" and o.state is SvcState.RUNNING:
            nothing = f"{sid} is already running"
            return plan([], sleeping, awake)
        until = float(rec.last_switch.get("quiesce_until", 0) or 0)
        if op.action == "start" and op.quiesce and until > now:
            raise PlanRefused(f"start of {sid} refused: quiescing after a heavy stop, {until - now:.1f}s remain "
                              "(wait, or pass --no-quiesce); nothing was changed")
        ids = [d for d in with_dependencies(catalog, [sid])]
        after_sleep = dict(sleeping)
        starting: list[str] = []
        restarting: list[Step] = []  # unhealthy ones: all stopped first (dependents first), one release wait
        units_started: set[str] = set()  # a router unit started here serves its other models too
        for d in ids:
            od = seen.services[d]
            if od.state is SvcState.RUNNING or od.state is SvcState.STARTING:
                continue
            pd = catalog.presets[d]
            moving = move_reason(seen, pd) if od.state is SvcState.SLEEPING and not is_router(pd) else ""
            if moving:  # asleep on GPUs it must leave: a fresh process on its new GPUs
                after_sleep.pop(d, None)
                restarting.insert(0, Stop(d, f"restart: {moving}", od.vram_mb, pd.unit))
                steps += start_steps(pd, seen, policy, f"restart: {moving}", restart=True)
                starting.append(d)
                units_started.add(pd.unit)
                continue
            if od.state is SvcState.SLEEPING:
                after_sleep.pop(d, None)
                steps.append(RouterLoad(d, "unloaded; its router is up") if is_router(pd)
                             else Wake(d, od.sleep_level or pd.sleep_mode.level or 1))
                continue
            if od.foreign_listener:
                raise PlanRefused(f"cannot start {d}: port {pd.port} already answers, but its unit is not running "
                                  "(another process holds the port); nothing was changed")
            router_up = is_router(pd) and (od.unit.is_running or pd.unit in units_started)
            if router_up:
                steps.append(RouterLoad(d, "its router is up"))
                continue
            reason = what if d == sid else f"{sid} depends on it"
            if od.state is SvcState.UNHEALTHY:  # its process lives but does not answer: a fresh one
                restarting.insert(0, Stop(d, "unhealthy, restarting", od.vram_mb, pd.unit))
            steps += start_steps(pd, seen, policy, reason, restart=od.state is SvcState.UNHEALTHY)
            starting.append(d)
            units_started.add(pd.unit)
        awake_after = sorted(set(awake) | set(ids))
        loading = [d for d in ids if seen.services[d].state not in (SvcState.RUNNING, SvcState.STARTING)]
        refuse_over_router_limit(catalog, loading, awake_after, what, policy.models_max_default)
        proj, pl, gpus = fit_gpus(catalog, seen, awake_after, after_sleep, policy, what, arriving=ids, fixed=placement)
        refuse_unless_ram(catalog, seen, starting, policy)
        installs = install_steps([s.unit for s in steps if isinstance(s, Start)], rendered, seen)
        leaving = restarting + [_wait(seen, restarting, policy)] if restarting else []
        return plan(installs + leaving + steps, after_sleep, awake_after, proj, (pl, gpus))

    if op.action == "wake":
        if o.state is SvcState.RUNNING:
            nothing = f"{sid} is already awake"
            return plan([], sleeping, awake)
        raise PlanRefused(f"{sid} is {o.state.value}, not asleep; use service.start; nothing was changed")

    if op.action == "stop":
        if o.state in (SvcState.STOPPED, SvcState.FAILED):
            nothing = f"{sid} is already stopped"
            return plan([], sleeping, awake)
        dependents = [d for d in dependents_of(catalog, sid) if seen.services[d].holds_gpu]
        going = frozenset([*dependents, sid])  # a router that serves only these is stopped, not kept up for them
        leaving = [_stop_step(catalog, seen, d, f"depends on {sid}", going) for d in dependents]
        leaving.append(_stop_step(catalog, seen, sid, what, going))
        # a model already unloaded from a router that stays up has nothing left to unload
        leaving = [s for s in leaving if not (isinstance(s, RouterUnload) and seen.services[s.service].state is SvcState.SLEEPING)]
        if not leaving:
            nothing = f"{sid} is already unloaded from its router"
            return plan([], sleeping, awake)
        after_sleep = {k: v for k, v in sleeping.items() if k not in {getattr(s, "service", "") for s in leaving}}
        awake_after = [s for s in awake if s not in {getattr(x, "service", "") for x in leaving}]
        return plan(leaving + [_wait(seen, leaving, policy)], after_sleep, awake_after)

    if op.action == "restart":
        down = [d for d in with_dependencies(catalog, [sid])[:-1]
                if seen.services[d].state not in (SvcState.RUNNING, SvcState.STARTING)]
        if down:
            raise PlanRefused(f"cannot restart {sid}: it depends on {', '.join(down)}, not running; "
                              f"service.start {sid} brings its dependencies up first; nothing was changed")
        leaving = []
        if o.state is not SvcState.STOPPED:
            leaving = [Stop(sid, what, o.vram_mb, p.unit)]
        # a fresh process: the unit restarts whole (a router's other models reload after it)
        arriving = start_steps(p, seen, policy, what, restart=bool(leaving))
        for q in catalog.unit_peers(p):
            if q.id != sid and seen.services[q.id].state is SvcState.RUNNING:
                arriving.append(RouterLoad(q.id, "after its router restarted"))
        after_sleep = {k: v for k, v in sleeping.items() if k != sid}
        awake_after = sorted(set(awake) | {sid})
        proj, pl, gpus = fit_gpus(catalog, seen, awake_after, after_sleep, policy, what, arriving=[sid], fixed=placement)
        refuse_unless_ram(catalog, seen, [sid], policy)
        installs = install_steps([p.unit], rendered, seen)
        steps = installs + leaving + ([_wait(seen, leaving, policy)] if leaving else []) + arriving
        return plan(steps, after_sleep, awake_after, proj, (pl, gpus))

    # sleep
    if not p.can_sleep:
        raise PlanRefused(f"{sid} cannot sleep (sleep_mode: {p.sleep_mode.value}); use service.stop; nothing was changed")
    if o.state is SvcState.SLEEPING:
        nothing = f"{sid} is already asleep"
        return plan([], sleeping, awake)
    if o.state is not SvcState.RUNNING:
        raise PlanRefused(f"{sid} is {o.state.value}; only a running service can be put to sleep; nothing was changed")
    if is_router(p):
        if op.level not in (None, 0):
            raise PlanRefused(f"{sid} is a llama.cpp router model: it sleeps by unloading (no level); nothing was changed")
        step: Step = RouterUnload(sid, what, o.vram_mb)
        level = 0
    else:
        if op.level is not None and op.level not in (1, 2):
            raise PlanRefused(f"sleep level {op.level} is not one of vLLM's levels 1 and 2; nothing was changed")
        asked = op.level if op.level is not None else p.sleep_mode.level or 1
        mem_left = seen.mem.available_mb if seen.mem else None
        choice = choose_sleep_level(p, asked, mem_left, policy)
        if choice.note and op.level == 1:
            raise PlanRefused(f"{sid}: L1 was asked but {choice.note.removeprefix('L1 -> L2: ')}; use --level 2; nothing was changed")
        level = choice.level
        step = Sleep(sid, level, what, max(0, o.vram_mb - p.residual_mb), choice.note)
    after_sleep = {**sleeping, sid: level}
    return plan([step, _wait(seen, [step], policy)], after_sleep, [s for s in awake if s != sid])
