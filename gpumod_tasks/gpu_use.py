"""Who holds what on each GPU: the per-GPU view every front end shows (pure: no I/O here).

``gpu_uses(seen)`` splits one observation by GPU: each GPU's figures, the MB each service holds
there, and the processes gpumod does not run on it. A service's per-GPU figures are the
observation's ``ServiceObs.gpu_mb`` when it has them; an observation without them (one GPU, or a
reader that only sums per service) is split here: with one GPU everything is on it; with several,
a unit's main process is placed on the GPU nvidia-smi lists it on, and what the observation gave a
service through other processes (vLLM's engine core or TP workers, a router's children, found by
cgroup) is taken from the GPUs' memory of processes that are neither a main process, foreign, nor
on their way out.

``planned_uses(...)`` is the same for a plan: each GPU's arithmetic (``GpuPlan``) with the share
of every service the placement puts there (``Preset.per_gpu_mb``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .catalog.model import Preset
from .observed import Observed

if TYPE_CHECKING:  # the planner's package is imported by the plan views only (not by status)
    from .plan.result import GpuPlan


@dataclass(frozen=True)
class GpuUse:
    index: int
    name: str
    total_mb: int
    used_mb: int
    free_mb: int
    uuid: str = ""
    services: dict[str, int] = field(default_factory=dict, hash=False, compare=False)  # service -> MB on this GPU
    other: dict[int, int] = field(default_factory=dict, hash=False, compare=False)  # pid gpumod does not run -> MB
    releasing_mb: int = 0  # memory of exiting processes on this GPU, not given back yet

    @property
    def label(self) -> str:
        return f"GPU{self.index}"

    @property
    def other_mb(self) -> int:
        return sum(self.other.values())

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid or None, "name": self.name, "total_mb": self.total_mb,
                "used_mb": self.used_mb, "free_mb": self.free_mb, "services": dict(self.services),
                "other_processes": {str(p): mb for p, mb in self.other.items()}, "releasing_mb": self.releasing_mb}


def gpu_uses(seen: Observed) -> list[GpuUse]:
    """Every GPU of the observation, in its order, with who holds what there ([] without a GPU)."""
    if seen.gpu is None or not seen.gpu.gpus:
        return []
    gpus = seen.gpu.gpus
    held = _attribute(seen)
    leaving = {r.pid for r in seen.releasing}
    out = []
    for i, g in enumerate(gpus):
        if len(gpus) == 1:
            other = dict(seen.unmapped_pids)
        else:
            other = {pid: mb or 0 for pid, mb in g.per_pid.items() if pid in seen.unmapped_pids}
            if i == 0:  # a foreign pid no GPU lists (cannot happen with nvidia-smi or NVML): on the first
                listed = {pid for x in gpus for pid in x.per_pid}
                other.update({pid: mb for pid, mb in seen.unmapped_pids.items() if pid not in listed})
        rel = (sum(r.mb for r in seen.releasing) if len(gpus) == 1
               else sum((mb or 0) for pid, mb in g.per_pid.items() if pid in leaving))
        out.append(GpuUse(index=g.index, name=g.name, total_mb=g.total_mb or 0, used_mb=g.used_mb or 0,
                          free_mb=g.free_mb if g.free_mb is not None else max(0, (g.total_mb or 0) - (g.used_mb or 0)),
                          uuid=g.uuid, services=held[i], other=other, releasing_mb=rel))
    return out


def _attribute(seen: Observed) -> list[dict[str, int]]:
    """Per GPU (in the observation's order): service -> MB."""
    assert seen.gpu is not None
    gpus = seen.gpu.gpus
    pos = {g.index: i for i, g in enumerate(gpus)}
    out: list[dict[str, int]] = [{} for _ in gpus]
    split = any(o.gpu_mb for o in seen.services.values())
    for sid, o in seen.services.items():
        if o.gpu_mb:
            for ix, mb in sorted(o.gpu_mb.items()):
                if mb:
                    i = pos.get(ix, 0)
                    out[i][sid] = out[i].get(sid, 0) + mb
        elif o.vram_mb and (split or len(gpus) == 1):
            out[0][sid] = out[0].get(sid, 0) + o.vram_mb
    if split or len(gpus) == 1:
        return out
    # no per-GPU figures from the observation: place each service's processes where nvidia-smi lists them
    owners = _pid_owners(seen)
    leaving = {r.pid for r in seen.releasing}
    pool = [0 for _ in gpus]  # ours, but not a main process
    for i, g in enumerate(gpus):
        for pid, pmb in g.per_pid.items():
            if pid in owners:
                out[i][owners[pid]] = out[i].get(owners[pid], 0) + (pmb or 0)
            elif pid not in seen.unmapped_pids and pid not in leaving:
                pool[i] += pmb or 0
    for sid, o in seen.services.items():
        left = o.vram_mb - sum(m.get(sid, 0) for m in out)
        for i in sorted(range(len(gpus)), key=lambda i: (sid not in out[i], i)):
            take = min(left, pool[i])
            if take > 0:
                out[i][sid] = out[i].get(sid, 0) + take
                pool[i] -= take
                left -= take
        if left > 0:
            out[0][sid] = out[0].get(sid, 0) + left
    return out


def _pid_owners(seen: Observed) -> dict[int, str]:
    """Main pid -> service; a shared router's pid belongs to the model holding VRAM."""
    owners: dict[int, str] = {}
    for sid, o in seen.services.items():
        pid = o.unit.main_pid
        if pid and (pid not in owners or o.vram_mb > seen.services[owners[pid]].vram_mb):
            owners[pid] = sid
    return owners


def service_gpu_mb(uses: Iterable[GpuUse]) -> dict[str, dict[int, int]]:
    """Service -> {GPU index: MB} over every GPU where it holds memory."""
    out: dict[str, dict[int, int]] = {}
    for u in uses:
        for sid, mb in u.services.items():
            if mb:
                out.setdefault(sid, {})[u.index] = mb
    return out


def service_gpus(uses: Iterable[GpuUse]) -> dict[str, tuple[int, ...]]:
    """Service -> the indices of the GPUs it holds memory on (sorted)."""
    return {sid: tuple(sorted(per)) for sid, per in service_gpu_mb(uses).items()}


def gpus_label(indices: Iterable[int]) -> str:
    """``(0, 1)`` -> ``GPU0,1``; none -> ``-``."""
    ix = sorted(indices)
    return "GPU" + ",".join(str(i) for i in ix) if ix else "-"


@dataclass(frozen=True)
class PlannedGpu:
    """One GPU after a plan: its arithmetic and each placed service's share there."""

    plan: GpuPlan
    services: tuple[tuple[str, int], ...]  # (service, MB), in placement order

    @property
    def label(self) -> str:
        return f"GPU{self.plan.index}"

    def as_dict(self) -> dict[str, Any]:
        return {**self.plan.as_dict(), "services": dict(self.services)}


def planned_uses(placement: Iterable[tuple[str, tuple[int, ...]]] | Mapping[str, Iterable[int]], gpus: Iterable[GpuPlan],
                 presets: Mapping[str, Preset], sleeping: Mapping[str, int] | None = None) -> list[PlannedGpu]:
    """Each GPU of a plan with the MB of every service placed on it: the service's total (its
    ``vram_mb``, or its sleep residual when ``sleeping`` gives it a level; 0 when unloaded) split
    by ``Preset.per_gpu_mb`` over its GPUs in placement order."""
    items = placement.items() if isinstance(placement, Mapping) else placement
    place = [(sid, tuple(ix)) for sid, ix in items]
    asleep = sleeping or {}
    share: dict[tuple[str, int], int] = {}
    for sid, ix in place:
        p = presets.get(sid)
        if p is None or not ix:
            continue
        total = p.vram_mb if sid not in asleep else (p.residual_mb if asleep[sid] else 0)
        parts = p.per_gpu_mb(total) if len(ix) == max(1, p.gpus) else _even(total, len(ix))
        for gpu, mb in zip(ix, parts):
            share[(sid, gpu)] = share.get((sid, gpu), 0) + mb
    return [PlannedGpu(g, tuple((sid, share[(sid, g.index)]) for sid, _ in place if share.get((sid, g.index))))
            for g in gpus]


def _even(total: int, n: int) -> tuple[int, ...]:
    parts = [total // n] * n
    parts[0] += total - sum(parts)
    return tuple(parts)


def fit_placement(result: object) -> list[tuple[str, tuple[int, ...]]]:
    """A fit's (or a plan's) placement, service -> GPU indices, when it places services on GPUs."""
    place: Any = getattr(result, "placement", ()) or ()
    items = place.items() if isinstance(place, Mapping) else place
    return [(sid, tuple(ix)) for sid, ix in items]


def fit_per_gpu(result: object, presets: Mapping[str, Preset]) -> list[PlannedGpu]:
    """Each GPU after a fit's (or a plan's) placement, from its ``gpus`` (``GpuPlan`` figures) and
    ``placement``; [] when it has no per-GPU figures (one GPU: the single bar)."""
    from .plan.result import GpuPlan

    gpus = tuple(getattr(result, "gpus", ()) or ())
    if not gpus or not all(isinstance(g, GpuPlan) for g in gpus):
        return []
    sleeping = dict(getattr(result, "sleeping_after", ()) or ())
    return planned_uses(fit_placement(result), gpus, presets, sleeping)


@dataclass(frozen=True)
class GpusFit:
    """A set of services placed on a host's declared GPUs, as the planner would place them: the
    verdict, its words when it refuses, and each GPU after the placement."""

    fits: bool
    placement: tuple[tuple[str, tuple[int, ...]], ...]
    gpus: tuple[PlannedGpu, ...]
    refusal: str = ""
    lines: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "placement": {sid: list(ix) for sid, ix in self.placement},
                "gpus": [g.as_dict() for g in self.gpus], "refusal": self.refusal or None, "refusal_lines": list(self.lines)}


def simulate_on_gpus(catalog: Any, services: list[Preset], spec: Any, reserve_mb: int) -> GpusFit | None:
    """``mode.simulate`` on a host whose inventory declares several GPUs: the planner's placement and
    per-GPU fit (``plan.simulate.simulate_gpus``) on those GPUs, empty; None for a host of one GPU (or where
    the planner cannot place on several)."""
    from .plan.result import GpuPlan
    from .plan.simulate import simulate_gpus

    declared = tuple(spec.declared_gpus)
    if len(declared) < 2:
        return None
    totals = [int(g.total_mb or spec.gpu_total_mb or 24564) for g in declared]
    names = [str(g.name or spec.gpu_name or "") for g in declared]
    uuids: tuple[str, ...] = ()
    if spec.sim:  # a simulated host's UUIDs are its name's and the index's: a pin by UUID holds here too
        from .sim.ledger import sim_uuid

        uuids = tuple(sim_uuid(spec.name, i) for i in range(len(declared)))
    multi = simulate_gpus(catalog, services, totals, reserve_mb, uuids)
    gpus = tuple(PlannedGpu(GpuPlan(g.index, g.total_mb, g.budget_mb, g.used_mb, uuids[g.index] if g.index < len(uuids) else "",
                                    names[g.index] if g.index < len(names) else ""), tuple(g.segments)) for g in multi.gpus)
    return GpusFit(bool(multi.fits), tuple(multi.placement), gpus, multi.refusal, tuple(multi.lines))
