"""The switch planner: observed facts and a target mode in, an ordered list of steps out. Pure.

Partition against what is observed, not against the recorded mode:
- stop:  running, not in the target (or in the target but unhealthy: stopped, then started again)
- sleep: sleep-capable, leaving, kept warm by policy (``keep_warm: sleep``)
- keep:  in the target and running
- wake:  in the target and sleeping
- start: in the target and not actively running, even when the recorded mode already equals the
         target (drift recovery; the summary lists what was re-launched)

Order by ``depends_on``: dependents stop before their dependencies; dependencies start first.
RAM rule for sleep levels: a level-1 sleep keeps the weights in host RAM, so it is downgraded to
level 2 when ``MemAvailable - RAM already promised to L1 sleeps in this plan`` is below
``model_size_mb x preflight_factor + preflight_margin_mb`` (the same rule as the start preflight).
Fit rule: awake target services (preset vram_mb) + what sleeping services still hold + GPU memory
of processes gpumod does not run must stay within ``GPU total - reserve``; sleeping services
outside the target are stopped (largest first) until it fits, else the plan is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog.model import Catalog, Mode, Preset, SleepMode
from .errors import PlanRefused
from .fit import alternatives
from .observe import Observed, SvcState


@dataclass(frozen=True)
class Policy:
    reserve_mb: int = 512
    keep_warm: str = "sleep"
    preflight_factor: float = 1.1
    preflight_margin_mb: int = 1024
    quiesce_s: float = 0.0
    quiesce_threshold_mb: int = 8000
    release_tolerance_mb: int = 256

    def ram_needed_mb(self, p: Preset) -> int:
        return int(p.model_size_mb * self.preflight_factor + self.preflight_margin_mb + 0.999)


# -- steps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    kind = "step"

    def describe(self) -> str:  # pragma: no cover - overridden
        return self.kind


@dataclass(frozen=True)
class Stop(Step):
    service: str
    reason: str
    frees_mb: int = 0
    kind = "stop"

    def describe(self) -> str:
        return f"stop {self.service} ({self.reason})"


@dataclass(frozen=True)
class Sleep(Step):
    service: str
    level: int  # 1 or 2 (vLLM levels); 0 = llama.cpp router unload
    reason: str
    frees_mb: int = 0
    note: str = ""
    kind = "sleep"

    def describe(self) -> str:
        how = "unload from router" if self.level == 0 else f"L{self.level}"
        return f"sleep {self.service} {how} ({self.reason})" + (f" [{self.note}]" if self.note else "")


@dataclass(frozen=True)
class WaitRelease(Step):
    expected_used_mb: int
    tolerance_mb: int
    kind = "wait-release"

    def describe(self) -> str:
        return f"wait until GPU used <= {self.expected_used_mb} MB (+{self.tolerance_mb} MB tolerance)"


@dataclass(frozen=True)
class Quiesce(Step):
    """After a heavy stop, loads wait ``seconds``; the window is recorded so a later lone
    ``service.start`` is refused until it has passed. Nothing waits when nothing loads next."""

    seconds: float
    freed_mb: int
    wait: bool = True
    kind = "quiesce"

    def describe(self) -> str:
        verb = "quiesce" if self.wait else "start a quiesce window of"
        return f"{verb} {self.seconds:g}s after freeing {self.freed_mb} MB"


@dataclass(frozen=True)
class Wake(Step):
    service: str
    level: int
    kind = "wake"

    def describe(self) -> str:
        how = {0: "load into router", 1: "L1: wake_up", 2: "L2: weights, reload_weights, kv_cache"}.get(self.level, "")
        return f"wake {self.service} ({how})"


@dataclass(frozen=True)
class Start(Step):
    service: str
    reason: str
    ram_needed_mb: int = 0
    relaunch: bool = False  # drift recovery: it should have been running
    kind = "start"

    def describe(self) -> str:
        return f"start {self.service} ({self.reason}; preflight needs {self.ram_needed_mb} MB RAM)"


@dataclass(frozen=True)
class Record(Step):
    mode: str
    sleep_levels: tuple[tuple[str, int], ...] = ()
    kind = "record"

    def describe(self) -> str:
        return f"record mode {self.mode}"


@dataclass(frozen=True)
class Plan:
    mode: str
    steps: tuple[Step, ...]
    keep: tuple[str, ...]
    projected_mb: int
    budget_mb: int
    gpu_total_mb: int
    notes: tuple[str, ...] = ()
    previous_mode: str | None = None
    sleeping_after: tuple[tuple[str, int], ...] = field(default=())

    @property
    def relaunched(self) -> tuple[str, ...]:
        return tuple(s.service for s in self.steps if isinstance(s, Start) and s.relaunch)

    @property
    def converged(self) -> bool:
        return not self.steps

    def actions(self, kind: type[Step]) -> list[Step]:
        return [s for s in self.steps if isinstance(s, kind)]

    def lines(self) -> list[str]:
        if not self.steps:
            return [f"nothing to do: mode {self.mode} is already running as planned"]
        return [f"{i}. {s.describe()}" for i, s in enumerate(self.steps, 1)]


# -- planning ---------------------------------------------------------------------------------


def topo_order(catalog: Catalog, ids: list[str]) -> list[str]:
    """Dependencies first; ties keep the given order. (Cycles are rejected by catalog validation.)"""
    wanted = set(ids)
    out: list[str] = []
    seen: set[str] = set()

    def visit(i: str) -> None:
        if i in seen:
            return
        seen.add(i)
        for d in catalog.presets[i].depends_on:
            if d in wanted:
                visit(d)
        out.append(i)

    for i in ids:
        visit(i)
    return out


def _sleep_level(p: Preset) -> int:
    return 0 if p.sleep_mode is SleepMode.ROUTER else p.sleep_mode.level


def plan_switch(catalog: Catalog, seen: Observed, mode: Mode, policy: Policy) -> Plan:
    target = list(mode.service_ids)
    tset = set(target)
    svc = seen.services
    notes: list[str] = []
    gpu_total = seen.gpu_total_mb
    budget = gpu_total - policy.reserve_mb

    for sid in target:
        o = svc[sid]
        if o.foreign_listener:
            raise PlanRefused(f"cannot start {sid}: port {catalog.presets[sid].port} already answers, but its unit is not running "
                              f"(another process holds the port); free the port or change the preset")

    leaving: dict[str, Step] = {}
    arriving: dict[str, Step] = {}
    keep: list[str] = []
    recorded = seen.record.mode
    recorded_services = set(catalog.modes[recorded].service_ids) if recorded in catalog.modes else set()
    mem_left = seen.mem.available_mb if seen.mem else None
    sleeping_after: dict[str, int] = {}

    for sid in topo_order(catalog, list(catalog.presets)):
        p, o = catalog.presets[sid], svc.get(sid)
        if o is None:
            continue
        if sid in tset:
            if o.state is SvcState.RUNNING:
                keep.append(sid)
            elif o.state is SvcState.SLEEPING:
                arriving[sid] = Wake(sid, o.sleep_level if o.sleep_level is not None else _sleep_level(p))
            elif o.state is SvcState.STARTING:
                arriving[sid] = Start(sid, "already starting: wait for health", policy.ram_needed_mb(p))
            elif o.state is SvcState.UNHEALTHY:
                detail = o.probe.detail if o.probe else ""
                leaving[sid] = Stop(sid, f"unhealthy, restarting: {detail}".strip(": "), o.vram_mb)
                arriving[sid] = Start(sid, "restart after unhealthy", policy.ram_needed_mb(p), relaunch=True)
            else:
                drift = recorded == mode.id or sid in recorded_services
                why = (f"drift: should be running in mode {recorded} but is {o.state.value}" if drift
                       else f"not running ({o.state.value})")
                arriving[sid] = Start(sid, why, policy.ram_needed_mb(p), relaunch=drift)
        else:
            if o.state is SvcState.RUNNING and p.can_sleep and policy.keep_warm == "sleep":
                level = _sleep_level(p)
                note = ""
                if level == 1 and mem_left is not None:
                    need = policy.ram_needed_mb(p)
                    if mem_left < need:
                        note = (f"L1 -> L2: L1 keeps {p.model_size_mb} MB of weights in host RAM; MemAvailable left "
                                f"{mem_left} MB < {p.model_size_mb} x {policy.preflight_factor:g} + {policy.preflight_margin_mb} = {need} MB")
                        notes.append(f"{sid}: {note}")
                        level = 2
                    else:
                        mem_left -= p.model_size_mb
                frees = max(0, o.vram_mb - p.residual_mb)
                leaving[sid] = Sleep(sid, level, "leaving mode, kept warm", frees, note)
                sleeping_after[sid] = level
            elif o.state in (SvcState.RUNNING, SvcState.STARTING, SvcState.UNHEALTHY):
                leaving[sid] = Stop(sid, "leaving mode" + ("" if p.can_sleep else ", cannot sleep"), o.vram_mb)
            elif o.state is SvcState.SLEEPING:
                sleeping_after[sid] = o.sleep_level if o.sleep_level is not None else _sleep_level(p)

    # fit: awake targets + sleeping residuals + foreign GPU processes
    def projected() -> int:
        awake = sum(catalog.presets[s].vram_mb for s in target)
        asleep = sum(catalog.presets[s].residual_mb for s in sleeping_after)
        return awake + asleep + seen.external_mb

    if gpu_total and projected() > budget:
        # stop sleeping services outside the target, largest residual first, until it fits
        for sid in sorted(sleeping_after, key=lambda s: -catalog.presets[s].residual_mb):
            if projected() <= budget:
                break
            res = catalog.presets[sid].residual_mb
            if res == 0:
                continue
            o = svc[sid]
            del sleeping_after[sid]
            leaving[sid] = Stop(sid, f"asleep but its {res} MB residual is needed", o.vram_mb)
            notes.append(f"{sid}: stopped instead of kept asleep to make room ({res} MB)")
    if gpu_total and projected() > budget:
        presets = [catalog.presets[s] for s in target]
        alts = alternatives(catalog, presets, gpu_total, policy.reserve_mb)
        lines = [f"awake {s}: {catalog.presets[s].vram_mb} MB" for s in target]
        lines += [f"asleep {s}: {catalog.presets[s].residual_mb} MB" for s in sleeping_after if catalog.presets[s].residual_mb]
        if seen.external_mb:
            lines.append(f"other GPU processes: {seen.external_mb} MB (pids {', '.join(map(str, seen.unmapped_pids))})")
        lines += ["alternatives:"] + [f"  {'fits' if a.fits else 'no  '}  {a.description}" for a in alts]
        raise PlanRefused(f"mode {mode.id} does not fit: {projected()} MB > {gpu_total} MB - {policy.reserve_mb} MB reserve "
                          f"= {budget} MB (over by {projected() - budget} MB); nothing was changed", lines)

    steps: list[Step] = []
    order = topo_order(catalog, list(catalog.presets))
    for sid in reversed(order):  # dependents first
        if sid in leaving:
            steps.append(leaving[sid])
    freed = sum(getattr(s, "frees_mb", 0) for s in leaving.values())
    if leaving:
        # verified even when nothing loads next: when the command returns, the VRAM is free
        expected = max(0, seen.gpu_used_mb - freed)
        steps.append(WaitRelease(expected, policy.release_tolerance_mb))
        if policy.quiesce_s > 0 and freed >= policy.quiesce_threshold_mb:
            steps.append(Quiesce(policy.quiesce_s, freed, wait=bool(arriving)))
    for sid in topo_order(catalog, target):  # dependencies first
        if sid in arriving:
            steps.append(arriving[sid])
    if steps or recorded != mode.id:
        steps.append(Record(mode.id, tuple(sorted(sleeping_after.items()))))
    return Plan(mode=mode.id, steps=tuple(steps), keep=tuple(keep), projected_mb=projected(), budget_mb=budget,
                gpu_total_mb=gpu_total, notes=tuple(notes), previous_mode=recorded,
                sleeping_after=tuple(sorted(sleeping_after.items())))


def describe_state(seen: Observed) -> list[str]:
    """What runs, sleeps and is stopped right now, one line each (for failure reports)."""
    groups: dict[str, list[str]] = {}
    for o in seen.services.values():
        label = o.id + ((f" (L{o.sleep_level})" if o.sleep_level else " (unloaded)") if o.state is SvcState.SLEEPING else "")
        groups.setdefault(o.state.value, []).append(label)
    order = ["running", "starting", "sleeping", "unhealthy", "failed", "stopped"]
    lines = [f"{k}: {', '.join(sorted(groups[k]))}" for k in order if groups.get(k)]
    if seen.gpu and seen.gpu.gpus:
        lines.append(f"GPU: {seen.gpu_used_mb} / {seen.gpu_total_mb} MB used")
    return lines

