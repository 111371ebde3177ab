"""A plan: the ordered steps of one operation, with the arithmetic that justified them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .steps import Start, Step


@dataclass(frozen=True)
class GpuPlan:
    """One GPU's arithmetic after the plan: its total, what the plan may use of it, what it projects."""

    index: int
    total_mb: int
    budget_mb: int  # total - reserve - memory of processes gpumod does not run on it
    projected_mb: int
    uuid: str = ""
    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid or None, "name": self.name or None, "total_mb": self.total_mb,
                "budget_mb": self.budget_mb, "projected_mb": self.projected_mb}


@dataclass(frozen=True)
class Plan:
    mode: str  # the mode after the operation (a service operation keeps the recorded one)
    steps: tuple[Step, ...]
    keep: tuple[str, ...] = ()
    projected_mb: int = 0
    budget_mb: int = 0
    gpu_total_mb: int = 0
    notes: tuple[str, ...] = ()
    previous_mode: str | None = None
    sleeping_after: tuple[tuple[str, int], ...] = field(default=())
    operation: str = ""  # "switch to rag", "service.start glm-code"
    nothing_to_do: str = ""  # why an empty plan is empty ("glm-code is already running")
    placement: tuple[tuple[str, tuple[int, ...]], ...] = ()  # service -> the GPU indices it holds after the plan
    gpus: tuple[GpuPlan, ...] = ()  # per-GPU arithmetic (one entry per GPU of the box)

    @property
    def relaunched(self) -> tuple[str, ...]:
        return tuple(s.service for s in self.steps if isinstance(s, Start) and s.relaunch)

    @property
    def restarted(self) -> tuple[str, ...]:
        return tuple(s.service for s in self.steps if isinstance(s, Start) and s.restart)

    @property
    def converged(self) -> bool:
        return not self.steps

    def as_dict(self) -> dict[str, Any]:
        return {"operation": self.operation, "mode": self.mode, "previous_mode": self.previous_mode,
                "steps": [{"kind": s.kind, "step": s.describe(), "service": getattr(s, "service", "") or None,
                           "idempotent": s.idempotent} for s in self.steps],
                "kept": list(self.keep), "relaunched": list(self.relaunched), "restarted": list(self.restarted),
                "projected_mb": self.projected_mb, "budget_mb": self.budget_mb, "gpu_total_mb": self.gpu_total_mb,
                "notes": list(self.notes), "nothing_to_do": self.nothing_to_do or None,
                "placement": {sid: list(ix) for sid, ix in self.placement}, "gpus": [g.as_dict() for g in self.gpus]}
