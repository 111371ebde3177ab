"""What rendering needs to know about the target (a plain value: engines and the renderer share it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostFacts:
    """What rendering needs to know about the target."""

    gpu_total_mb: int
    sim: bool
    state_dir: str  # expanded
    python: str = "python3"
    sim_pythonpath: str = ""  # where the simulator package lives on the box
    sim_module: str = "gpumod_tasks.sim.server"
