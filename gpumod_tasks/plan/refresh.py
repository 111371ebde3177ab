"""The refresh planner (the router daemon's ``/reload``, SIGHUP): every unit that differs from
the catalog is written, then every running service whose unit changed under it restarts. Pure.

Sleeping services are left asleep: they take the new unit at their next start (a note says so).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..catalog.model import Catalog
from ..observed import Observed, RenderedUnit, SvcState
from .fitcheck import await_releasing
from .placement import arithmetic, box_mb
from .policy import Policy
from .release import release_wait
from .result import Plan
from .steps import RouterLoad, Step, Stop
from .switch import is_router, start_steps
from .unitfiles import install_steps, stale_reason


def plan_refresh(catalog: Catalog, seen: Observed, policy: Policy, rendered: Mapping[str, RenderedUnit],
                 placement: Mapping[str, tuple[int, ...]] | None = None) -> Plan:
    leaving: list[Step] = []
    arriving: list[Step] = []
    notes: list[str] = []
    done_units: set[str] = set()
    for sid, p in catalog.presets.items():
        o = seen.services.get(sid)
        if o is None or p.unit in done_units:
            continue
        why = stale_reason(seen, sid, p.unit, rendered, policy)
        if not why:
            continue
        if o.state is SvcState.SLEEPING:
            notes.append(f"{sid}: asleep; it takes the changed unit at its next start")
            continue
        if o.state is not SvcState.RUNNING:
            continue
        done_units.add(p.unit)
        peers = [q for q in catalog.unit_peers(p) if seen.services[q.id].state is SvcState.RUNNING]
        freed = sum(seen.services[q.id].vram_mb for q in peers)
        leaving.append(Stop(sid, why, freed, p.unit))
        arriving += start_steps(p, seen, policy, why, restart=True)
        if is_router(p):
            arriving += [RouterLoad(q.id, "after its router restarted") for q in peers if q.id != sid]
    steps: list[Step] = install_steps(list(rendered), rendered, seen)
    if leaving:
        steps += leaving + [release_wait(catalog, seen, leaving, policy)] + arriving
    steps = await_releasing(seen, steps, policy)
    rec = seen.record
    sleeping = [s for s, o in seen.services.items() if o.state is SvcState.SLEEPING]
    awake = [s for s, o in seen.services.items() if o.holds_gpu and s not in sleeping]
    pl, gpus = arithmetic(catalog, seen, policy, awake, sleeping, placement)
    return Plan(mode=rec.mode or "", steps=tuple(steps), keep=(), budget_mb=box_mb(seen, policy)[1],
                gpu_total_mb=box_mb(seen, policy)[0], notes=tuple(notes), previous_mode=rec.mode,
                operation="reload the catalog", placement=tuple(sorted(pl.gpus.items())), gpus=gpus,
                nothing_to_do="" if steps else "every unit matches the catalog and every running process runs it",
                sleeping_after=tuple(sorted((s, o.sleep_level or 0) for s, o in seen.services.items()
                                            if o.state is SvcState.SLEEPING)))



