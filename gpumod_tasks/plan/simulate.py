"""``mode.simulate`` on a box of several GPUs (pure): the planner's placement and per-GPU fit of a
set of services on empty GPUs, each GPU's share of each service (a bar per GPU), and the refusal
with its per-GPU alternatives when the planner would refuse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..catalog.model import Catalog, Preset
from ..errors import PlanRefused
from ..facts.gpu import Gpu, GpuFacts
from ..observed import Observed
from ..state import ModeRecord
from .fitcheck import fit_gpus
from .placement import arithmetic, shares
from .policy import Policy


@dataclass(frozen=True)
class GpuFit:
    """One GPU of a simulated fit: what is placed on it (service, MB on this GPU), in placement order."""

    index: int
    total_mb: int
    budget_mb: int
    segments: tuple[tuple[str, int], ...]

    @property
    def used_mb(self) -> int:
        return sum(mb for _, mb in self.segments)

    @property
    def fits(self) -> bool:
        return self.used_mb <= self.budget_mb

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "total_mb": self.total_mb, "budget_mb": self.budget_mb, "used_mb": self.used_mb,
                "fits": self.fits, "services": [{"id": s, "mb": mb} for s, mb in self.segments]}


@dataclass(frozen=True)
class MultiFit:
    """A set of services placed on a box of several (empty) GPUs, as the planner would place them."""

    placement: tuple[tuple[str, tuple[int, ...]], ...]
    gpus: tuple[GpuFit, ...]
    refusal: str = ""  # the planner's words when it would refuse ("" when it fits)
    lines: tuple[str, ...] = ()  # the refusal's per-GPU figures and alternatives

    @property
    def fits(self) -> bool:
        return not self.refusal

    def as_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "placement": {s: list(ix) for s, ix in self.placement},
                "gpus": [g.as_dict() for g in self.gpus], "refusal": self.refusal or None, "lines": list(self.lines)}


def simulate_gpus(catalog: Catalog, services: list[Preset], gpu_totals: list[int], reserve_mb: int = 0,
                  uuids: tuple[str, ...] = ()) -> MultiFit:
    """``simulate`` on a box with several GPUs (``gpu_totals``, by index, all empty): the planner's
    placement and per-GPU fit, each GPU's share of each service (for a bar per GPU), and when it
    would refuse, its message with the per-GPU alternatives."""
    gpus = tuple(Gpu(i, f"GPU{i}", t, 0, t, uuid=uuids[i] if i < len(uuids) else "") for i, t in enumerate(gpu_totals))
    seen = Observed("simulate", {}, GpuFacts("simulated", gpus), None, ModeRecord(None), "none", True)
    policy = Policy(reserve_mb=reserve_mb)
    ids = [p.id for p in services]
    refusal: str = ""
    lines: tuple[str, ...] = ()
    try:
        fit_gpus(catalog, seen, ids, {}, policy, "these services", arriving=ids)
    except PlanRefused as exc:
        refusal, lines = str(exc), tuple(exc.lines)
    pl, plans = arithmetic(catalog, seen, policy, ids, [])
    segs: dict[int, list[tuple[str, int]]] = {g.index: [] for g in gpus}
    for p in services:
        for g, mb in shares(p, p.vram_mb, pl.of(p.id)).items():
            segs[g].append((p.id, mb))
    return MultiFit(tuple(sorted(pl.gpus.items())),
                    tuple(GpuFit(g.index, g.total_mb, g.budget_mb, tuple(segs[g.index])) for g in plans), refusal, lines)
