"""Fit arithmetic, alternatives, and the planner on observed data (no host, no fakes)."""

from __future__ import annotations

import pytest

from gpumod_tasks.errors import PlanRefused
from gpumod_tasks.facts.gpu import Gpu, GpuFacts
from gpumod_tasks.facts.meminfo import MemInfo
from gpumod_tasks.facts.units import UnitState
from gpumod_tasks.fit import simulate, time_share_peak
from gpumod_tasks.observe import Observed, ServiceObs, SvcState
from gpumod_tasks.plan import Policy, Quiesce, Record, Sleep, Start, Stop, WaitRelease, Wake, plan_switch
from gpumod_tasks.state import ModeRecord


def test_rag_fits_with_exact_headroom(repo_catalog):
    c = repo_catalog
    fit = simulate(c, [c.presets[s] for s in c.modes["rag"].service_ids], 24564)
    assert fit.headline() == "Fits: 7500 / 24564 MB (headroom: 17064 MB)"
    assert fit.alternatives == ()


def test_over_budget_alternatives_are_computed_from_the_catalog(repo_catalog):
    c = repo_catalog
    ids = ["vllm-embedding-code", "glm-code", "vllm-embedding"]  # 2500 + 19100 + 5000 = 26600
    fit = simulate(c, [c.presets[s] for s in ids], 24564, 0)
    assert not fit.fits and fit.over_by_mb == 26600 - 24564
    kinds = {a.kind: a for a in fit.alternatives}
    # time-share: residuals 512 + 0 + 512 plus the largest awake delta (19100 - 0)
    assert kinds["time-share"].total_mb == 512 + 0 + 512 + 19100
    assert kinds["time-share"].fits
    # glm-code: 170 MB/1K x 32 K = 5440 MB of KV; one halving saves 2720 MB -> 23880 fits
    rc = kinds["reduce-context"]
    assert "32768 -> 16384" in rc.description and rc.total_mb == 26600 - 2720 and rc.fits
    # swap vllm-embedding (5000) for the smallest same-category preset that fits: vllm-reranker (2000)
    swaps = [a for a in fit.alternatives if a.kind == "swap"]
    assert any("swap vllm-embedding (5000 MB) for vllm-reranker (2000 MB" in a.description and a.total_mb == 23600 for a in swaps)


def test_time_share_needs_two_sleepers(repo_catalog):
    c = repo_catalog
    assert time_share_peak([c.presets["gemma-agent"], c.presets["vllm-embedding"]]) is None


# -- planner --------------------------------------------------------------------------------

def obs(catalog, states: dict[str, tuple[SvcState, int]], *, mode=None, used=None, mem_mb=64000, levels=None, external=None):
    services = {}
    for sid in catalog.presets:
        st, vram = states.get(sid, (SvcState.STOPPED, 0))
        running = st in (SvcState.RUNNING, SvcState.SLEEPING, SvcState.STARTING, SvcState.UNHEALTHY)
        unit = UnitState(catalog.presets[sid].unit, "loaded", "active" if running else "inactive", "running" if running else "dead", 100 if running else 0)
        lvl = (levels or {}).get(sid, catalog.presets[sid].sleep_mode.level) if st is SvcState.SLEEPING else None
        services[sid] = ServiceObs(sid, st, unit, None, lvl, vram)
    total_used = used if used is not None else sum(v for _, v in states.values()) + sum((external or {}).values())
    gpu = GpuFacts("test", (Gpu(0, "RTX 4090", 24564, total_used, 24564 - total_used),))
    return Observed("h", services, gpu, MemInfo(65536, mem_mb), ModeRecord(mode), "supervisor", True, unmapped_pids=external or {})


R, S = SvcState.RUNNING, SvcState.SLEEPING


def kinds(plan):
    return [(s.kind, getattr(s, "service", getattr(s, "mode", ""))) for s in plan.steps]


def test_code_to_rag_sleeps_router_and_wakes_embedding(repo_catalog):
    c = repo_catalog
    seen = obs(c, {"vllm-embedding-code": (R, 2500), "glm-code": (R, 19100), "vllm-embedding": (S, 512)}, mode="code")
    plan = plan_switch(c, seen, c.modes["rag"], Policy())
    assert kinds(plan) == [("sleep", "glm-code"), ("wait-release", ""), ("wake", "vllm-embedding"), ("record", "rag")]
    assert plan.steps[0].level == 0  # router: unload
    assert plan.steps[1].expected_used_mb == 2500 + 19100 + 512 - 19100
    assert plan.keep == ("vllm-embedding-code",)


def test_converged_switch_is_empty(repo_catalog):
    c = repo_catalog
    seen = obs(c, {"vllm-embedding-code": (R, 2500), "vllm-embedding": (R, 5000)}, mode="rag")
    plan = plan_switch(c, seen, c.modes["rag"], Policy())
    assert plan.converged and plan.steps == ()


def test_drift_relaunches_even_when_recorded_mode_is_the_target(repo_catalog):
    c = repo_catalog
    seen = obs(c, {"vllm-embedding-code": (R, 2500)}, mode="rag")
    plan = plan_switch(c, seen, c.modes["rag"], Policy())
    assert kinds(plan) == [("start", "vllm-embedding"), ("record", "rag")]
    assert plan.relaunched == ("vllm-embedding",)


def test_non_sleeping_leavers_stop_and_order_follows_dependencies(tmp_path):
    from gpumod_tasks.catalog import load_catalog

    def preset(sid, port, deps=""):
        return f"id: {sid}\nname: {sid}\ndriver: fastapi\nport: {port}\nvram_mb: 1000\nunit_vars: {{command: [x]}}\n{deps}"
    (tmp_path / "presets/x").mkdir(parents=True)
    (tmp_path / "modes").mkdir()
    (tmp_path / "presets/x/db.yaml").write_text(preset("db", 9001))
    (tmp_path / "presets/x/api.yaml").write_text(preset("api", 9002, "depends_on: [db]\n"))
    (tmp_path / "presets/x/ui.yaml").write_text(preset("ui", 9003, "depends_on: [api]\n"))
    (tmp_path / "modes/full.yaml").write_text("id: full\nname: f\nservices: [ui, api, db]\n")
    (tmp_path / "modes/blank.yaml").write_text("id: blank\nname: b\nservices: []\n")
    c = load_catalog(tmp_path)
    up = plan_switch(c, obs(c, {}), c.modes["full"], Policy())
    assert [s.service for s in up.steps if isinstance(s, Start)] == ["db", "api", "ui"]
    down = plan_switch(c, obs(c, {"db": (R, 1000), "api": (R, 1000), "ui": (R, 1000)}, mode="full"), c.modes["blank"], Policy())
    assert [s.service for s in down.steps if isinstance(s, Stop)] == ["ui", "api", "db"]
    assert isinstance(down.steps[-1], Record)


def test_ram_rule_downgrades_l1_to_l2_and_says_why(repo_catalog):
    c = repo_catalog
    # vllm-chat (L1, model 5800 MB) leaves; only 4000 MB of RAM available
    seen = obs(c, {"vllm-embedding-code": (R, 2500), "vllm-chat": (R, 12000)}, mode="chat", mem_mb=4000)
    plan = plan_switch(c, seen, c.modes["rag"], Policy())
    sl = [s for s in plan.steps if isinstance(s, Sleep)][0]
    assert sl.service == "vllm-chat" and sl.level == 2
    assert "5800 x 1.1 + 1024 = 7404 MB" in sl.note and plan.notes
    roomy = plan_switch(c, obs(c, {"vllm-embedding-code": (R, 2500), "vllm-chat": (R, 12000)}, mode="chat"), c.modes["rag"], Policy())
    assert [s.level for s in roomy.steps if isinstance(s, Sleep)] == [1]


def test_refuses_when_target_does_not_fit_and_lists_alternatives(repo_catalog):
    c = repo_catalog
    # another process holds 6000 MB: hermes-agent (22500) cannot fit in 24564 - 512
    seen = obs(c, {}, external={999: 6000})
    with pytest.raises(PlanRefused) as ei:
        plan_switch(c, seen, c.modes["hermes-agent"], Policy())
    assert "does not fit: 28500 MB > 24564 MB - 512 MB reserve = 24052 MB" in str(ei.value)
    assert any("other GPU processes: 6000 MB" in ln for ln in ei.value.details())


def test_sleeping_residuals_are_stopped_to_make_room(repo_catalog):
    c = repo_catalog
    # four sleepers hold 512 MB each; hermes-agent needs 22500 of 24052
    sleepers = {s: (S, 512) for s in ("vllm-embedding", "vllm-chat", "vllm-hyde", "vllm-reranker")}
    plan = plan_switch(c, obs(c, sleepers), c.modes["hermes-agent"], Policy())
    stops = [s.service for s in plan.steps if isinstance(s, Stop)]
    assert len(stops) == 1  # 22500 + 3 x 512 = 24036 <= 24052
    assert plan.projected_mb <= plan.budget_mb


def test_unhealthy_target_is_restarted_and_quiesce_after_heavy_stop(repo_catalog):
    c = repo_catalog
    seen = obs(c, {"vllm-embedding-code": (SvcState.UNHEALTHY, 2500), "gemma-agent": (R, 20000)}, mode="hermes-agent")
    plan = plan_switch(c, seen, c.modes["rag"], Policy(quiesce_s=5, quiesce_threshold_mb=8000))
    assert kinds(plan)[:3] == [("stop", "vllm-embedding-code"), ("stop", "gemma-agent"), ("wait-release", "")] or \
        kinds(plan)[:3] == [("stop", "gemma-agent"), ("stop", "vllm-embedding-code"), ("wait-release", "")]
    assert any(isinstance(s, Quiesce) and s.seconds == 5 for s in plan.steps)
    assert plan.relaunched == ("vllm-embedding-code",)
    assert isinstance(plan.steps[2], WaitRelease) and plan.steps[2].expected_used_mb == 0


def test_sleeping_target_wakes_with_its_recorded_level(repo_catalog):
    c = repo_catalog
    seen = obs(c, {"vllm-embedding-code": (R, 2500), "vllm-hyde": (S, 512), "vllm-chat": (R, 12000)}, mode="x", levels={"vllm-hyde": 2})
    plan = plan_switch(c, seen, c.modes["chat"], Policy())
    wakes = [s for s in plan.steps if isinstance(s, Wake)]
    assert [(w.service, w.level) for w in wakes] == [("vllm-hyde", 2)]
