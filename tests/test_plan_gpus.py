"""The planners on a box with several GPUs: facts in (two GPUs, per-GPU use), steps and placement out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpumod_tasks.catalog.model import Catalog, Driver, Mode, ModeService, Preset, SleepMode
from gpumod_tasks.errors import PlanRefused
from gpumod_tasks.facts.gpu import Gpu, GpuFacts
from gpumod_tasks.facts.meminfo import MemInfo
from gpumod_tasks.facts.units import UnitState
from gpumod_tasks.observed import Observed, Releasing, ServiceObs, SvcState
from gpumod_tasks.plan import Policy, ServiceOp, WaitRelease, plan_service, plan_switch
from gpumod_tasks.plan.placement import place
from gpumod_tasks.state import ModeRecord

R, S, ST = SvcState.RUNNING, SvcState.SLEEPING, SvcState.STOPPED
TOTAL = 24000
UUIDS = ("GPU-aaaa-0000", "GPU-bbbb-1111")


def vllm(sid: str, port: int, vram: int, **kw) -> Preset:
    return Preset(sid, sid, Driver.VLLM, port, vram, supports_sleep=True, sleep_mode=SleepMode.L1, sleep_vram_mb=1000, **kw)


def plain(sid: str, port: int, vram: int, **kw) -> Preset:
    return Preset(sid, sid, Driver.VLLM, port, vram, **kw)


def catalog(*presets: Preset, modes: dict[str, tuple[str, ...]] | None = None) -> Catalog:
    return Catalog({p.id: p for p in presets},
                   {m: Mode(m, m, services=tuple(ModeService(i) for i in ids)) for m, ids in (modes or {}).items()})


def obs(cat: Catalog, held: dict[str, tuple[SvcState, dict[int, int]]] | None = None, *, n: int = 2,
        foreign: dict[int, tuple[int, int]] | None = None, releasing: tuple[Releasing, ...] = (),
        mode: str | None = None) -> Observed:
    """``held``: service -> (state, GPU index -> MB); ``foreign``: pid -> (GPU index, MB)."""
    held = held or {}
    services = {}
    for sid, p in cat.presets.items():
        st, per = held.get(sid, (ST, {}))
        up = st is not ST
        unit = UnitState(p.unit, "loaded", "active" if up else "inactive", "running" if up else "dead", 100 if up else 0)
        services[sid] = ServiceObs(sid, st, unit, None, 1 if st is S else None, sum(per.values()), gpu_mb=dict(per))
    used = {i: 0 for i in range(n)}
    for _, per in held.values():
        for g, mb in per.items():
            used[g] += mb
    fg: dict[int, int] = {}
    for _pid, (g, mb) in (foreign or {}).items():
        used[g] += mb
        fg[g] = fg.get(g, 0) + mb
    for r in releasing:
        for g, mb in r.gpu_mb.items():
            used[g] += mb
    gpus = tuple(Gpu(i, "RTX 4090", TOTAL, used[i], TOTAL - used[i], uuid=UUIDS[i] if i < 2 else f"GPU-{i}") for i in range(n))
    return Observed("h", services, GpuFacts("test", gpus), MemInfo(65536, 64000), ModeRecord(mode), "supervisor", True,
                    unmapped_pids={pid: mb for pid, (_, mb) in (foreign or {}).items()}, foreign_gpu_mb=fg,
                    releasing=releasing)


def kinds(plan) -> list[tuple[str, str]]:
    return [(s.kind, getattr(s, "service", "") or (getattr(s, "mode", "") or "")) for s in plan.steps]


POLICY = Policy(reserve_mb=0)


def test_two_services_that_do_not_share_a_gpu_are_placed_on_different_gpus():
    cat = catalog(plain("a", 9001, 16000), plain("b", 9002, 14000), modes={"m": ("a", "b")})
    plan = plan_switch(cat, obs(cat), cat.modes["m"], POLICY)
    assert dict(plan.placement) == {"a": (0,), "b": (1,)}
    assert [(g.index, g.projected_mb, g.budget_mb) for g in plan.gpus] == [(0, 16000, 24000), (1, 14000, 24000)]
    assert plan.as_dict()["placement"] == {"a": [0], "b": [1]}
    assert [g["uuid"] for g in plan.as_dict()["gpus"]] == list(UUIDS)


def test_best_fit_fills_the_fuller_gpu_first_and_ties_go_to_the_lowest_index():
    cat = catalog(plain("a", 9001, 16000), plain("small", 9002, 6000), plain("b", 9003, 10000), modes={"m": ("a", "small")})
    # a runs on GPU 1 already: small fits best next to it (least left over), not on the empty GPU 0
    seen = obs(cat, {"a": (R, {1: 16000})})
    assert dict(plan_switch(cat, seen, cat.modes["m"], POLICY).placement) == {"a": (1,), "small": (1,)}
    # two empty GPUs: the lowest index, every time
    for _ in range(3):
        assert place(cat, obs(cat), POLICY, ["b"], []).gpus == {"b": (0,)}


def test_pins_by_index_and_by_uuid_are_honoured():
    cat = catalog(plain("a", 9001, 4000, gpu_pin=("1",)), plain("b", 9002, 4000, gpu_pin=(UUIDS[1],)),
                  plain("c", 9003, 4000), modes={"m": ("a", "b", "c")})
    plan = plan_switch(cat, obs(cat), cat.modes["m"], POLICY)
    assert dict(plan.placement) == {"a": (1,), "b": (1,), "c": (1,)}  # best fit: next to them, GPU 0 stays whole


def test_a_pin_to_a_gpu_the_box_lacks_is_refused():
    cat = catalog(plain("a", 9001, 4000, gpu_pin=("GPU-nothere",)), modes={"m": ("a",)})
    with pytest.raises(PlanRefused, match="a is pinned to GPU GPU-nothere, which this box does not have .*nothing was changed"):
        plan_switch(cat, obs(cat), cat.modes["m"], POLICY)


def test_a_tensor_parallel_service_is_charged_on_both_gpus():
    cat = catalog(plain("tp", 9001, 30000, gpus=2), plain("x", 9002, 8000), modes={"m": ("tp", "x")})
    plan = plan_switch(cat, obs(cat), cat.modes["m"], POLICY)
    assert dict(plan.placement) == {"tp": (0, 1), "x": (0,)}
    assert [g.projected_mb for g in plan.gpus] == [15000 + 8000, 15000]


def test_a_tensor_split_charges_by_its_ratios():
    p = Preset("ll", "ll", Driver.LLAMACPP, 9001, 20000, gpus=2, tensor_split=(3.0, 1.0))
    cat = catalog(p, modes={"m": ("ll",)})
    assert [g.projected_mb for g in plan_switch(cat, obs(cat), cat.modes["m"], POLICY).gpus] == [15000, 5000]


def test_a_running_service_keeps_its_gpu_even_where_best_fit_would_differ():
    cat = catalog(plain("a", 9001, 4000), plain("big", 9002, 21000), modes={"m": ("a", "big")})
    seen = obs(cat, {"a": (R, {1: 4000})})
    plan = plan_switch(cat, seen, cat.modes["m"], POLICY)
    assert dict(plan.placement) == {"a": (1,), "big": (0,)}
    assert plan.keep == ("a",) and kinds(plan) == [("start", "big"), ("record", "m")]


def test_a_changed_pin_moves_a_running_service_with_a_stop_and_a_start():
    cat = catalog(plain("a", 9001, 4000, gpu_pin=("0",)), modes={"m": ("a",)})
    plan = plan_switch(cat, obs(cat, {"a": (R, {1: 4000})}, mode="m"), cat.modes["m"], POLICY)
    assert kinds(plan) == [("stop", "a"), ("wait-release", ""), ("start", "a"), ("record", "m")]
    assert "moves from GPU 1 to GPU 0" in plan.steps[0].describe()
    assert dict(plan.placement) == {"a": (0,)}
    assert plan.steps[1].per_gpu == ((1, 0),)


def test_fits_in_total_but_on_no_single_gpu_is_refused_with_per_gpu_figures():
    cat = catalog(plain("a", 9001, 12000), plain("b", 9002, 16000), plain("new", 9003, 20000), modes={"m": ("a", "b", "new")})
    seen = obs(cat, {"a": (R, {0: 12000}), "b": (R, {1: 16000})})
    with pytest.raises(PlanRefused) as ei:
        plan_switch(cat, seen, cat.modes["m"], POLICY)
    msg = str(ei.value)
    assert msg == ("mode m fits in total (48000 / 48000 MB) but no GPU has 20000 MB for new: GPU0 12000 MB free, "
                   "GPU1 8000 MB free; nothing was changed")
    assert "GPU0 RTX 4090: 32000 MB of 24000 MB (24000 MB - 0 MB reserve): over by 8000 MB" in ei.value.lines


def test_a_refusal_offers_stopping_what_holds_the_needed_gpu():
    cat = catalog(vllm("a", 9001, 12000), plain("b", 9002, 16000), plain("new", 9003, 20000),
                  modes={"m": ("b", "new"), "old": ("a", "b")})
    seen = obs(cat, {"a": (S, {0: 1000}), "b": (R, {1: 16000})})
    # the sleeping a is outside the target: it is stopped to make room (on the GPU new needs)
    plan = plan_switch(cat, seen, cat.modes["m"], Policy(reserve_mb=3500))
    assert ("stop", "a") in kinds(plan) and dict(plan.placement)["new"] == (0,)
    # in the target it must stay: refused, with the way out named
    cat2 = catalog(*cat.presets.values(), modes={"m": ("a", "b", "new")})
    seen2 = obs(cat2, {"a": (R, {0: 12000}), "b": (R, {1: 16000})})
    with pytest.raises(PlanRefused) as ei:
        plan_service(cat2, seen2, ServiceOp("start", "new"), POLICY)
    assert "  fits  sleep a first (frees 11000 MB on GPU0)" in ei.value.lines


def test_a_pinned_service_that_fits_elsewhere_is_offered_another_placement():
    cat = catalog(plain("a", 9001, 20000), plain("p", 9002, 8000, gpu_pin=("0",)), modes={"m": ("a", "p")})
    with pytest.raises(PlanRefused) as ei:
        plan_switch(cat, obs(cat, {"a": (R, {0: 20000})}), cat.modes["m"], POLICY)
    assert "  fits  unpin p (gpu: 0): it fits on GPU1" in ei.value.lines


def test_more_than_the_box_in_total_is_refused_as_before_with_the_gpu_lines():
    cat = catalog(plain("a", 9001, 30000, gpus=2), plain("b", 9002, 20000), modes={"m": ("a", "b")})
    with pytest.raises(PlanRefused, match=r"mode m does not fit: 50000 MB > 48000 MB on 2 GPUs .*over by 2000 MB"):
        plan_switch(cat, obs(cat), cat.modes["m"], POLICY)


def test_foreign_processes_count_on_their_own_gpu():
    cat = catalog(plain("a", 9001, 20000), modes={"m": ("a",)})
    plan = plan_switch(cat, obs(cat, foreign={777: (0, 10000)}), cat.modes["m"], POLICY)
    assert dict(plan.placement) == {"a": (1,)}
    assert [g.budget_mb for g in plan.gpus] == [14000, 24000]


def test_a_sleeping_residual_counts_on_the_gpu_that_holds_it():
    cat = catalog(vllm("s", 9001, 12000), plain("x", 9002, 23500), modes={"m": ("x",), "old": ("s",)})
    seen = obs(cat, {"s": (S, {0: 1000})})
    plan = plan_switch(cat, seen, cat.modes["m"], POLICY)
    assert dict(plan.placement) == {"s": (0,), "x": (1,)}
    assert [g.projected_mb for g in plan.gpus] == [1000, 23500]


def test_the_release_wait_waits_for_each_gpu_the_leaving_services_held():
    cat = catalog(plain("tp", 9001, 30000, gpus=2), plain("c", 9002, 5000), plain("n", 9003, 20000),
                  modes={"old": ("tp", "c"), "new": ("c", "n")})
    seen = obs(cat, {"tp": (R, {0: 15000, 1: 15000}), "c": (R, {0: 5000})}, mode="old")
    plan = plan_switch(cat, seen, cat.modes["new"], POLICY)
    w = next(s for s in plan.steps if isinstance(s, WaitRelease))
    assert w.per_gpu == ((0, 5000), (1, 0))
    assert "GPU0 used <= 5000 MB, GPU1 used <= 0 MB" in w.describe()
    assert dict(plan.placement) == {"c": (0,), "n": (1,)}


def test_a_service_stop_waits_only_for_its_own_gpu():
    cat = catalog(plain("a", 9001, 8000), plain("b", 9002, 8000))
    seen = obs(cat, {"a": (R, {0: 8000}), "b": (R, {1: 8000})})
    w = plan_service(cat, seen, ServiceOp("stop", "b"), POLICY).steps[1]
    assert isinstance(w, WaitRelease) and w.per_gpu == ((1, 0),)


def test_memory_still_releasing_is_awaited_on_its_gpu():
    cat = catalog(plain("a", 9001, 8000))
    rel = Releasing(4242, 9000, "old", {1: 9000})
    plan = plan_service(cat, obs(cat, releasing=(rel,)), ServiceOp("start", "a"), POLICY)
    assert isinstance(plan.steps[0], WaitRelease) and plan.steps[0].per_gpu == ((1, 0),)
    assert "pid 4242 of old (9000 MB)" in plan.steps[0].describe()


def test_a_service_needing_more_gpus_than_the_box_has_is_refused():
    cat = catalog(plain("tp", 9001, 8000, gpus=2), modes={"m": ("tp",)})
    with pytest.raises(PlanRefused, match="tp needs 2 GPUs; this box has 1; nothing was changed"):
        plan_switch(cat, obs(cat, n=1), cat.modes["m"], POLICY)


def test_one_gpu_boxes_place_everything_on_it_and_keep_the_old_arithmetic():
    cat = catalog(plain("a", 9001, 4000), plain("b", 9002, 5000), modes={"m": ("a", "b")})
    plan = plan_switch(cat, obs(cat, n=1), cat.modes["m"], POLICY)
    assert dict(plan.placement) == {"a": (0,), "b": (0,)} and plan.projected_mb == 9000
    assert plan.gpus[0].projected_mb == 9000


def test_the_placement_a_unit_was_rendered_for_is_kept():
    cat = catalog(plain("a", 9001, 4000), modes={"m": ("a",)})
    plan = plan_switch(cat, obs(cat), cat.modes["m"], POLICY, placement={"a": (1,)})
    assert dict(plan.placement) == {"a": (1,)}


def test_placement_is_deterministic_whatever_the_order_of_the_mode():
    ps = [plain(f"s{i}", 9000 + i, 3000 + 1000 * i) for i in range(6)]
    a = catalog(*ps, modes={"m": tuple(p.id for p in ps)})
    b = catalog(*reversed(ps), modes={"m": tuple(p.id for p in reversed(ps))})
    pa = plan_switch(a, obs(a), a.modes["m"], POLICY).placement
    pb = plan_switch(b, obs(b), b.modes["m"], POLICY).placement
    assert pa == pb
    assert replace(ps[0]).gpus == 1


def test_simulate_on_several_gpus_places_and_splits_like_the_planner():
    from gpumod_tasks.plan.simulate import simulate_gpus

    cat = catalog(plain("tp", 9001, 30000, gpus=2), plain("a", 9002, 8000), plain("b", 9003, 16000))
    ok = simulate_gpus(cat, [cat.presets["tp"], cat.presets["a"]], [24000, 24000])
    assert ok.fits and dict(ok.placement) == {"tp": (0, 1), "a": (0,)}
    assert [g.segments for g in ok.gpus] == [(("tp", 15000), ("a", 8000)), (("tp", 15000),)]
    bad = simulate_gpus(cat, [cat.presets["tp"], cat.presets["b"]], [24000, 24000])
    assert not bad.fits and "no GPU has 16000 MB for b: GPU0 9000 MB free, GPU1 9000 MB free" in bad.refusal
    assert bad.as_dict()["gpus"][0]["fits"] is False


def test_the_models_of_one_router_go_on_its_gpus():
    def model(sid: str, vram: int) -> Preset:
        return Preset(sid, sid, Driver.LLAMACPP, 9004, vram, supports_sleep=True, sleep_mode=SleepMode.ROUTER, router="code",
                      unit_vars={"models_max": 2})  # the router holds both at once

    cat = catalog(model("m1", 4000), model("m2", 6000), plain("x", 9001, 20000), modes={"m": ("m1", "m2", "x")})
    plan = plan_switch(cat, obs(cat, {"m1": (R, {1: 4000})}), cat.modes["m"], POLICY)
    assert dict(plan.placement) == {"m1": (1,), "m2": (1,), "x": (0,)}


def test_property_a_plan_that_is_not_refused_keeps_every_gpu_within_its_budget():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    spec = st.lists(st.tuples(st.integers(0, 30000), st.sampled_from([1, 1, 2]), st.sampled_from(["", "0", "1"]),
                              st.sampled_from([ST, R, S]), st.integers(0, 1)), min_size=1, max_size=6)

    @settings(max_examples=200, deadline=None, database=None)
    @given(spec, st.integers(0, 8000))
    def check(items, foreign):
        presets, held = [], {}
        for i, (vram, n, pin, state, gpu) in enumerate(items):
            pin_t = (pin,) if pin and n == 1 else ()
            presets.append(vllm(f"s{i}", 9000 + i, vram, gpus=n, gpu_pin=pin_t))
            if state is not ST and vram:
                on = (0, 1) if n == 2 else ((int(pin),) if pin_t else (gpu,))
                mb = vram if state is R else 1000
                held[f"s{i}"] = (state, dict(zip(on, presets[-1].per_gpu_mb(mb), strict=True)))
        ids = tuple(p.id for p in presets)
        cat = catalog(*presets, modes={"m": ids[: max(1, len(ids) // 2 + 1)]})
        seen = obs(cat, held, foreign={9: (0, foreign)})
        try:
            plan = plan_switch(cat, seen, cat.modes["m"], Policy(reserve_mb=256))
        except PlanRefused as exc:
            assert "nothing was changed" in str(exc)
            return
        for g in plan.gpus:
            assert g.projected_mb <= g.budget_mb, (g, plan.placement)
        where = dict(plan.placement)
        for sid in cat.modes["m"].service_ids:
            p = cat.presets[sid]
            assert len(set(where[sid])) == p.gpus
            if p.gpu_pin:
                assert where[sid] == (int(p.gpu_pin[0]),)
        for sid, (_, per) in held.items():  # what holds GPUs keeps them (or is restarted by the plan)
            if sid in where and set(where[sid]) != {g for g, mb in per.items() if mb}:
                assert any(getattr(s, "service", "") == sid and s.kind == "stop" for s in plan.steps)

    check()
