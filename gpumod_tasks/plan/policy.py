"""The host's planning policy: reserve, keep-warm rule, RAM preflight, quiesce, release tolerance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..catalog.model import Preset

if TYPE_CHECKING:
    from ..inventory import HostSpec


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

    @classmethod
    def for_host(cls, s: HostSpec, *, reserve_mb: int | None = None) -> Policy:
        """The policy an inventory host's settings give (``reserve_mb`` overrides its reserve)."""
        return cls(
            reserve_mb=s.reserve_mb if reserve_mb is None else reserve_mb,
            keep_warm=s.keep_warm,
            preflight_factor=s.preflight_factor,
            preflight_margin_mb=s.preflight_margin_mb,
            quiesce_s=s.quiesce_s,
            quiesce_threshold_mb=s.quiesce_threshold_mb,
            release_tolerance_mb=s.release_tolerance_mb,
            models_max_default=s.vars.get("models_max", 1),
        )
