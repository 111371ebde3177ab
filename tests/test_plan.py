"""The planners on data: a catalog built here, observed facts in, steps out (no host, no fakes)."""

from __future__ import annotations

import pytest

from gpumod_tasks.catalog.model import Catalog, Driver, Mode, ModeService, Preset, SleepMode
from gpumod_tasks.errors import PlanRefused
from gpumod_tasks.facts.gpu import Gpu, GpuFacts
from gpumod_tasks.facts.meminfo import MemInfo
from gpumod_tasks.facts.units import UnitState
from gpumod_tasks.observed import Observed, RenderedUnit, ServiceObs, SvcState, UnitFile
from gpumod_tasks.plan import (
    AwaitHealthy,
    DaemonReload,
    InstallUnit,
    Policy,
    Quiesce,
    Record,
    ResetFailed,
    RouterLoad,
    RouterUnload,
    ServiceOp,
    Sleep,
    Start,
    Stop,
    WaitRelease,
    Wake,
    plan_refresh,
    plan_service,
    plan_switch,
)
from gpumod_tasks.plan.fitcheck import refuse_unless_ram
from gpumod_tasks.plan.order import dependents_of, topo_order, with_dependencies
from gpumod_tasks.plan.sleep_level import choose_sleep_level
from gpumod_tasks.plan.unitfiles import install_steps, stale_reason
from gpumod_tasks.state import ModeRecord

R, S, ST, U = SvcState.RUNNING, SvcState.SLEEPING, SvcState.STOPPED, SvcState.UNHEALTHY
GPU_MB = 24564


def vllm(sid: str, port: int, vram: int, level: str = "l1", model_mb: int = 1000, residual: int = 512) -> Preset:
    return Preset(sid, sid, Driver.VLLM, port, vram, model_size_mb=model_mb, supports_sleep=level != "none",
                  sleep_mode=SleepMode(level), sleep_vram_mb=residual if level != "none" else None)


def router(sid: str, port: int, vram: int, model_mb: int = 1000) -> Preset:
    return Preset(sid, sid, Driver.LLAMACPP, port, vram, model_size_mb=model_mb, supports_sleep=True,
                  sleep_mode=SleepMode.ROUTER, router="code")


def fastapi(sid: str, port: int, vram: int = 1000, deps: tuple[str, ...] = ()) -> Preset:
    return Preset(sid, sid, Driver.FASTAPI, port, vram, depends_on=deps)


def mode(mid: str, *ids: str) -> Mode:
    return Mode(mid, mid, services=tuple(ModeService(i) for i in ids))


@pytest.fixture
def cat() -> Catalog:
    presets = [vllm("emb", 9001, 2500, model_mb=1200), vllm("chat", 9002, 12000, model_mb=5800), vllm("hyde", 9003, 6000, "l2"),
               router("code", 9004, 19100, model_mb=14300), router("lite", 9004, 9000), fastapi("tts", 9005, 3000),
               vllm("big", 9006, 22500, "none"), fastapi("db", 9007), fastapi("api", 9008, deps=("db",)),
               fastapi("ui", 9009, deps=("api",))]
    modes = [mode("rag", "emb", "chat"), mode("code", "emb", "code"), mode("lite", "emb", "lite"), mode("big", "big"),
             mode("blank"), mode("full", "ui", "api", "db"), mode("speak", "tts", "hyde")]
    return Catalog({p.id: p for p in presets}, {m.id: m for m in modes})


def obs(cat: Catalog, states: dict[str, tuple[SvcState, int]] | None = None, *, mode: str | None = None,
        used: int | None = None, mem_mb: int | None = 64000, levels: dict[str, int] | None = None,
        external: dict[int, int] | None = None, manager: str = "supervisor", failed_units: tuple[str, ...] = (),
        unit_files: dict[str, UnitFile] | None = None, started_mono_us: int = 1_000_000, boot: float = 0.0,
        failure: dict | None = None) -> Observed:
    states = states or {}
    services = {}
    for sid, p in cat.presets.items():
        st, vram = states.get(sid, (ST, 0))
        running = st in (R, S, SvcState.STARTING, U)
        if p.router:  # a router's unit runs when any of its models is up
            running = running or any(states.get(q.id, (ST, 0))[0] in (R, S, SvcState.STARTING, U) for q in cat.unit_peers(p))
        active = "failed" if p.unit in failed_units else ("active" if running else "inactive")
        unit = UnitState(p.unit, "loaded", active, "running" if running else "dead", 100 if running else 0,
                         started_mono_us=started_mono_us if running else 0)
        lvl = ((levels or {}).get(sid, p.sleep_mode.level) if st is S else None)
        if st is S and p.sleep_mode is SleepMode.ROUTER:
            lvl = 0
        services[sid] = ServiceObs(sid, st, unit, None, lvl, vram)
    total_used = used if used is not None else sum(v for _, v in states.values()) + sum((external or {}).values())
    gpu = GpuFacts("test", (Gpu(0, "RTX 4090", GPU_MB, total_used, GPU_MB - total_used),))
    mem = MemInfo(65536, mem_mb) if mem_mb is not None else None
    return Observed("h", services, gpu, mem, ModeRecord(mode, failure=failure or {}), manager, True,
                    unmapped_pids=external or {}, unit_files=unit_files or {}, boot_time=boot)


def kinds(plan) -> list[tuple[str, str]]:
    return [(s.kind, getattr(s, "service", "") or getattr(s, "unit", "") or (getattr(s, "mode", "") or "")) for s in plan.steps]


# -- switches ------------------------------------------------------------------------------------

def test_code_to_rag_unloads_the_router_model_and_wakes_chat(cat):
    seen = obs(cat, {"emb": (R, 2500), "code": (R, 19100), "chat": (S, 512)}, mode="code")
    plan = plan_switch(cat, seen, cat.modes["rag"], Policy())
    assert kinds(plan) == [("router-unload", "code"), ("wait-release", ""), ("wake", "chat"), ("record", "rag")]
    assert plan.steps[1].expected_used_mb == 2500 + 512
    assert plan.keep == ("emb",)
    assert "router stays up" in plan.steps[0].describe()


def test_converged_switch_is_empty_and_says_why(cat):
    plan = plan_switch(cat, obs(cat, {"emb": (R, 2500), "chat": (R, 12000)}, mode="rag"), cat.modes["rag"], Policy())
    assert plan.converged and plan.steps == () and "already running" in plan.nothing_to_do


def test_a_recorded_failure_is_cleared_by_a_record_step_even_when_converged(cat):
    seen = obs(cat, {"emb": (R, 2500), "chat": (R, 12000)}, mode="rag", failure={"operation": "switch to rag"})
    assert kinds(plan_switch(cat, seen, cat.modes["rag"], Policy())) == [("record", "rag")]


def test_drift_relaunches_even_when_recorded_mode_is_the_target(cat):
    plan = plan_switch(cat, obs(cat, {"emb": (R, 2500)}, mode="rag"), cat.modes["rag"], Policy())
    assert kinds(plan) == [("start", "chat"), ("record", "rag")]
    assert plan.relaunched == ("chat",)
    assert plan.steps[0].ram_needed_mb == int(5800 * 1.1 + 1024 + 0.999)


def test_dependencies_start_first_and_stop_last(cat):
    up = plan_switch(cat, obs(cat), cat.modes["full"], Policy())
    assert [s.service for s in up.steps if isinstance(s, Start)] == ["db", "api", "ui"]
    down = plan_switch(cat, obs(cat, {"db": (R, 1000), "api": (R, 1000), "ui": (R, 1000)}, mode="full"), cat.modes["blank"], Policy())
    assert [s.service for s in down.steps if isinstance(s, Stop)] == ["ui", "api", "db"]
    assert isinstance(down.steps[-1], Record)


def test_sleep_level_rule_downgrades_l1_to_l2_and_says_why(cat):
    seen = obs(cat, {"emb": (R, 2500), "chat": (R, 12000)}, mode="rag", mem_mb=4000)
    plan = plan_switch(cat, seen, cat.modes["speak"], Policy())
    sleeps = {s.service: s for s in plan.steps if isinstance(s, Sleep)}
    # emb (1200 MB of weights) fits in RAM at L1; then 4000 - 1200 = 2800 MB are left for chat's 5800
    assert (sleeps["emb"].level, sleeps["chat"].level) == (1, 2)
    assert "MemAvailable left 2800 MB < 5800 x 1.1 + 1024 = 7404 MB" in sleeps["chat"].note and plan.notes
    roomy = plan_switch(cat, obs(cat, {"emb": (R, 2500), "chat": (R, 12000)}, mode="rag", mem_mb=40000), cat.modes["speak"], Policy())
    assert [s.level for s in roomy.steps if isinstance(s, Sleep)] == [1, 1]


def test_refused_when_the_mode_does_not_fit_with_alternatives(cat):
    with pytest.raises(PlanRefused) as ei:
        plan_switch(cat, obs(cat, external={999: 6000}), cat.modes["big"], Policy())
    assert "mode big does not fit: 28500 MB > 24564 MB - 512 MB reserve = 24052 MB (over by 4448 MB); nothing was changed" in str(ei.value)
    assert any("other GPU processes: 6000 MB (pids 999)" in ln for ln in ei.value.details())
    assert "alternatives:" in ei.value.details()


def test_sleeping_residuals_are_stopped_largest_first_to_make_room(cat):
    seen = obs(cat, {"emb": (S, 512), "chat": (S, 512), "hyde": (S, 512)})
    cat.presets["hyde"] = vllm("hyde", 9003, 6000, "l2", residual=900)
    plan = plan_switch(cat, seen, cat.modes["big"], Policy())
    assert [s.service for s in plan.steps if isinstance(s, Stop)] == ["hyde"]  # 22500 + 2 x 512 <= 24052
    assert plan.projected_mb == 22500 + 1024 <= plan.budget_mb


def test_unhealthy_target_restarts_and_a_heavy_stop_quiesces(cat):
    seen = obs(cat, {"emb": (U, 2500), "big": (R, 22500)}, mode="big")
    plan = plan_switch(cat, seen, cat.modes["rag"], Policy(quiesce_s=5, quiesce_threshold_mb=8000))
    assert {k for k in kinds(plan)[:2]} == {("stop", "emb"), ("stop", "big")}
    assert isinstance(plan.steps[2], WaitRelease) and plan.steps[2].expected_used_mb == 0
    assert isinstance(plan.steps[3], Quiesce) and plan.steps[3].seconds == 5
    assert plan.relaunched == ("emb",)


def test_sleeping_target_wakes_at_its_recorded_level(cat):
    seen = obs(cat, {"emb": (R, 2500), "hyde": (S, 512)}, levels={"hyde": 2})
    plan = plan_switch(cat, seen, cat.modes["speak"], Policy())
    assert [(w.service, w.level) for w in plan.steps if isinstance(w, Wake)] == [("hyde", 2)]


def test_router_peer_swap_unloads_one_model_and_loads_the_other_into_the_running_router(cat):
    seen = obs(cat, {"emb": (R, 2500), "code": (R, 19100), "lite": (S, 0)}, mode="code")
    plan = plan_switch(cat, seen, cat.modes["lite"], Policy())
    assert kinds(plan) == [("router-unload", "code"), ("wait-release", ""), ("router-load", "lite"), ("record", "lite")]
    assert "stays up for lite" in plan.steps[0].describe()


def test_router_unit_down_starts_the_unit_then_loads_the_model(cat):
    plan = plan_switch(cat, obs(cat, {"emb": (R, 2500)}), cat.modes["code"], Policy())
    assert kinds(plan) == [("start", "code"), ("router-load", "code"), ("record", "code")]
    assert plan.steps[0].router and "router unit gpumod-router-code.service for code" in plan.steps[0].describe()


def test_leaving_router_not_kept_warm_stops_its_unit(cat):
    seen = obs(cat, {"emb": (R, 2500), "code": (R, 19100)}, mode="code")
    plan = plan_switch(cat, seen, cat.modes["rag"], Policy(keep_warm="stop"))
    stops = [s for s in plan.steps if isinstance(s, Stop)]
    assert [(s.service, s.unit) for s in stops] == [("code", "gpumod-router-code.service")]


def test_failed_unit_is_reset_before_start_under_systemd_only(cat):
    seen = obs(cat, {"emb": (R, 2500)}, manager="systemd", failed_units=("gpumod-chat.service",))
    seen.services["chat"] = ServiceObs("chat", SvcState.FAILED, seen.services["chat"].unit)
    plan = plan_switch(cat, seen, cat.modes["rag"], Policy())
    assert kinds(plan)[:2] == [("reset-failed", "gpumod-chat.service"), ("start", "chat")]
    sup = obs(cat, {"emb": (R, 2500)}, manager="supervisor", failed_units=("gpumod-chat.service",))
    assert "reset-failed" not in [k for k, _ in kinds(plan_switch(cat, sup, cat.modes["rag"], Policy()))]


def rendered(cat: Catalog, **digests: str) -> dict[str, RenderedUnit]:
    return {cat.presets[s].unit: RenderedUnit(cat.presets[s].unit, f"unit of {s} {d}", d) for s, d in digests.items()}


def test_missing_unit_is_installed_then_reloaded_before_the_start(cat):
    files = {"gpumod-emb.service": UnitFile("gpumod-emb.service", True, "e1", 1.0),
             "gpumod-chat.service": UnitFile("gpumod-chat.service", False)}
    seen = obs(cat, {"emb": (R, 2500)}, manager="systemd", unit_files=files, boot=100.0)
    plan = plan_switch(cat, seen, cat.modes["rag"], Policy(), rendered(cat, emb="e1", chat="c1"))
    assert kinds(plan) == [("install-unit", "gpumod-chat.service"), ("daemon-reload", ""), ("start", "chat"), ("record", "rag")]
    assert plan.steps[0].body == "unit of chat c1" and not plan.steps[1].idempotent
    sup = obs(cat, {"emb": (R, 2500)}, manager="supervisor", unit_files=files, boot=100.0)
    assert "daemon-reload" not in [k for k, _ in kinds(plan_switch(cat, sup, cat.modes["rag"], Policy(), rendered(cat, emb="e1", chat="c1")))]


def test_edited_preset_of_a_running_service_installs_reloads_and_restarts_it(cat):
    files = {"gpumod-emb.service": UnitFile("gpumod-emb.service", True, "old", 1.0),
             "gpumod-chat.service": UnitFile("gpumod-chat.service", True, "c1", 1.0)}
    seen = obs(cat, {"emb": (R, 2500), "chat": (R, 12000)}, mode="rag", manager="systemd", unit_files=files, boot=100.0)
    plan = plan_switch(cat, seen, cat.modes["rag"], Policy(), rendered(cat, emb="new", chat="c1"))
    assert kinds(plan) == [("install-unit", "gpumod-emb.service"), ("daemon-reload", ""), ("stop", "emb"),
                           ("wait-release", ""), ("start", "emb"), ("record", "rag")]
    assert plan.restarted == ("emb",) and plan.keep == ("chat",)
    assert "preset changed" in plan.steps[2].describe() and plan.steps[3].expected_used_mb == 12000


def test_unit_file_newer_than_the_process_restarts_it_without_an_install(cat):
    # the process started 1 s after boot (t=101); the file was written at t=200
    files = {"gpumod-emb.service": UnitFile("gpumod-emb.service", True, "e1", 200.0),
             "gpumod-chat.service": UnitFile("gpumod-chat.service", True, "c1", 100.5)}
    seen = obs(cat, {"emb": (R, 2500), "chat": (R, 12000)}, mode="rag", unit_files=files, boot=100.0)
    plan = plan_switch(cat, seen, cat.modes["rag"], Policy(), rendered(cat, emb="e1", chat="c1"))
    assert kinds(plan) == [("stop", "emb"), ("wait-release", ""), ("start", "emb"), ("record", "rag")]
    assert "99s after the process started" in plan.steps[0].describe()


def test_ram_preflight_refuses_at_plan_time_before_anything_is_unloaded(cat):
    seen = obs(cat, {"emb": (R, 2500), "chat": (R, 12000)}, mode="rag", mem_mb=9000)
    with pytest.raises(PlanRefused) as ei:
        plan_switch(cat, seen, cat.modes["code"], Policy())
    msg = str(ei.value)
    assert msg.startswith("preflight refused code: MemAvailable") and "nothing was changed" in msg
    assert "14300 x 1.1 + 1024 MB" in msg


def test_ram_preflight_counts_what_l1_sleeps_of_the_same_plan_keep(cat):
    # 22000 MB available, but chat's L1 sleep keeps 5800 of it: 16200 < 14300 x 1.1 + 1024 = 16754
    seen = obs(cat, {"emb": (R, 2500), "chat": (R, 12000)}, mode="rag", mem_mb=22000)
    with pytest.raises(PlanRefused, match=r"MemAvailable 16200 MB \(22000 MB now, - 5800 MB kept by L1 sleeps"):
        plan_switch(cat, seen, cat.modes["code"], Policy())


# -- the pieces, each on its own -------------------------------------------------------------

def test_choose_sleep_level():
    p = vllm("x", 1, 1000, model_mb=2000)
    assert choose_sleep_level(p, 1, None, Policy()).level == 1
    assert choose_sleep_level(p, 1, 10000, Policy()).ram_promised_mb == 2000
    low = choose_sleep_level(p, 1, 3000, Policy())
    assert low.level == 2 and "3000 MB < 2000 x 1.1 + 1024 = 3224 MB" in low.note
    assert choose_sleep_level(p, 2, 10, Policy()).level == 2


def test_order_helpers(cat):
    assert topo_order(cat, ["ui", "api", "db"]) == ["db", "api", "ui"]
    assert with_dependencies(cat, ["ui"]) == ["db", "api", "ui"]
    assert dependents_of(cat, "db") == ["ui", "api"]


def test_ram_check_alone(cat):
    seen = obs(cat, mem_mb=None)
    assert refuse_unless_ram(cat, seen, ["chat"], Policy())[0].startswith("host MemAvailable unknown")
    assert refuse_unless_ram(cat, obs(cat, mem_mb=8000), ["chat"], Policy()) == []
    with pytest.raises(PlanRefused):
        refuse_unless_ram(cat, obs(cat, mem_mb=7000), ["chat"], Policy())


def test_install_steps_and_stale_reason(cat):
    files = {"gpumod-emb.service": UnitFile("gpumod-emb.service", True, "same", 50.0)}
    seen = obs(cat, {"emb": (R, 2500)}, unit_files=files, boot=100.0, manager="systemd")
    r = rendered(cat, emb="same")
    assert install_steps(["gpumod-emb.service"], r, seen) == []
    assert stale_reason(seen, "emb", "gpumod-emb.service", r, Policy()) == ""
    assert stale_reason(seen, "emb", "gpumod-emb.service", rendered(cat, emb="other"), Policy()).startswith("restart:")
    steps = install_steps(["gpumod-emb.service"], rendered(cat, emb="other"), seen)
    assert [type(s) for s in steps] == [InstallUnit, DaemonReload]


# -- single-service operations ------------------------------------------------------------------

def test_service_start_that_does_not_fit_is_refused_with_the_switch_arithmetic(cat):
    seen = obs(cat, {"emb": (R, 2500), "chat": (R, 12000)}, mode="rag")
    with pytest.raises(PlanRefused) as ei:
        plan_service(cat, seen, ServiceOp("start", "big"), Policy())
    assert "service.start big does not fit: 37000 MB > 24564 MB - 512 MB reserve = 24052 MB (over by 12948 MB); nothing was changed" in str(ei.value)
    assert "alternatives:" in ei.value.details()


def test_service_start_alternatives_name_what_would_make_room(cat):
    seen = obs(cat, {"chat": (R, 12000)})
    with pytest.raises(PlanRefused) as ei:
        plan_service(cat, seen, ServiceOp("start", "code"), Policy())
    assert any("sleep chat first (frees 11488 MB)" in ln for ln in ei.value.details())


def test_service_start_brings_up_dependencies_first_and_keeps_the_mode(cat):
    plan = plan_service(cat, obs(cat, mode="rag"), ServiceOp("start", "ui"), Policy())
    assert kinds(plan) == [("start", "db"), ("start", "api"), ("start", "ui"), ("record", "")]
    assert plan.mode == "rag" and plan.steps[-1].mode is None


def test_service_start_of_a_sleeping_service_wakes_it_and_forgets_its_level(cat):
    plan = plan_service(cat, obs(cat, {"hyde": (S, 512)}, levels={"hyde": 2}), ServiceOp("start", "hyde"), Policy())
    assert kinds(plan) == [("wake", "hyde"), ("record", "")]
    assert plan.steps[0].level == 2 and plan.steps[-1].sleep_levels == ()


def test_service_start_already_running_is_an_empty_plan(cat):
    plan = plan_service(cat, obs(cat, {"emb": (R, 2500)}), ServiceOp("start", "emb"), Policy())
    assert plan.steps == () and plan.nothing_to_do == "emb is already running"


def test_service_start_refused_by_ram_and_by_the_quiesce_window(cat):
    with pytest.raises(PlanRefused, match="preflight refused chat"):
        plan_service(cat, obs(cat, mem_mb=3000), ServiceOp("start", "chat"), Policy())
    seen = obs(cat)
    seen = Observed(**{**seen.__dict__, "record": ModeRecord("rag", last_switch={"quiesce_until": 150.0})})
    with pytest.raises(PlanRefused, match="quiescing after a heavy stop, 50.0s remain"):
        plan_service(cat, seen, ServiceOp("start", "chat"), Policy(), now=100.0)
    assert plan_service(cat, seen, ServiceOp("start", "chat", quiesce=False), Policy(), now=100.0).steps


def test_service_stop_takes_dependents_down_first(cat):
    seen = obs(cat, {"db": (R, 1000), "api": (R, 1000), "ui": (R, 1000)})
    plan = plan_service(cat, seen, ServiceOp("stop", "db"), Policy())
    assert kinds(plan) == [("stop", "ui"), ("stop", "api"), ("stop", "db"), ("wait-release", ""), ("record", "")]


def test_service_stop_of_a_router_model_with_a_running_peer_unloads_it(cat):
    seen = obs(cat, {"code": (R, 9000), "lite": (R, 9000)})
    plan = plan_service(cat, seen, ServiceOp("stop", "code"), Policy())
    assert kinds(plan)[0] == ("router-unload", "code")


def test_service_sleep_levels_are_validated(cat):
    seen = obs(cat, {"chat": (R, 12000), "code": (R, 19100)})
    with pytest.raises(PlanRefused, match="sleep level 3 is not one of vLLM's levels 1 and 2"):
        plan_service(cat, seen, ServiceOp("sleep", "chat", level=3), Policy())
    with pytest.raises(PlanRefused, match="llama.cpp router model"):
        plan_service(cat, seen, ServiceOp("sleep", "code", level=1), Policy())
    plan = plan_service(cat, seen, ServiceOp("sleep", "chat", level=2), Policy())
    assert kinds(plan) == [("sleep", "chat"), ("wait-release", ""), ("record", "")]
    assert plan.steps[-1].sleep_levels == (("chat", 2),)
    assert kinds(plan_service(cat, seen, ServiceOp("sleep", "code"), Policy()))[0] == ("router-unload", "code")
    with pytest.raises(PlanRefused, match="cannot sleep"):
        plan_service(cat, obs(cat, {"tts": (R, 3000)}), ServiceOp("sleep", "tts"), Policy())


def test_service_wake_checks_the_fit(cat):
    seen = obs(cat, {"big": (R, 22500), "chat": (S, 512)})
    with pytest.raises(PlanRefused, match="service.wake chat does not fit"):
        plan_service(cat, seen, ServiceOp("wake", "chat"), Policy())


def test_service_restart_stops_waits_and_starts(cat):
    plan = plan_service(cat, obs(cat, {"emb": (R, 2500)}), ServiceOp("restart", "emb"), Policy())
    assert kinds(plan) == [("stop", "emb"), ("wait-release", ""), ("start", "emb"), ("record", "")]
    assert plan.restarted == ("emb",)


# -- refresh (the daemon's reload) ---------------------------------------------------------------

def test_refresh_installs_changed_units_and_restarts_only_running_services_that_use_them(cat):
    files = {p.unit: UnitFile(p.unit, True, "d", 1.0) for p in cat.presets.values()}
    seen = obs(cat, {"emb": (R, 2500), "chat": (S, 512)}, unit_files=files, boot=100.0, manager="systemd")
    r = {u: RenderedUnit(u, "x", "d") for u in files}
    r["gpumod-emb.service"] = RenderedUnit("gpumod-emb.service", "new", "d2")
    r["gpumod-chat.service"] = RenderedUnit("gpumod-chat.service", "new", "d3")
    plan = plan_refresh(cat, seen, Policy(), r)
    ks = kinds(plan)
    assert ("install-unit", "gpumod-emb.service") in ks and ("install-unit", "gpumod-chat.service") in ks
    assert [k for k in ks if k[0] in ("stop", "start")] == [("stop", "emb"), ("start", "emb")]
    assert any("chat: asleep" in n for n in plan.notes)
    assert plan_refresh(cat, seen, Policy(), {u: RenderedUnit(u, "x", "d") for u in files}).steps == ()


def test_awaiting_a_starting_service_is_its_own_step(cat):
    seen = obs(cat, {"emb": (R, 2500), "chat": (SvcState.STARTING, 0)})
    plan = plan_switch(cat, seen, cat.modes["rag"], Policy())
    assert isinstance(plan.steps[0], AwaitHealthy)


def test_every_step_describes_itself(cat):
    steps = [InstallUnit("u", "r", "b"), DaemonReload(("u",)), ResetFailed("u"), Stop("s", "r"), RouterUnload("s", "r"),
             Sleep("s", 1, "r"), WaitRelease(1, 2), Quiesce(1, 2), Wake("s", 2), Start("s", "r"), RouterLoad("s"),
             AwaitHealthy("s"), Record("m"), Record(None)]
    assert len({s.describe() for s in steps}) == len(steps)


def test_blank_stops_everything_sleepers_and_idle_routers_included(cat):
    seen = obs(cat, {"emb": (R, 2500), "chat": (S, 512), "code": (S, 0), "lite": (S, 0)})
    plan = plan_switch(cat, seen, cat.modes["blank"], Policy())
    stops = [s for s in plan.steps if isinstance(s, Stop)]
    assert sorted(s.service for s in stops) == ["chat", "code", "emb"]  # one stop takes the router unit down
    assert plan.sleeping_after == () and not any(isinstance(s, Sleep) for s in plan.steps)
