"""Properties of the planners over generated catalogs and observed states.

On data (``plan_switch`` and ``plan_service``, built from the dataclasses as ``test_plan.py`` does):
either the plan is refused, or it
- keeps the GPU within ``total - reserve`` after it (awake services + sleeping residuals + other processes),
- starts dependencies before their dependents and stops dependents before their dependencies,
- starts, wakes or loads only services that end awake, and loads a router model only into a running router,
- stops no unit a kept service runs in, unless the service is restarted,
- waits for the release after every stop or sleep and before anything loads, with a figure the GPU reaches,
- writes units before the one daemon-reload, and both before any start,
and applying its effects to the observation (a small simulator below) then planning again gives no step.

On the simulated host (stand-in servers, supervisor, ledger), for a few generated catalogs written as
YAML: after each switch to a generated mode, the same switch as a dry run shows no step and the ledger
is within budget and equals the services' sum; a refused switch changes nothing; ``blank`` frees all VRAM.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from conftest import REPO, free_ports, run_cli
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from gpumod_tasks.catalog.model import Catalog, DockerSpec, Driver, Mode, ModeService, Preset, SleepMode
from gpumod_tasks.errors import PlanRefused
from gpumod_tasks.facts.gpu import Gpu, GpuFacts
from gpumod_tasks.facts.meminfo import MemInfo
from gpumod_tasks.facts.units import UnitState
from gpumod_tasks.observed import Observed, RenderedUnit, ServiceObs, SvcState, UnitFile
from gpumod_tasks.plan import (
    AwaitHealthy,
    DaemonReload,
    InstallUnit,
    Plan,
    Policy,
    Quiesce,
    Record,
    ResetFailed,
    RouterLoad,
    RouterUnload,
    ServiceOp,
    Sleep,
    Start,
    Step,
    Stop,
    WaitRelease,
    Wake,
    plan_service,
    plan_switch,
)
from gpumod_tasks.plan.order import with_dependencies
from gpumod_tasks.state import ModeRecord

R, S, ST, F, U, STARTING = (SvcState.RUNNING, SvcState.SLEEPING, SvcState.STOPPED, SvcState.FAILED, SvcState.UNHEALTHY,
                            SvcState.STARTING)
AWAKE = (R, STARTING, U)
GPU_MB = 24564
BOOT = 1000.0
STARTED_US = 5_000_000  # processes observed running started at BOOT + 5 s
LEAVE = (Stop, RouterUnload, Sleep)
ARRIVE = (Start, Wake, RouterLoad, AwaitHealthy)

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow],
                    report_multiple_bugs=False)

SLEEP_MODES = {Driver.VLLM: (SleepMode.NONE, SleepMode.L1, SleepMode.L2),
               Driver.LLAMACPP: (SleepMode.NONE, SleepMode.ROUTER),
               Driver.FASTAPI: (SleepMode.NONE, SleepMode.L1, SleepMode.L2),
               Driver.DOCKER: (SleepMode.NONE,)}


# -- generated catalogs ------------------------------------------------------------------------------

@st.composite
def catalogs(draw: Any, max_presets: int = 6, max_vram: int = 14000) -> Catalog:
    """Presets of every engine and sleep mode, shared llama.cpp routers, acyclic depends_on (a preset
    depends only on earlier ones), and modes that are random subsets closed under their dependencies."""
    n = draw(st.integers(1, max_presets))
    presets: dict[str, Preset] = {}
    router_port = {"ra": 7001, "rb": 7002}
    # --models-max of each router (0: no limit); a mode needing more of its models at once is refused
    models_max = {r: draw(st.sampled_from([1, 2, 0])) for r in router_port}
    for i in range(n):
        sid = f"s{i}"
        driver = draw(st.sampled_from(list(Driver)))
        sleep = draw(st.sampled_from(SLEEP_MODES[driver]))
        vram = draw(st.integers(0, max_vram // 100)) * 100
        # a router model that is unloaded holds nothing (its child exits): no residual for those
        residual = draw(st.none() | st.integers(0, vram)) if sleep in (SleepMode.L1, SleepMode.L2) else None
        router = draw(st.sampled_from(["ra", "ra", "rb", ""])) if sleep is SleepMode.ROUTER else ""
        deps = tuple(draw(st.lists(st.sampled_from(list(presets)), unique=True, max_size=2))) if presets else ()
        presets[sid] = Preset(sid, sid, driver, router_port.get(router, 8000 + i), vram,
                              model_size_mb=draw(st.integers(0, 80)) * 100, supports_sleep=sleep is not SleepMode.NONE,
                              sleep_mode=sleep, sleep_vram_mb=residual, depends_on=deps, router=router,
                              docker=DockerSpec("example/server:1") if driver is Driver.DOCKER else None,
                              unit_vars={"models_max": models_max[router]} if router else {})
    cat = Catalog(presets, {})
    modes = {"blank": Mode("blank", "blank")}
    for j, subset in enumerate(draw(st.lists(st.lists(st.sampled_from(sorted(presets)), unique=True, min_size=1),
                                             min_size=1, max_size=3))):
        ids = with_dependencies(cat, subset)
        modes[f"m{j}"] = Mode(f"m{j}", f"m{j}", services=tuple(ModeService(s) for s in ids))
    return Catalog(presets, modes)


def units_of(cat: Catalog) -> dict[str, list[Preset]]:
    out: dict[str, list[Preset]] = {}
    for p in cat.presets.values():
        out.setdefault(p.unit, []).append(p)
    return out


def svc_obs(p: Preset, state: SvcState, vram: int, level: int | None, unit_up: bool, failed: bool,
            started_us: int = STARTED_US) -> ServiceObs:
    active = "failed" if failed else ("active" if unit_up else "inactive")
    unit = UnitState(p.unit, "loaded", active, "running" if unit_up else ("failed" if failed else "dead"),
                     100 if unit_up else 0, started_mono_us=started_us if unit_up else 0)
    return ServiceObs(p.id, state, unit, None, level if state is S else None, vram)


@st.composite
def observations(draw: Any, cat: Catalog) -> Observed:
    """Each service stopped / running / sleeping / failed / unhealthy / starting with its VRAM (a router
    unit's models all down, or the unit up with each model loaded, unloaded, loading or unhealthy),
    other GPU processes, MemAvailable, a recorded mode, unit files present, absent or stale."""
    services: dict[str, ServiceObs] = {}
    for unit, peers in units_of(cat).items():
        router = peers[0].sleep_mode is SleepMode.ROUTER
        if router and len(peers) > 1:
            up = draw(st.booleans())
            failed = not up and draw(st.booleans())
            for p in peers:
                state = draw(st.sampled_from([R, S, STARTING, U])) if up else (F if failed else ST)
                services[p.id] = svc_obs(p, state, draw_vram(draw, p, state), 0, up, failed)
            continue
        p = peers[0]
        choices = [R, ST, F, U, STARTING] + ([S] if p.can_sleep else [])
        state = draw(st.sampled_from(choices))
        level = 0 if router else draw(st.sampled_from([1, 2]))
        services[p.id] = svc_obs(p, state, draw_vram(draw, p, state), level, state in (R, S, STARTING, U), state is F)
    external = draw(st.dictionaries(st.integers(100, 99999), st.integers(0, 60) .map(lambda x: x * 100), max_size=2))
    used = sum(o.vram_mb for o in services.values()) + sum(external.values())
    gpu = GpuFacts("test", (Gpu(0, "RTX 4090", GPU_MB, used, GPU_MB - used),))
    mem = draw(st.none() | st.integers(0, 640).map(lambda x: MemInfo(65536, x * 100)))
    levels = {s: o.sleep_level for s, o in services.items() if o.state is S and o.sleep_level}
    record = ModeRecord(draw(st.none() | st.sampled_from(sorted(cat.modes))), sleep_levels=levels,
                        failure=draw(st.sampled_from([{}, {}, {"operation": "switch to x", "error": "boom"}])))
    files = {}
    for unit in units_of(cat):
        kind = draw(st.sampled_from(["same", "same", "absent", "differs", "newer", "none"]))
        if kind == "none":
            continue
        files[unit] = UnitFile(unit, kind != "absent", "" if kind == "absent" else ("old" if kind == "differs" else digest(unit)),
                               BOOT + 100.0 if kind == "newer" else BOOT - 10.0)
    return Observed("h", services, gpu, mem, record, draw(st.sampled_from(["systemd", "supervisor"])), True,
                    unmapped_pids=external, unit_files=files, boot_time=BOOT)


def draw_vram(draw: Any, p: Preset, state: SvcState) -> int:
    if state is R:
        return p.vram_mb
    if state is S:
        return 0 if p.sleep_mode is SleepMode.ROUTER else p.residual_mb
    if state in (STARTING, U):
        return draw(st.integers(0, p.vram_mb))
    return 0


def digest(unit: str) -> str:
    return f"sha-{unit}"


def rendered_for(cat: Catalog) -> dict[str, RenderedUnit]:
    return {u: RenderedUnit(u, f"[Service]\n# {u}\n", digest(u)) for u in units_of(cat)}


@st.composite
def cases(draw: Any, max_presets: int = 6) -> tuple[Catalog, Observed, dict[str, RenderedUnit] | None]:
    cat = draw(catalogs(max_presets))
    return cat, draw(observations(cat)), draw(st.sampled_from([None, rendered_for(cat)]))


# -- a small simulator of the plan's effects on the observation -----------------------------------------

@dataclass
class Sim:
    """The observation as the steps change it. ``check`` collects what a step finds wrong."""

    cat: Catalog
    seen: Observed
    rendered: dict[str, RenderedUnit] | None
    policy: Policy
    services: dict[str, ServiceObs] = field(default_factory=dict)
    files: dict[str, UnitFile] = field(default_factory=dict)
    failed_units: set[str] = field(default_factory=set)
    mem: int | None = None
    record: ModeRecord = field(default_factory=lambda: ModeRecord(None))
    clock_s: float = 200.0  # seconds after boot
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.services = dict(self.seen.services)
        self.files = dict(self.seen.unit_files)
        self.failed_units = {o.unit.unit for o in self.services.values() if o.unit.is_failed}
        self.mem = self.seen.mem.available_mb if self.seen.mem else None
        self.record = self.seen.record

    def used(self) -> int:
        return sum(o.vram_mb for o in self.services.values()) + self.seen.external_mb

    def set(self, sid: str, state: SvcState, vram: int, level: int | None = None, *, unit_up: bool | None = None,
            started: bool = False) -> None:
        o = self.services[sid]
        p = self.cat.presets[sid]
        up = o.unit.is_running if unit_up is None else unit_up
        started_us = int(self.clock_s * 1e6) if started else o.unit.started_mono_us
        self.services[sid] = svc_obs(p, state, vram, level, up, p.unit in self.failed_units and not up, started_us)

    def apply(self, step: Step) -> None:
        self.clock_s += 1.0
        cat = self.cat
        if isinstance(step, InstallUnit):
            self.files[step.unit] = UnitFile(step.unit, True, step.digest, BOOT + self.clock_s)
        elif isinstance(step, ResetFailed):
            self.failed_units.discard(step.unit)
        elif isinstance(step, Stop):
            unit = cat.presets[step.service].unit
            for p in units_of(cat)[unit]:
                o = self.services[p.id]
                if o.state is S and o.sleep_level == 1 and self.mem is not None:
                    self.mem += p.model_size_mb
                self.set(p.id, ST, 0, unit_up=False)
        elif isinstance(step, RouterUnload):
            self.set(step.service, S, 0, 0)
        elif isinstance(step, Sleep):
            p = cat.presets[step.service]
            if step.level == 1 and self.mem is not None:
                self.mem -= p.model_size_mb
            self.set(step.service, S, p.residual_mb, step.level)
        elif isinstance(step, WaitRelease):
            if self.used() > step.expected_used_mb + step.tolerance_mb:
                self.problems.append(f"{step.describe()} never returns: {self.used()} MB stay in use")
        elif isinstance(step, Wake):
            p = cat.presets[step.service]
            if self.services[step.service].state is S and self.services[step.service].sleep_level == 1 and self.mem is not None:
                self.mem += p.model_size_mb
            self.set(step.service, R, p.vram_mb)
        elif isinstance(step, Start):
            p = cat.presets[step.service]
            if p.unit in self.failed_units and self.seen.manager == "systemd" and not step.restart:
                self.problems.append(f"{step.describe()}: its unit is still failed")
            if self.services[p.id].unit.is_running:
                self.problems.append(f"{step.describe()}: its unit already runs")
            if step.router:
                for q in units_of(cat)[p.unit]:
                    self.set(q.id, S, 0, 0, unit_up=True, started=True)
            else:
                self.set(p.id, R, p.vram_mb, unit_up=True, started=True)
        elif isinstance(step, RouterLoad):
            p = cat.presets[step.service]
            if not self.services[p.id].unit.is_running:
                self.problems.append(f"{step.describe()}: its router unit is not running")
            self.set(p.id, R, p.vram_mb)
        elif isinstance(step, AwaitHealthy):
            self.set(step.service, R, self.cat.presets[step.service].vram_mb)
        elif isinstance(step, Record):
            levels = dict(step.sleep_levels)
            self.record = ModeRecord(step.mode if step.mode is not None else self.record.mode, sleep_levels=levels)
        else:
            assert isinstance(step, (DaemonReload, Quiesce)), step

    def observed(self) -> Observed:
        used = self.used()
        gpu = GpuFacts("test", (Gpu(0, "RTX 4090", GPU_MB, used, GPU_MB - used),))
        mem = MemInfo(65536, self.mem) if self.mem is not None else None
        return replace(self.seen, services=dict(self.services), gpu=gpu, mem=mem, record=self.record,
                       unit_files=dict(self.files))


def run_plan(cat: Catalog, seen: Observed, rendered: dict[str, RenderedUnit] | None, plan: Plan, policy: Policy) -> Sim:
    sim = Sim(cat, seen, rendered, policy)
    for step in plan.steps:
        sim.apply(step)
    return sim


# -- the checks ------------------------------------------------------------------------------------

def awake_after(sim: Sim) -> set[str]:
    return {s for s, o in sim.services.items() if o.state in AWAKE}


def projected(cat: Catalog, sim: Sim) -> int:
    return (sum(cat.presets[s].vram_mb for s in awake_after(sim))
            + sum(cat.presets[s].residual_mb for s, o in sim.services.items() if o.state is S) + sim.seen.external_mb)


def projected_now(cat: Catalog, seen: Observed) -> int:
    return (sum(cat.presets[s].vram_mb for s, o in seen.services.items() if o.state in AWAKE)
            + sum(cat.presets[s].residual_mb for s, o in seen.services.items() if o.state is S) + seen.external_mb)


def deps_closure(cat: Catalog, sid: str) -> set[str]:
    return set(with_dependencies(cat, [sid])) - {sid}


def check_order(cat: Catalog, plan: Plan) -> None:
    steps = list(plan.steps)
    idx = {type(s): [] for s in steps}
    for i, s in enumerate(steps):
        idx[type(s)].append(i)
    # unit writes, then one daemon-reload, then starts
    installs, reloads, starts = idx.get(InstallUnit, []), idx.get(DaemonReload, []), idx.get(Start, [])
    assert len(reloads) <= 1, plan.steps
    if reloads:
        assert installs and max(installs) < reloads[0], plan.steps
    if installs and starts:
        assert max(installs + reloads) < min(starts), plan.steps
    # the release wait follows every stop or sleep, and comes before anything loads after one
    for i, s in enumerate(steps):
        if isinstance(s, LEAVE):
            assert any(isinstance(w, WaitRelease) for w in steps[i + 1:]), f"no release wait after {s.describe()}"
            for j in range(i + 1, len(steps)):
                if isinstance(steps[j], ARRIVE):
                    assert any(isinstance(w, WaitRelease) for w in steps[i + 1:j]), \
                        f"{steps[j].describe()} does not wait for the release of {s.describe()}"
    # dependencies come up first, go down last
    arrive_at: dict[str, int] = {}
    leave_at: dict[str, int] = {}
    for i, s in enumerate(steps):
        sid = getattr(s, "service", "")
        if isinstance(s, ARRIVE):
            arrive_at.setdefault(sid, i)
        elif isinstance(s, LEAVE):
            leave_at.setdefault(sid, i)
    for sid, i in arrive_at.items():
        for d in deps_closure(cat, sid):
            if d in arrive_at:
                assert arrive_at[d] < i, f"{sid} comes up before its dependency {d}: {[x.describe() for x in steps]}"
    for sid, i in leave_at.items():
        for p in cat.presets.values():
            if sid in deps_closure(cat, p.id) and p.id in leave_at:
                assert leave_at[p.id] < i, f"{sid} goes down before its dependent {p.id}: {[x.describe() for x in steps]}"


def check_plan(cat: Catalog, seen: Observed, rendered: dict[str, RenderedUnit] | None, plan: Plan, policy: Policy,
               must_fit: bool) -> Sim:
    note(f"{plan.operation}; observed " + ", ".join(f"{s}={o.state.value}/{o.vram_mb}" + ("(unit up)" if o.unit.is_running else "")
                                                   for s, o in seen.services.items()) + f"; external {seen.external_mb}")
    note("plan:\n" + steps_text(plan))
    check_order(cat, plan)
    sim = run_plan(cat, seen, rendered, plan, policy)
    assert not sim.problems, sim.problems
    budget = GPU_MB - policy.reserve_mb
    if must_fit and any(isinstance(s, ARRIVE) for s in plan.steps):
        assert projected(cat, sim) <= budget, (projected(cat, sim), budget, [s.describe() for s in plan.steps])
    else:  # a stop, a sleep or an empty plan never needs more than there was
        assert projected(cat, sim) <= max(budget, projected_now(cat, seen)), [s.describe() for s in plan.steps]
    ends_awake = awake_after(sim)
    # a router into which the plan loads holds no more models than its --models-max: the real one
    # would evict its least recently used idle model instead (servers.md B)
    for s in plan.steps:
        if isinstance(s, (Start, RouterLoad)) and cat.presets[s.service].sleep_mode is SleepMode.ROUTER:
            peers = cat.unit_peers(cat.presets[s.service])
            limit = peers[0].unit_vars.get("models_max", 1)
            loaded = sorted(q.id for q in peers if q.id in ends_awake)
            assert not limit or len(loaded) <= limit, f"{s.describe()}: {loaded} in a router of --models-max {limit}"
    for s in plan.steps:
        if isinstance(s, (Start, Wake, RouterLoad)):
            assert s.service in ends_awake, f"{s.describe()} but {s.service} ends {sim.services[s.service].state.value}"
    # nothing kept is taken down, unless it is restarted
    for k in plan.keep:
        assert sim.services[k].state in AWAKE, f"{k} is kept but ends {sim.services[k].state.value}: {[x.describe() for x in plan.steps]}"
    # every started unit is the catalog's
    if rendered is not None:
        for s in plan.steps:
            if isinstance(s, Start) and s.unit in seen.unit_files:
                assert sim.files[s.unit].installed and sim.files[s.unit].digest == rendered[s.unit].digest, s.describe()
    return sim


def steps_text(plan: Plan) -> str:
    return "\n".join(f"  {s.describe()}" for s in plan.steps)


def refused_or(fn: Any) -> Plan | None:
    try:
        return fn()
    except PlanRefused as e:
        assert "nothing was changed" in str(e)
        return None


# -- the properties on data -------------------------------------------------------------------------

@st.composite
def switch_cases(draw: Any) -> tuple[Catalog, Observed, dict[str, RenderedUnit] | None, str, Policy]:
    cat, seen, rendered = draw(cases())
    policy = Policy(quiesce_s=draw(st.sampled_from([0.0, 2.0])), keep_warm=draw(st.sampled_from(["sleep", "stop"])))
    return cat, seen, rendered, draw(st.sampled_from(sorted(cat.modes))), policy


@st.composite
def service_cases(draw: Any) -> tuple[Catalog, Observed, dict[str, RenderedUnit] | None, ServiceOp]:
    cat, seen, rendered = draw(cases())
    action = draw(st.sampled_from(["start", "stop", "restart", "sleep", "wake"]))
    return cat, seen, rendered, ServiceOp(action, draw(st.sampled_from(sorted(cat.presets))), quiesce=False)


def one_vllm(state: SvcState, vram: int, unit_file: UnitFile) -> tuple[Catalog, Observed, dict[str, RenderedUnit]]:
    """Regression cases: one vLLM service ``s0`` in mode ``m0``, observed in ``state``."""
    p = Preset("s0", "s0", Driver.VLLM, 8000, 4000, supports_sleep=True, sleep_mode=SleepMode.L1)
    cat = Catalog({"s0": p}, {"m0": Mode("m0", "m0", services=(ModeService("s0"),)), "blank": Mode("blank", "blank")})
    o = svc_obs(p, state, vram, 1, state in AWAKE or state is S, False)
    gpu = GpuFacts("test", (Gpu(0, "RTX 4090", GPU_MB, vram, GPU_MB - vram),))
    seen = Observed("h", {"s0": o}, gpu, MemInfo(65536, 64000), ModeRecord("m0"), "systemd", True,
                    unit_files={p.unit: unit_file}, boot_time=BOOT)
    return cat, seen, rendered_for(cat)


# a target service still loading under a unit that changed since it started was awaited, then
# restarted by the next switch: a switch did not converge in one run
STARTING_STALE = one_vllm(STARTING, 1000, UnitFile("gpumod-s0.service", True, "old", BOOT - 10.0))



def two_router_models_listed_backwards(models_max: int = 2) -> tuple[Catalog, Observed, None]:
    """Two models of one llama.cpp router (``--models-max models_max``), both down, in a mode that
    lists the second first."""
    ps = [Preset(s, s, Driver.LLAMACPP, 7001, 3000, supports_sleep=True, sleep_mode=SleepMode.ROUTER, router="ra",
                 unit_vars={"models_max": models_max}) for s in ("s0", "s1")]
    cat = Catalog({p.id: p for p in ps}, {"m0": Mode("m0", "m0", services=(ModeService("s1"), ModeService("s0")))})
    gpu = GpuFacts("test", (Gpu(0, "RTX 4090", GPU_MB, 0, GPU_MB),))
    seen = Observed("h", {p.id: svc_obs(p, ST, 0, None, False, False) for p in ps}, gpu, MemInfo(65536, 64000),
                    ModeRecord(None), "supervisor", True, boot_time=BOOT)
    return cat, seen, None


@PROPERTY
@example((*STARTING_STALE, "m0", Policy()))
# the second model was loaded into its router before the router unit was started (for the first)
@example((*two_router_models_listed_backwards(), "m0", Policy()))
# both models of a --models-max 1 router in one mode: the router evicted the first when the second loaded
@example((*two_router_models_listed_backwards(models_max=1), "m0", Policy()))
@given(switch_cases())
def test_every_switch_plan_fits_keeps_dependency_order_and_converges(case):
    cat, seen, rendered, mode_id, policy = case
    mode = cat.modes[mode_id]
    plan = refused_or(lambda: plan_switch(cat, seen, mode, policy, rendered))
    if plan is None:
        return
    sim = check_plan(cat, seen, rendered, plan, policy, must_fit=True)
    assert awake_after(sim) == set(mode.service_ids), steps_text(plan)
    if not mode.service_ids:  # blank frees all the VRAM gpumod holds
        assert sim.used() == seen.external_mb, steps_text(plan)
    for sid in mode.service_ids:
        assert deps_closure(cat, sid) <= awake_after(sim)
    again = plan_switch(cat, sim.observed(), mode, policy, rendered)
    assert again.steps == (), f"planned again after\n{steps_text(plan)}\ngives\n{steps_text(again)}"



def test_a_mode_with_more_models_of_a_router_than_its_models_max_is_refused_before_anything_changes():
    """A router at ``--models-max`` evicts its least recently used model when another loads, so a mode
    needing both models of a ``--models-max 1`` router can never be reached: refused, naming the limit
    (the simulated host's switch loaded both, and the router evicted the first). Two fit at 2 or 0."""
    cat, seen, _ = two_router_models_listed_backwards(models_max=1)
    try:
        plan_switch(cat, seen, cat.modes["m0"], Policy())
    except PlanRefused as e:
        assert "--models-max 1" in str(e) and "(s1, s0)" in str(e) and "nothing was changed" in str(e), str(e)
    else:
        raise AssertionError("a mode needing two models of a --models-max 1 router was planned")
    for limit in (2, 0):
        cat, seen, _ = two_router_models_listed_backwards(models_max=limit)
        plan = plan_switch(cat, seen, cat.modes["m0"], Policy())
        assert sorted(s.service for s in plan.steps if isinstance(s, RouterLoad)) == ["s0", "s1"], steps_text(plan)
    # loading a second model with service.start is refused the same way
    cat, seen, _ = one_of_two_router_models_up(models_max=1)
    try:
        plan_service(cat, seen, ServiceOp("start", "s1"), Policy())
    except PlanRefused as e:
        assert "--models-max 1" in str(e), str(e)
    else:
        raise AssertionError("service.start loaded a second model into a --models-max 1 router")


def dependent_pair(dep: SvcState, dependent: SvcState) -> tuple[Catalog, Observed, None]:
    """``s1`` depends on ``s0`` (two custom servers of 2000 MB), observed in the given states."""
    ps = [Preset("s0", "s0", Driver.FASTAPI, 8000, 2000), Preset("s1", "s1", Driver.FASTAPI, 8001, 2000, depends_on=("s0",))]
    cat = Catalog({p.id: p for p in ps}, {"m0": Mode("m0", "m0", services=(ModeService("s0"), ModeService("s1")))})
    states = {"s0": dep, "s1": dependent}
    services = {p.id: svc_obs(p, states[p.id], 1500 if states[p.id] in AWAKE else 0, None, states[p.id] in AWAKE, False)
                for p in ps}
    used = sum(o.vram_mb for o in services.values())
    gpu = GpuFacts("test", (Gpu(0, "RTX 4090", GPU_MB, used, GPU_MB - used),))
    return cat, Observed("h", services, gpu, MemInfo(65536, 64000), ModeRecord("m0"), "supervisor", True, boot_time=BOOT), None



def router_model_on_its_peer() -> tuple[Catalog, Observed, None]:
    """``s1`` depends on ``s0``; both are models of one llama.cpp router (``--models-max 2``), which is down."""
    ps = [Preset("s0", "s0", Driver.LLAMACPP, 7001, 3000, supports_sleep=True, sleep_mode=SleepMode.ROUTER, router="ra",
                 unit_vars={"models_max": 2}),
          Preset("s1", "s1", Driver.LLAMACPP, 7001, 3000, supports_sleep=True, sleep_mode=SleepMode.ROUTER, router="ra",
                 depends_on=("s0",), unit_vars={"models_max": 2})]
    cat = Catalog({p.id: p for p in ps}, {"m0": Mode("m0", "m0", services=(ModeService("s0"), ModeService("s1")))})
    gpu = GpuFacts("test", (Gpu(0, "RTX 4090", GPU_MB, 0, GPU_MB),))
    seen = Observed("h", {p.id: svc_obs(p, ST, 0, None, False, False) for p in ps}, gpu, MemInfo(65536, 64000),
                    ModeRecord(None), "supervisor", True, boot_time=BOOT)
    return cat, seen, None



def two_router_models_up() -> tuple[Catalog, Observed, None]:
    """Two models of one llama.cpp router (``--models-max 2``), both loaded."""
    ps = [Preset(s, s, Driver.LLAMACPP, 7001, 3000, supports_sleep=True, sleep_mode=SleepMode.ROUTER, router="ra",
                 unit_vars={"models_max": 2}) for s in ("s0", "s1")]
    cat = Catalog({p.id: p for p in ps}, {"m0": Mode("m0", "m0", services=(ModeService("s0"), ModeService("s1")))})
    gpu = GpuFacts("test", (Gpu(0, "RTX 4090", GPU_MB, 6000, GPU_MB - 6000),))
    seen = Observed("h", {p.id: svc_obs(p, R, 3000, None, True, False) for p in ps}, gpu, MemInfo(65536, 64000),
                    ModeRecord("m0"), "supervisor", True, boot_time=BOOT)
    return cat, seen, None


def router_model_and_its_dependent_up() -> tuple[Catalog, Observed, None]:
    """``s1`` depends on ``s0``; both are loaded models of one llama.cpp router (``--models-max 2``)."""
    ps = [Preset("s0", "s0", Driver.LLAMACPP, 7001, 3000, supports_sleep=True, sleep_mode=SleepMode.ROUTER, router="ra",
                 unit_vars={"models_max": 2}),
          Preset("s1", "s1", Driver.LLAMACPP, 7001, 3000, supports_sleep=True, sleep_mode=SleepMode.ROUTER, router="ra",
                 depends_on=("s0",), unit_vars={"models_max": 2})]
    cat = Catalog({p.id: p for p in ps}, {"m0": Mode("m0", "m0", services=(ModeService("s0"), ModeService("s1")))})
    gpu = GpuFacts("test", (Gpu(0, "RTX 4090", GPU_MB, 6000, GPU_MB - 6000),))
    seen = Observed("h", {p.id: svc_obs(p, R, 3000, None, True, False) for p in ps}, gpu, MemInfo(65536, 64000),
                    ModeRecord("m0"), "supervisor", True, boot_time=BOOT)
    return cat, seen, None


def one_of_two_router_models_up(models_max: int) -> tuple[Catalog, Observed, None]:
    """Two models of one llama.cpp router (``--models-max models_max``): ``s0`` loaded, ``s1`` unloaded."""
    ps = [Preset(s, s, Driver.LLAMACPP, 7001, 3000, supports_sleep=True, sleep_mode=SleepMode.ROUTER, router="ra",
                 unit_vars={"models_max": models_max}) for s in ("s0", "s1")]
    cat = Catalog({p.id: p for p in ps}, {"m0": Mode("m0", "m0", services=(ModeService("s0"),))})
    gpu = GpuFacts("test", (Gpu(0, "RTX 4090", GPU_MB, 3000, GPU_MB - 3000),))
    seen = Observed("h", {"s0": svc_obs(ps[0], R, 3000, None, True, False), "s1": svc_obs(ps[1], S, 0, 0, True, False)},
                    gpu, MemInfo(65536, 64000), ModeRecord("m0"), "supervisor", True, boot_time=BOOT)
    return cat, seen, None


@PROPERTY
# loading a second model into a --models-max 1 router: the router would evict the first
@example((*one_of_two_router_models_up(models_max=1), ServiceOp("start", "s1")))
# a second service.stop of a model unloaded from a router that serves another unloaded it again
@example((*two_router_models_up(), ServiceOp("stop", "s0")))
# stopping a router model and its dependent on the same router unloaded both, each "kept up for the
# other": the router stayed up with nothing loaded, and the next plan stopped it
@example((*router_model_and_its_dependent_up(), ServiceOp("stop", "s0")))
# the router unit was started twice: once for the dependency, once again for the service
@example((*router_model_on_its_peer(), ServiceOp("start", "s1")))
# a restart started the service while what it depends on was stopped (service.start brings it up)
@example((*dependent_pair(ST, R), ServiceOp("restart", "s1")))
# both unhealthy: the dependency was stopped and started again while its dependent still ran, and each
# release wait expected a figure the GPU could not reach once the first had started again
@example((*dependent_pair(U, U), ServiceOp("start", "s1")))
@given(service_cases())
def test_every_service_plan_fits_keeps_dependency_order_and_converges(case):
    cat, seen, rendered, op = case
    sid, action = op.service, op.action
    policy = Policy()
    plan = refused_or(lambda: plan_service(cat, seen, op, policy, rendered))
    if plan is None:
        return
    sim = check_plan(cat, seen, rendered, plan, policy, must_fit=action in ("start", "wake", "restart"))
    up = awake_after(sim)
    if any(isinstance(s, ARRIVE) and s.service == sid for s in plan.steps):
        assert sid in up and deps_closure(cat, sid) <= up, f"{op.describe()}: {steps_text(plan)}"
    if action == "stop" and plan.steps:
        assert sid not in up and not any(sid in deps_closure(cat, p) for p in up), f"{op.describe()}: {steps_text(plan)}"
    if action == "restart":
        return  # a restart acts every time it is asked
    again = plan_service(cat, sim.observed(), op, policy, rendered)
    assert again.steps == (), f"planned again after\n{steps_text(plan)}\ngives\n{steps_text(again)}"


# -- the real version: the simulated host ----------------------------------------------------------

def preset_yaml(p: Preset, port: int) -> str:
    lines = [f"id: {p.id}", f"name: {p.id} service", f"driver: {p.driver.value}", f"port: {port}", f"vram_mb: {p.vram_mb}",
             f"model_size_mb: {p.model_size_mb}", "startup_timeout: 20",
             f"supports_sleep: {'true' if p.supports_sleep else 'false'}", f"sleep_mode: {p.sleep_mode.value}"]
    if p.sleep_vram_mb is not None:
        lines.append(f"sleep_vram_mb: {p.sleep_vram_mb}")
    if p.depends_on:
        lines.append(f"depends_on: [{', '.join(p.depends_on)}]")
    if p.router:
        lines.append(f"router: {p.router}")
    if "models_max" in p.unit_vars:
        lines += ["unit_vars:", f"  models_max: {p.unit_vars['models_max']}"]
    if p.driver is Driver.FASTAPI:
        lines += ["unit_vars:", f"  command: [python, -m, {p.id}]"]
    if p.docker is not None:
        lines += ["docker:", f"  image: {p.docker.image}"]
    return "\n".join(lines) + "\n"


def write_catalog(root: Path, cat: Catalog) -> None:
    """The catalog as the YAML files an operator writes, on free ports (a router's models share one)."""
    for sub in ("presets/gen", "modes", "inventory"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "templates", root / "templates", dirs_exist_ok=True)
    keys = sorted({p.router or p.id for p in cat.presets.values()})
    port = dict(zip(keys, free_ports(len(keys))))
    for p in cat.presets.values():
        (root / "presets" / "gen" / f"{p.id}.yaml").write_text(preset_yaml(p, port[p.router or p.id]))
    for m in cat.modes.values():
        body = "".join(f"  - {s}\n" for s in m.service_ids)
        (root / "modes" / f"{m.id}.yaml").write_text(f"id: {m.id}\nname: {m.id}\nservices:{' []' if not body else ''}\n{body}")
    (root / "inventory" / "hosts.yaml").write_text(
        "hosts:\n  local:\n    connection: local\n    sim: true\n"
        f"    gpu: {{name: NVIDIA GeForce RTX 4090, total_mb: {GPU_MB}}}\n"
        "    sim_timings: {load_s: 0.05, wake_l1_s: 0.02, wake_l2_s: 0.05, release_lag_s: 0.05}\n"
        "    release_timeout_s: 10\n")


def cli_json(*argv: str) -> tuple[int, dict[str, Any] | None, str]:
    code, out, err = run_cli(list(argv))
    return code, (json.loads(out) if out.strip().startswith("{") else None), err + out


@st.composite
def real_cases(draw: Any) -> tuple[Catalog, list[str]]:
    cat = draw(catalogs(max_presets=4, max_vram=9000))
    return cat, draw(st.lists(st.sampled_from(sorted(m for m in cat.modes if m != "blank")), min_size=1, max_size=2))


def status_json() -> dict[str, Any]:
    code, st_, out = cli_json("status", "--json")
    assert code == 0 and st_ is not None, out
    return st_


def gpu_used_settles_at_zero() -> dict[str, Any]:
    deadline = time.monotonic() + 3.0
    while True:
        st_ = status_json()
        if st_["gpu"]["used_mb"] == 0 or time.monotonic() > deadline:
            return st_
        time.sleep(0.05)


@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                              HealthCheck.function_scoped_fixture])
@given(case=real_cases())
def test_switches_on_the_simulated_host_converge_stay_in_budget_and_blank_frees_everything(case, tmp_path_factory,
                                                                                          monkeypatch):
    """One or two switches between generated modes (stand-ins, supervisor, ledger); after each, the
    same switch as a dry run has no step and the ledger is within budget; then blank frees all VRAM."""
    cat, mode_ids = case
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("GPUMOD_HOME", str(home))
    monkeypatch.setenv("GPUMOD_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("COLUMNS", "160")
    write_catalog(home, cat)
    try:
        for mode_id in mode_ids:
            before = status_json()
            code, rep, out = cli_json("mode.switch", "--json", "--name", mode_id)
            if code != 0:  # refused at plan time (it does not fit, or host RAM): nothing was touched
                assert "nothing was changed" in out, out
                after = status_json()
                assert ([(s["id"], s["state"]) for s in after["services"]] == [(s["id"], s["state"]) for s in before["services"]]
                        and after["gpu"]["used_mb"] == before["gpu"]["used_mb"]), out
                continue
            code, dry, out = cli_json("mode.switch", "--dry-run", "--json", "--name", mode_id)
            assert code == 0 and dry is not None and dry["steps"] == [], out
            st_ = status_json()
            gpu = st_["gpu"]
            assert gpu["used_mb"] <= gpu["total_mb"] - Policy().reserve_mb, gpu
            assert gpu["used_mb"] == sum(s["vram_mb"] for s in st_["services"]), st_["services"]
            running = {s["id"] for s in st_["services"] if s["state"] == "running"}
            assert running == set(cat.modes[mode_id].service_ids), st_["services"]
        code, rep, out = cli_json("mode.switch", "--json", "--name", "blank")
        assert code == 0, out
        st_ = gpu_used_settles_at_zero()
        assert st_["gpu"]["used_mb"] == 0, st_
        assert {s["state"] for s in st_["services"]} <= {"stopped"}, st_["services"]
    finally:
        code, _, out = run_cli(["sim.reset"])
        assert code == 0, out


def test_two_models_of_one_router_in_a_mode_on_the_simulated_host(tmp_path, monkeypatch):
    """Found by the property above: models ``s2`` and ``s3`` of router ``ra`` in one mode. At
    ``--models-max 1`` the stand-in router (as the real one) evicted ``s2`` when ``s3`` loaded, so the
    switch ended with ``s2`` unloaded; now it is refused and nothing changes. At 2 both run, the same
    switch again has no step, and blank frees everything."""
    for limit in (1, 2):
        ps = {s: Preset(s, s, Driver.LLAMACPP, 7001, 2000, supports_sleep=True, sleep_mode=SleepMode.ROUTER,
                        router="ra", unit_vars={"models_max": limit}) for s in ("s2", "s3")}
        cat = Catalog(ps, {"blank": Mode("blank", "blank"),
                           "m0": Mode("m0", "m0", services=(ModeService("s2"), ModeService("s3")))})
        home = tmp_path / f"home{limit}"
        monkeypatch.setenv("GPUMOD_HOME", str(home))
        monkeypatch.setenv("GPUMOD_STATE_DIR", str(tmp_path / f"state{limit}"))
        monkeypatch.setenv("COLUMNS", "160")
        write_catalog(home, cat)
        try:
            before = status_json()
            code, _, out = cli_json("mode.switch", "--json", "--name", "m0")
            if limit == 1:
                assert code != 0 and "--models-max 1" in out and "nothing was changed" in out, out
                after = status_json()
                assert ([(s["id"], s["state"]) for s in after["services"]] == [(s["id"], s["state"]) for s in before["services"]]
                        and after["gpu"]["used_mb"] == 0), after
                continue
            assert code == 0, out
            st_ = status_json()
            assert {s["id"]: s["state"] for s in st_["services"]} == {"s2": "running", "s3": "running"}, st_["services"]
            assert st_["gpu"]["used_mb"] == 4000, st_["gpu"]
            code, dry, out = cli_json("mode.switch", "--dry-run", "--json", "--name", "m0")
            assert code == 0 and dry is not None and dry["steps"] == [], out
            code, _, out = cli_json("mode.switch", "--json", "--name", "blank")
            assert code == 0, out
            assert gpu_used_settles_at_zero()["gpu"]["used_mb"] == 0
        finally:
            code, _, out = run_cli(["sim.reset"])
            assert code == 0, out
