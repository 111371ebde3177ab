"""What an observation of a target found: plain values, and the pure rules that classify them.

The planner's inputs live here. Nothing in this module does I/O or imports host code, so a plan
can be tested with facts built in the test (``tests/test_import_purity.py`` checks it in a fresh
interpreter).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from .catalog.model import Preset
from .daemon.announce import DaemonLink
from .engines.base import Health, Probe
from .facts.gpu import Gpu, GpuFacts
from .facts.meminfo import MemInfo
from .facts.units import UnitState
from .footprints import Footprints
from .state import ModeRecord


class SvcState(str, Enum):
    RUNNING = "running"
    SLEEPING = "sleeping"
    STARTING = "starting"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class ServiceObs:
    id: str
    state: SvcState
    unit: UnitState
    probe: Probe | None = None
    sleep_level: int | None = None
    vram_mb: int = 0  # the sum of gpu_mb
    foreign_listener: bool = False  # the unit is stopped but something answers on its port
    gpu_mb: dict[int, int] = field(default_factory=dict, hash=False, compare=False)  # GPU index -> MB it holds there

    @property
    def gpu_indices(self) -> tuple[int, ...]:
        """The GPUs it holds memory on now (sorted)."""
        return tuple(sorted(i for i, mb in self.gpu_mb.items() if mb))

    @property
    def holds_gpu(self) -> bool:
        return self.state in (SvcState.RUNNING, SvcState.SLEEPING, SvcState.STARTING, SvcState.UNHEALTHY)


@dataclass(frozen=True)
class UnitFile:
    """An installed unit file (systemd unit or supervisor spec) as found on the host."""

    unit: str
    installed: bool
    digest: str = ""  # sha256 of the installed text ("" when not installed)
    mtime: float = 0.0  # seconds since the epoch


@dataclass(frozen=True)
class RenderedUnit:
    """What a unit should contain, rendered from the catalog before planning. ``body`` is what is
    written (the unit text, or the supervisor's runner script); ``spec`` is the supervisor's
    ExecSpec (None for systemd)."""

    unit: str
    body: str
    digest: str
    spec: object = None


@dataclass(frozen=True)
class Releasing:
    """GPU memory still held by a process on its way out: it exited (or is a zombie) or its
    service's unit is no longer running, while the driver has not given its memory back yet (a
    crashed or killed stop, seconds ago). ``service``: whose it was, when known."""

    pid: int
    mb: int  # the sum over its GPUs
    service: str = ""
    gpu_mb: dict[int, int] = field(default_factory=dict, hash=False, compare=False)  # GPU index -> MB (empty: GPU 0)

    def on_gpu(self, index: int) -> int:
        """Its MB on one GPU (a release observed without per-GPU figures is GPU 0's)."""
        return self.gpu_mb.get(index, 0) if self.gpu_mb else (self.mb if index == 0 else 0)

    def describe(self) -> str:
        return f"pid {self.pid} of {self.service}" if self.service else f"pid {self.pid} (exited)"


@dataclass(frozen=True)
class Observed:
    host: str
    services: dict[str, ServiceObs]
    gpu: GpuFacts | None
    mem: MemInfo | None
    record: ModeRecord
    manager: str
    sim: bool
    gpu_error: str = ""
    took_s: float = 0.0
    unmapped_pids: dict[int, int] = field(default_factory=dict)  # GPU processes gpumod does not run
    unit_files: dict[str, UnitFile] = field(default_factory=dict)  # only when asked for
    boot_time: float = 0.0  # the host's boot time (epoch s): turns a unit's start into a wall time
    releasing: tuple[Releasing, ...] = ()  # memory of exiting processes, not yet given back (not in unmapped_pids)
    daemon: DaemonLink | None = None  # the router daemon registered on the box (it drains before a service leaves)
    footprints: Footprints = field(default_factory=Footprints, hash=False, compare=False)  # learned figures (footprints.json)
    #: GPU index -> MB of the processes gpumod does not run (``unmapped_pids`` summed per GPU); empty
    #: when the observation did not say (then all of it counts on GPU 0)
    foreign_gpu_mb: dict[int, int] = field(default_factory=dict)

    @property
    def gpu_indices(self) -> tuple[int, ...]:
        """The box's GPUs, by index."""
        return tuple(g.index for g in self.gpu.gpus) if self.gpu else ()

    @property
    def multi_gpu(self) -> bool:
        return len(self.gpu_indices) > 1

    def gpu_by_index(self, index: int) -> Gpu | None:
        return next((g for g in self.gpu.gpus if g.index == index), None) if self.gpu else None

    def foreign_on(self, index: int) -> int:
        """MB of processes gpumod does not run, on one GPU (without per-GPU figures: all on the first)."""
        if self.foreign_gpu_mb:
            return self.foreign_gpu_mb.get(index, 0)
        return self.external_mb if index == (self.gpu_indices or (0,))[0] else 0

    def used_on(self, index: int) -> int:
        g = self.gpu_by_index(index)
        return (g.used_mb or 0) if g else 0

    def releasing_on(self, index: int) -> int:
        return sum(r.on_gpu(index) for r in self.releasing)

    @property
    def gpu_total_mb(self) -> int:
        return (self.gpu.primary.total_mb or 0) if self.gpu and self.gpu.gpus else 0

    @property
    def gpu_used_mb(self) -> int:
        return (self.gpu.primary.used_mb or 0) if self.gpu and self.gpu.gpus else 0

    @property
    def external_mb(self) -> int:
        return sum(self.unmapped_pids.values())

    @property
    def releasing_mb(self) -> int:
        return sum(r.mb for r in self.releasing)

    def not_running(self, ids: Iterable[str], may_sleep: Iterable[str] = ()) -> dict[str, str]:
        """Services of ``ids`` that are not running and healthy, with their state (mode.verify);
        those in ``may_sleep`` (a mode's ``sleep_on_idle`` services) may be asleep instead."""
        asleep_ok = set(may_sleep)
        return {s: self.services[s].state.value for s in ids if self.services[s].state is not SvcState.RUNNING
                and not (s in asleep_ok and self.services[s].state is SvcState.SLEEPING)}

    def started_at(self, sid: str) -> float:
        """Wall-clock start of the service's process (0.0 when unknown or not running)."""
        u = self.services[sid].unit
        if not (u.is_running and u.started_mono_us and self.boot_time):
            return 0.0
        return self.boot_time + u.started_mono_us / 1e6


def classify(preset: Preset, unit: UnitState, pr: Probe | None, record: ModeRecord) -> tuple[SvcState, int | None, bool]:
    """Unit state + HTTP probe -> service state (and sleep level). Sleeping is never unhealthy."""
    if not unit.is_running:
        foreign = pr is not None and pr.health is Health.OK
        return (SvcState.FAILED if unit.is_failed else SvcState.STOPPED), None, foreign
    if pr is None:
        return SvcState.UNHEALTHY, None, False
    if pr.health is Health.OK:
        if pr.sleeping:
            if preset.sleep_mode.value == "router":
                return SvcState.SLEEPING, 0, False  # unloaded from its router: holds no VRAM
            level = record.sleep_levels.get(preset.id) or preset.sleep_mode.level or 1
            return SvcState.SLEEPING, level, False
        return SvcState.RUNNING, None, False
    if pr.health in (Health.LOADING, Health.DOWN):
        return SvcState.STARTING, None, False
    return SvcState.UNHEALTHY, None, False


def describe_state(seen: Observed) -> list[str]:
    """What runs, sleeps and is stopped right now, one line each (for failure reports)."""
    groups: dict[str, list[str]] = {}
    for o in seen.services.values():
        label = o.id + ((f" (L{o.sleep_level})" if o.sleep_level else " (unloaded)") if o.state is SvcState.SLEEPING else "")
        groups.setdefault(o.state.value, []).append(label)
    order = ["running", "starting", "sleeping", "unhealthy", "failed", "stopped"]
    lines = [f"{k}: {', '.join(sorted(groups[k]))}" for k in order if groups.get(k)]
    if seen.gpu and seen.multi_gpu:
        lines += [f"GPU{g.index}: {g.used_mb or 0} / {g.total_mb or 0} MB used" for g in seen.gpu.gpus]
    elif seen.gpu and seen.gpu.gpus:
        lines.append(f"GPU: {seen.gpu_used_mb} / {seen.gpu_total_mb} MB used")
    return lines
