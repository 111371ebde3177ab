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
from ..gpu_use import fit_per_gpu, gpu_uses
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


def gpu_bars(cat: Catalog, seen: Observed) -> list[dict[str, Any]]:
    """Per GPU: total/used and a segment per service holding memory there.

    Measured: what the observation attributes to the service on that GPU (``gpu_use.gpu_uses``:
    the observation's per-GPU figures, else its processes placed where nvidia-smi lists them).
    The declared figure of a service found on as many GPUs as its preset runs on is split as the
    preset splits it (``Preset.per_gpu_mb``); otherwise it goes on the GPU where it holds most."""
    uses = gpu_uses(seen)
    if not uses:
        return []
    declared: list[dict[str, int]] = [{} for _ in uses]
    for sid, p in cat.presets.items():
        d = declared_mb(p, seen.services.get(sid))
        on = [i for i, u in enumerate(uses) if u.services.get(sid)]
        if len(on) > 1 and len(on) == p.gpus:
            for i, mb in zip(_in_gpu_order(p, on, uses), p.per_gpu_mb(d)):
                declared[i][sid] = mb
        else:
            declared[max(range(len(uses)), key=lambda i: (uses[i].services.get(sid, 0), -i))][sid] = d
    out = []
    for i, u in enumerate(uses):
        segs = []
        for sid in cat.presets:
            m = u.services.get(sid, 0)
            d = declared[i].get(sid, 0)
            if m or d:
                segs.append({"service": sid, "measured_mb": m, "declared_mb": d})
        out.append({"index": u.index, "uuid": u.uuid or None, "name": u.name, "total_mb": u.total_mb, "used_mb": u.used_mb,
                    "free_mb": u.free_mb, "other_mb": u.other_mb, "segments": segs})
    return out


def _in_gpu_order(p: Preset, on: list[int], uses: list[Any]) -> list[int]:
    """The positions ``on`` in the preset's GPU order: its pins (an index or a UUID) first, as pinned."""
    def rank(i: int) -> tuple[int, int]:
        u = uses[i]
        for n, pin in enumerate(p.gpu_pin):
            if pin in (str(u.index), u.uuid):
                return (n, i)
        return (len(p.gpu_pin), i)

    return sorted(on, key=rank)


def service_gpus(bars: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for b in bars:
        for s in b["segments"]:
            if s["measured_mb"]:
                out.setdefault(s["service"], []).append(b["index"])
    return out


def service_gpu_mb(bars: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Service -> {GPU index (as a JSON key): measured MB there}."""
    out: dict[str, dict[str, int]] = {}
    for b in bars:
        for s in b["segments"]:
            if s["measured_mb"]:
                out.setdefault(s["service"], {})[str(b["index"])] = s["measured_mb"]
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
                row.update(fits=True, steps=len([s for s in plan.steps if s.kind != "record"]), why=fit_why(plan))
            except PlanRefused as exc:
                row.update(fits=False, why=str(exc))
            except KeyError:  # a catalog newer than the observation: unknown until the next one
                pass
        out.append(row)
    return out


def fit_why(plan: Plan) -> str:
    """How a planned mode fits: its MB against the budget, per GPU when the plan has several."""
    if len(plan.gpus) > 1:
        return ", ".join(f"GPU{g.index} {g.projected_mb} MB of {g.budget_mb} MB" for g in plan.gpus)
    return f"{plan.projected_mb} MB of {plan.budget_mb} MB"


def plan_dict(plan: Plan, cat: Catalog | None = None) -> dict[str, Any]:
    """A plan for the page; with several GPUs (and the catalog) each GPU after it: its figures and
    the share of every service the placement puts there."""
    per_gpu = fit_per_gpu(plan, cat.presets) if cat is not None else []
    return {"steps": [{"kind": s.kind, "step": s.describe()} for s in plan.steps], "notes": list(plan.notes),
            "kept": list(plan.keep), "projected_mb": plan.projected_mb, "budget_mb": plan.budget_mb,
            "converged": plan.converged, "placement": {sid: list(ix) for sid, ix in plan.placement},
            "gpus": [g.as_dict() for g in per_gpu] if len(per_gpu) > 1 else []}


def refusal_dict(exc: PlanRefused) -> dict[str, Any]:
    """A refused plan: its message, the reasons (what does not fit) and the alternatives apart."""
    lines = exc.details()
    cut = lines.index("alternatives:") if "alternatives:" in lines else len(lines)
    return {"refused": True, "message": str(exc), "reasons": lines[:cut],
            "alternatives": [ln.strip() for ln in lines[cut + 1:]]}
