"""What the web dashboard shows, computed from one observation (pure: no I/O here).

- every GPU with its VRAM per service: measured (nvidia-smi's per-process figures, as the
  observation attributes them) and declared (the preset's ``vram_mb`` while awake, its sleep
  residual while asleep);
- every service's dashboard state: active / asleep L1 / asleep L2 / unloaded / loading / stopped /
  error;
- every mode with its total VRAM and whether it fits now (the planner's own fit rule against what
  runs: foreign GPU processes and sleeping residuals count);
(the plans the dashboard shows before an action are the one run path's own: ``pipeline.prepare``).
"""

from __future__ import annotations

from typing import Any

from ..catalog.model import Catalog, Preset
from ..errors import PlanRefused
from ..observed import Observed, ServiceObs, SvcState
from ..plan import Plan, Policy, plan_switch

SERVICE_ACTIONS = ("start", "stop", "sleep", "wake")


def ui_state(o: ServiceObs | None, api_state: str) -> str:
    """The dashboard's vocabulary; ``api_state`` is the daemon's (/models) for the same service."""
    if api_state == "error":
        return "error"
    if o is None or o.state is SvcState.STOPPED:
        return "loading" if api_state == "switching" else "stopped"
    if o.state in (SvcState.FAILED, SvcState.UNHEALTHY):
        return "error"
    if o.state is SvcState.STARTING:
        return "loading"
    if o.state is SvcState.SLEEPING:
        return "unloaded" if not o.sleep_level else f"asleep L{o.sleep_level}"
    return "active"


def declared_mb(p: Preset, o: ServiceObs | None) -> int:
    """What the plan budgets for the service in its observed state."""
    if o is None:
        return 0
    if o.state is SvcState.SLEEPING:
        return 0 if o.sleep_level == 0 else p.residual_mb
    if o.state in (SvcState.RUNNING, SvcState.STARTING, SvcState.UNHEALTHY):
        return p.vram_mb
    return 0


def _pid_owners(seen: Observed) -> dict[int, str]:
    """Main pid -> service; a shared router's pid belongs to the model holding VRAM."""
    owners: dict[int, str] = {}
    for sid, o in seen.services.items():
        pid = o.unit.main_pid
        if pid and (pid not in owners or o.vram_mb > seen.services[owners[pid]].vram_mb):
            owners[pid] = sid
    return owners


def gpu_bars(cat: Catalog, seen: Observed) -> list[dict[str, Any]]:
    """Per GPU: total/used and a segment per service holding memory there.

    With one GPU every service's measured figure is the observation's. With several, a unit's main
    process is placed on the GPU nvidia-smi lists it on; what the observation attributed to a
    service through other processes (vLLM's engine core, a router's children, found by cgroup) is
    taken from the GPUs' memory of processes that are neither a main process nor foreign. The
    declared figure goes on the GPU where the service holds most."""
    if seen.gpu is None or not seen.gpu.gpus:
        return []
    gpus = seen.gpu.gpus
    measured: list[dict[str, int]] = [{} for _ in gpus]
    other = [0 for _ in gpus]
    if len(gpus) == 1:
        measured[0] = {sid: o.vram_mb for sid, o in seen.services.items() if o.vram_mb}
        other[0] = seen.external_mb
    else:
        owners = _pid_owners(seen)
        pool = [0 for _ in gpus]  # ours, but not a main process
        for i, g in enumerate(gpus):
            for pid, mb in g.per_pid.items():
                if pid in owners:
                    measured[i][owners[pid]] = measured[i].get(owners[pid], 0) + (mb or 0)
                elif pid in seen.unmapped_pids:
                    other[i] += mb or 0
                else:
                    pool[i] += mb or 0
        for sid, o in seen.services.items():
            left = o.vram_mb - sum(m.get(sid, 0) for m in measured)
            for i in sorted(range(len(gpus)), key=lambda i: (sid not in measured[i], i)):
                take = min(left, pool[i])
                if take > 0:
                    measured[i][sid] = measured[i].get(sid, 0) + take
                    pool[i] -= take
                    left -= take
            if left > 0:
                measured[0][sid] = measured[0].get(sid, 0) + left
    home = {sid: max(range(len(gpus)), key=lambda i: (measured[i].get(sid, 0), -i)) for sid in cat.presets}
    out = []
    for i, g in enumerate(gpus):
        segs = []
        for sid, p in cat.presets.items():
            m = measured[i].get(sid, 0)
            d = declared_mb(p, seen.services.get(sid)) if home[sid] == i else 0
            if m or d:
                segs.append({"service": sid, "measured_mb": m, "declared_mb": d})
        out.append({"index": g.index, "name": g.name, "total_mb": g.total_mb or 0, "used_mb": g.used_mb or 0,
                    "other_mb": other[i], "segments": segs})
    return out


def service_gpus(bars: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for b in bars:
        for s in b["segments"]:
            if s["measured_mb"]:
                out.setdefault(s["service"], []).append(b["index"])
    return out


def mode_fits(cat: Catalog, seen: Observed, policy: Policy) -> list[dict[str, Any]]:
    """Every mode: total declared VRAM, and whether switching to it now would be planned or refused."""
    out = []
    for m in cat.modes.values():
        row: dict[str, Any] = {"id": m.id, "name": m.name, "description": m.description,
                               "services": list(m.service_ids), "total_mb": cat.mode_vram(m),
                               "current": seen.record.mode == m.id, "fits": None, "why": "", "steps": 0}
        if seen.gpu is not None and seen.gpu.gpus:
            try:
                plan = plan_switch(cat, seen, m, policy)
                row.update(fits=True, steps=len([s for s in plan.steps if s.kind != "record"]),
                           why=f"{plan.projected_mb} MB of {plan.budget_mb} MB")
            except PlanRefused as exc:
                row.update(fits=False, why=str(exc))
            except KeyError:  # a catalog newer than the observation: unknown until the next one
                pass
        out.append(row)
    return out


def plan_dict(plan: Plan) -> dict[str, Any]:
    return {"steps": [{"kind": s.kind, "step": s.describe()} for s in plan.steps], "notes": list(plan.notes),
            "kept": list(plan.keep), "projected_mb": plan.projected_mb, "budget_mb": plan.budget_mb,
            "converged": plan.converged}


def refusal_dict(exc: PlanRefused) -> dict[str, Any]:
    """A refused plan: its message, the reasons (what does not fit) and the alternatives apart."""
    lines = exc.details()
    cut = lines.index("alternatives:") if "alternatives:" in lines else len(lines)
    return {"refused": True, "message": str(exc), "reasons": lines[:cut],
            "alternatives": [ln.strip() for ln in lines[cut + 1:]]}
