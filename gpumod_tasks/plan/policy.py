"""The host's planning policy: reserve, keep-warm rule, RAM preflight, quiesce, release tolerance."""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog.model import Preset


@dataclass(frozen=True)
class Policy:
    reserve_mb: int = 512
    keep_warm: str = "sleep"
    preflight_factor: float = 1.1
    preflight_margin_mb: int = 1024
    quiesce_s: float = 0.0
    quiesce_threshold_mb: int = 8000
    release_tolerance_mb: int = 256
    #: a unit file written more than this long after its process started means the process runs
    #: an old definition (clock granularity: the boot time is whole seconds)
    stale_unit_slack_s: float = 1.5
    #: a router's ``--models-max`` when its preset's unit_vars do not set it (the host's vars, else 1)
    models_max_default: object = 1

    def ram_needed_mb(self, p: Preset) -> int:
        return int(p.model_size_mb * self.preflight_factor + self.preflight_margin_mb + 0.999)
