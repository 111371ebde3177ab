"""The switch planner: observed facts and a target mode in, an ordered list of steps out. Pure.

Partition against what is observed, not against the recorded mode (``partition``):
- stop:  running, not in the target (or in the target but unhealthy: stopped, then started again)
- sleep: sleep-capable, leaving, kept warm by policy (``keep_warm: sleep``); a llama.cpp router
         model is unloaded from its router (which stays up) instead
- keep:  in the target and running (restarted when its unit changed since the process started)
- wake:  in the target and sleeping (a router model: loaded into its router)
- start: in the target and not actively running, even when the recorded mode already equals the
         target (drift recovery; the summary lists what was re-launched)
An empty mode (``blank``) stops everything, sleeping services and idle routers included: it is
the promise that one command frees all VRAM.

Then the sleep-level rule (``sleep_level``), the VRAM fit (``fitcheck``: sleeping services
outside the target are stopped, largest first, until it fits, else refused), the RAM preflight,
the unit installs, and the order (``assemble``): installs and one daemon-reload, then dependents
stop first, the release wait, then dependencies start first, then the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..catalog.model import Catalog, Mode, Preset, SleepMode
from ..errors import PlanRefused
from ..observed import Observed, RenderedUnit, SvcState
from .fitcheck import await_releasing, fit_gpus, l1_sleepers_stopping_credit, projected_mb, refuse_unless_ram
from .order import topo_order
from .placement import box_mb, move_reason, over, per_gpu, place
from .policy import Policy
from .release import release_wait
from .result import Plan
from .sleep_level import choose_sleep_level
from .steps import AwaitHealthy, Quiesce, Record, ResetFailed, RouterLoad, RouterUnload, Sleep, Start, Step, Stop, Wake
from .unitfiles import install_steps, stale_reason


def is_router(p: Preset) -> bool:
    return p.sleep_mode is SleepMode.ROUTER


def router_models_max(catalog: Catalog, p: Preset, default: object = 1) -> int:
    """How many models the router unit of ``p`` holds at once: ``--models-max``, rendered from the
    ``unit_vars.models_max`` of the preset the unit is rendered from, else the host's vars
    (``default``), else 1; 0 is no limit."""
    raw = catalog.unit_peers(p)[0].unit_vars.get("models_max", default)
    try:
        return max(0, int(raw))
    except (TypeError, ValueError):
        return 1


def refuse_over_router_limit(catalog: Catalog, loading: list[str], awake_after: list[str], what: str,
                             default_max: object = 1) -> None:
    """A router at ``--models-max`` evicts its least recently used idle model when another loads
    (servers.md B): refuse a plan that loads a model into a router whose models awake after it
    (``awake_after``) exceed that, instead of planning a state the router cannot hold."""
    for unit in dict.fromkeys(catalog.presets[s].unit for s in loading if is_router(catalog.presets[s])):
        ids = [s for s in awake_after if catalog.presets[s].unit == unit and is_router(catalog.presets[s])]
        first = catalog.unit_peers(catalog.presets[ids[0]])[0] if ids else None
        limit = router_models_max(catalog, first, default_max) if first else 0
        if first and limit and len(ids) > limit:
            raise PlanRefused(f"{what} needs {len(ids)} models loaded at once in llama.cpp router {first.router} "
                              f"({', '.join(ids)}), but it holds at most {limit} (--models-max {limit}, from "
                              f"unit_vars.models_max of {first.id} or the host's vars); loading one more evicts another; raise models_max "
                              f"or load fewer of its models; nothing was changed")


@dataclass
class Partition:
    leaving: dict[str, Step] = field(default_factory=dict)  # Stop | RouterUnload | Sleep, per service
    arriving: dict[str, list[Step]] = field(default_factory=dict)  # in order, per service
    keep: list[str] = field(default_factory=list)
    sleeping_after: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ram_promised_mb: int = 0  # host RAM the plan's L1 sleeps will hold


def start_steps(p: Preset, seen: Observed, policy: Policy, reason: str, *, relaunch: bool = False,
                restart: bool = False) -> list[Step]:
    """Bring a stopped service up: reset a failed unit, start it, (router) load its model."""
    o = seen.services[p.id]
    steps: list[Step] = []
    if o.unit.is_failed and seen.manager == "systemd" and not restart:
        steps.append(ResetFailed(p.unit))
    steps.append(Start(p.id, reason, policy.ram_needed_mb(p), relaunch=relaunch, restart=restart, unit=p.unit,
                       router=is_router(p)))
    if is_router(p):
        steps.append(RouterLoad(p.id, "its router starts with no model loaded"))
    return steps


def _router_restarts(catalog: Catalog, seen: Observed, tset: set[str], policy: Policy,
                     rendered: Mapping[str, RenderedUnit] | None) -> dict[str, str]:
    """Router units that must stop and start again in this plan, with why: a target model of it is
    unhealthy, or its unit changed while a target model of it is up."""
    out: dict[str, str] = {}
    for sid in tset:
        p = catalog.presets[sid]
        o = seen.services[sid]
        if not is_router(p) or not o.unit.is_running or p.unit in out:
            continue
        if o.state is SvcState.UNHEALTHY:
            detail = o.probe.detail if o.probe else ""
            out[p.unit] = f"unhealthy, restarting: {detail}".strip(": ")
            continue
        why = stale_reason(seen, sid, p.unit, rendered, policy)
        if why:
            out[p.unit] = why
    return out


def partition(catalog: Catalog, seen: Observed, mode: Mode, policy: Policy,
              rendered: Mapping[str, RenderedUnit] | None = None) -> Partition:
    target = list(mode.service_ids)
    tset = set(target)
    svc = seen.services
    part = Partition()
    recorded = seen.record.mode
    recorded_services = set(catalog.modes[recorded].service_ids) if recorded in catalog.modes else set()
    mem_left = seen.mem.available_mb if seen.mem else None
    restarts = _router_restarts(catalog, seen, tset, policy, rendered)
    if not target:
        # an empty mode (``blank``) is the way to free the GPU: everything stops, sleepers too
        policy = replace(policy, keep_warm="stop")
    unit_started: set[str] = set()  # router units a Start in this plan brings up
    unit_stopped: dict[str, str] = {}  # router unit -> the service whose Stop takes it down

    # the target first, in the order assemble() starts it: the first of a router's models gets its unit's Start
    for sid in topo_order(catalog, target + [s for s in catalog.presets if s not in tset]):
        p, o = catalog.presets[sid], svc.get(sid)
        if o is None:
            continue
        if sid in tset:
            if is_router(p):
                _arrive_router(catalog, seen, p, policy, part, restarts, unit_started, unit_stopped, recorded, mode,
                               recorded_services)
                continue
            moving = move_reason(seen, p)
            stale = ((f"restart: {moving}" if moving else stale_reason(seen, sid, p.unit, rendered, policy))
                     if o.state in (SvcState.RUNNING, SvcState.SLEEPING, SvcState.STARTING) else "")
            if stale:
                part.leaving[sid] = Stop(sid, stale, o.vram_mb, p.unit)
                part.arriving[sid] = start_steps(p, seen, policy, stale, restart=True)
            elif o.state is SvcState.RUNNING:
                part.keep.append(sid)
            elif o.state is SvcState.SLEEPING:
                part.arriving[sid] = [Wake(sid, o.sleep_level or p.sleep_mode.level or 1)]
            elif o.state is SvcState.STARTING:
                part.arriving[sid] = [AwaitHealthy(sid)]
            elif o.state is SvcState.UNHEALTHY:
                detail = o.probe.detail if o.probe else ""
                part.leaving[sid] = Stop(sid, f"unhealthy, restarting: {detail}".strip(": "), o.vram_mb, p.unit)
                part.arriving[sid] = start_steps(p, seen, policy, "restart after unhealthy", relaunch=True)
            else:
                drift = recorded == mode.id or sid in recorded_services
                why = (f"drift: should be running in mode {recorded} but is {o.state.value}" if drift
                       else f"not running ({o.state.value})")
                part.arriving[sid] = start_steps(p, seen, policy, why, relaunch=drift)
            continue
        # leaving
        if is_router(p):
            mem_left = _leave_router(catalog, seen, p, policy, part, tset, restarts, unit_stopped, mem_left)
            continue
        if o.state is SvcState.RUNNING and p.can_sleep and policy.keep_warm == "sleep":
            choice = choose_sleep_level(p, p.sleep_mode.level, mem_left, policy)
            if choice.note:
                part.notes.append(f"{sid}: {choice.note}")
            if mem_left is not None:
                mem_left -= choice.ram_promised_mb
            part.ram_promised_mb += choice.ram_promised_mb
            part.leaving[sid] = Sleep(sid, choice.level, "leaving mode, kept warm", max(0, o.vram_mb - p.residual_mb), choice.note)
            part.sleeping_after[sid] = choice.level
        elif o.state in (SvcState.RUNNING, SvcState.STARTING, SvcState.UNHEALTHY):
            part.leaving[sid] = Stop(sid, "leaving mode" + ("" if p.can_sleep else ", cannot sleep"), o.vram_mb, p.unit)
        elif o.state is SvcState.SLEEPING:
            if not target:
                part.leaving[sid] = Stop(sid, "blank frees all VRAM: stopped, not kept asleep", o.vram_mb, p.unit)
            else:
                part.sleeping_after[sid] = o.sleep_level if o.sleep_level is not None else p.sleep_mode.level
    return part


def _arrive_router(catalog: Catalog, seen: Observed, p: Preset, policy: Policy, part: Partition, restarts: dict[str, str],
                   unit_started: set[str], unit_stopped: dict[str, str], recorded: str | None, mode: Mode,
                   recorded_services: set[str]) -> None:
    sid, o = p.id, seen.services[p.id]
    if p.unit in restarts:
        if p.unit not in unit_stopped:
            unit_stopped[p.unit] = sid
            freed = sum(seen.services[q.id].vram_mb for q in catalog.unit_peers(p))
            part.leaving[sid] = Stop(sid, f"{restarts[p.unit]} (router unit {p.unit})", freed, p.unit)
        if p.unit not in unit_started:
            unit_started.add(p.unit)
            part.arriving[sid] = start_steps(p, seen, policy, restarts[p.unit], restart=True)
        else:
            part.arriving[sid] = [RouterLoad(sid, "after its router restarted")]
        return
    if o.state is SvcState.RUNNING:
        part.keep.append(sid)
    elif o.state is SvcState.SLEEPING:
        part.arriving[sid] = [RouterLoad(sid, "unloaded; its router is up")]
    elif o.state is SvcState.STARTING:
        part.arriving[sid] = [AwaitHealthy(sid, "loading into its router")]
    elif p.unit in unit_started:
        part.arriving[sid] = [RouterLoad(sid, "its router starts in this plan")]
    else:
        unit_started.add(p.unit)
        drift = recorded == mode.id or sid in recorded_services
        why = (f"drift: should be running in mode {recorded} but is {o.state.value}" if drift
               else f"not running ({o.state.value})")
        part.arriving[sid] = start_steps(p, seen, policy, why, relaunch=drift)


def _leave_router(catalog: Catalog, seen: Observed, p: Preset, policy: Policy, part: Partition, tset: set[str],
                  restarts: dict[str, str], unit_stopped: dict[str, str], mem_left: int | None) -> int | None:
    sid, o = p.id, seen.services[p.id]
    if p.unit in restarts or p.unit in unit_stopped:
        return mem_left  # its router unit stops in this plan: the model goes with it
    if o.state not in (SvcState.RUNNING, SvcState.STARTING, SvcState.UNHEALTHY):
        if o.state is SvcState.SLEEPING and not tset and p.unit not in unit_stopped:
            # blank: the router process itself goes (it still holds its CUDA context)
            unit_stopped[p.unit] = sid
            part.leaving[sid] = Stop(sid, "blank frees all VRAM: its router stops", o.vram_mb, p.unit)
        elif o.state is SvcState.SLEEPING:
            part.sleeping_after[sid] = 0
        return mem_left
    staying = sorted(q.id for q in catalog.unit_peers(p) if q.id in tset)
    if staying:
        part.leaving[sid] = RouterUnload(sid, f"leaving mode; its router stays up for {', '.join(staying)}", o.vram_mb)
        part.sleeping_after[sid] = 0
    elif p.can_sleep and policy.keep_warm == "sleep" and o.state is SvcState.RUNNING:
        part.leaving[sid] = RouterUnload(sid, "leaving mode, kept warm: the router stays up", o.vram_mb)
        part.sleeping_after[sid] = 0
    else:
        # the whole router unit goes; its other running models go with it
        freed = sum(seen.services[q.id].vram_mb for q in catalog.unit_peers(p) if q.id not in tset)
        unit_stopped[p.unit] = sid
        part.leaving[sid] = Stop(sid, "leaving mode" + ("" if p.can_sleep else ", cannot sleep"), freed, p.unit)
    return mem_left


def make_room(catalog: Catalog, seen: Observed, part: Partition, awake: list[str], policy: Policy,
              fixed: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Stop sleeping services outside the target, largest residual first, until the target fits
    (on a box with several GPUs: on every GPU, those on a GPU that is over first)."""
    budget = seen.gpu_total_mb - policy.reserve_mb
    if not seen.gpu_total_mb:
        return
    while seen.multi_gpu:
        pl = place(catalog, seen, policy, awake, part.sleeping_after, fixed)
        hot = {g.index for g in over(per_gpu(catalog, seen, policy, pl, awake, part.sleeping_after))}
        if not hot and not pl.unplaced:
            return
        cands = [s for s in part.sleeping_after if catalog.presets[s].residual_mb
                 and (pl.unplaced or hot & set(pl.of(s)))]
        if not cands:
            return
        _stop_sleeper(catalog, seen, part, max(cands, key=lambda s: (catalog.presets[s].residual_mb, s)))
    for sid in sorted(part.sleeping_after, key=lambda s: -catalog.presets[s].residual_mb):
        if projected_mb(catalog, awake, part.sleeping_after, seen.external_mb) <= budget:
            break
        if catalog.presets[sid].residual_mb == 0:
            continue
        _stop_sleeper(catalog, seen, part, sid)


def _stop_sleeper(catalog: Catalog, seen: Observed, part: Partition, sid: str) -> None:
    p = catalog.presets[sid]
    res = p.residual_mb
    del part.sleeping_after[sid]
    part.leaving[sid] = Stop(sid, f"asleep but its {res} MB residual is needed", seen.services[sid].vram_mb, p.unit)
    part.notes.append(f"{sid}: stopped instead of kept asleep to make room ({res} MB)")


def assemble(catalog: Catalog, seen: Observed, part: Partition, order_target: list[str], policy: Policy,
             rendered: Mapping[str, RenderedUnit] | None, record: Record | None) -> list[Step]:
    """Installs and one daemon-reload first (a write that fails leaves everything running), then
    leaving steps (dependents first), the release wait and quiesce, arriving steps (dependencies
    first), and the record."""
    arriving: list[Step] = []
    for sid in topo_order(catalog, order_target):
        arriving += part.arriving.get(sid, [])
    start_units = [s.unit for s in arriving if isinstance(s, Start)]
    steps: list[Step] = install_steps(start_units, rendered, seen)
    order = topo_order(catalog, list(catalog.presets))
    for sid in reversed(order):  # dependents first
        if sid in part.leaving:
            steps.append(part.leaving[sid])
    freed = sum(getattr(s, "frees_mb", 0) for s in part.leaving.values())
    if part.leaving:
        # verified even when nothing loads next: when the command returns, the VRAM is free
        steps.append(release_wait(catalog, seen, list(part.leaving.values()), policy))
        if policy.quiesce_s > 0 and freed >= policy.quiesce_threshold_mb:
            steps.append(Quiesce(policy.quiesce_s, freed, wait=bool(arriving)))
    steps += arriving
    if record is not None and (steps or seen.record.mode != record.mode or seen.record.failed):
        steps.append(record)
    return steps


def refuse_foreign_listeners(catalog: Catalog, seen: Observed, ids: list[str]) -> None:
    for sid in ids:
        if seen.services[sid].foreign_listener:
            raise PlanRefused(f"cannot start {sid}: port {catalog.presets[sid].port} already answers, but its unit is not running "
                              f"(another process holds the port); free the port or change the preset; nothing was changed")


def plan_switch(catalog: Catalog, seen: Observed, mode: Mode, policy: Policy,
                rendered: Mapping[str, RenderedUnit] | None = None,
                placement: Mapping[str, tuple[int, ...]] | None = None) -> Plan:
    """``placement``: the GPUs the units were rendered for (a plan made without ``rendered``
    decides it first: ``pipeline.prepare``); kept as it is."""
    target = list(mode.service_ids)
    refuse_foreign_listeners(catalog, seen, target)
    refuse_over_router_limit(catalog, target, target, f"mode {mode.id}", policy.models_max_default)
    part = partition(catalog, seen, mode, policy, rendered)
    make_room(catalog, seen, part, target, policy, placement)
    proj, pl, gpus = fit_gpus(catalog, seen, target, part.sleeping_after, policy, f"mode {mode.id}", arriving=target,
                              fixed=placement)
    starting = [s.service for sid in topo_order(catalog, target) for s in part.arriving.get(sid, []) if isinstance(s, Start)]
    stopping = [s.service for s in part.leaving.values() if isinstance(s, Stop)]
    part.notes += refuse_unless_ram(catalog, seen, starting, policy, promised_mb=part.ram_promised_mb,
                                    credit_mb=l1_sleepers_stopping_credit(catalog, seen, stopping))
    record = Record(mode.id, tuple(sorted(part.sleeping_after.items())))
    steps = await_releasing(seen, assemble(catalog, seen, part, target, policy, rendered, record), policy)
    return Plan(mode=mode.id, steps=tuple(steps), keep=tuple(part.keep), projected_mb=proj,
                budget_mb=box_mb(seen, policy)[1], gpu_total_mb=box_mb(seen, policy)[0], notes=tuple(part.notes),
                previous_mode=seen.record.mode, sleeping_after=tuple(sorted(part.sleeping_after.items())),
                operation=f"switch to {mode.id}", placement=tuple(sorted(pl.gpus.items())), gpus=gpus,
                nothing_to_do="" if steps else f"mode {mode.id} is already running as planned")
