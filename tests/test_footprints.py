"""Measured footprints on data: the store, its robust value, digests, and planning with learned
figures and durations (no host)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_plan import S, cat, obs, vllm  # noqa: F401  (cat is a fixture)

from gpumod_tasks.catalog.model import Catalog, Mode, ModeService
from gpumod_tasks.daemon.decide import choose_mode, expected_seconds
from gpumod_tasks.errors import PlanRefused
from gpumod_tasks.footprints import Footprints, Sample, Timing, digest_of, dump, parse, robust_mb, robust_seconds
from gpumod_tasks.learn import apply, measured_lines, off_by, settled_states
from gpumod_tasks.plan import Policy, plan_switch


def sample(mb: int, digest: str = "d", at: float = 1.0, gpu: int = 0) -> Sample:
    return Sample(at, digest, {gpu: mb})


def test_robust_value_is_the_max_of_the_last_five_with_the_current_digest():
    rows = [sample(9000, at=0), *[sample(mb, at=i) for i, mb in enumerate([3000, 3100, 3050, 2990, 3020], 1)],
            sample(5000, "old", at=9)]
    f = robust_mb(rows, "d")
    assert f is not None and (f.mb, f.samples, f.at) == (3100, 5, 5)  # the 9000 fell out of the window
    assert robust_mb(rows, "old").mb == 5000
    assert robust_mb(rows, "new") is None


def test_robust_value_per_gpu_takes_each_gpus_maximum():
    rows = [Sample(1, "d", {0: 4000, 1: 4100}), Sample(2, "d", {0: 4200, 1: 3900})]
    f = robust_mb(rows, "d")
    assert f.mb == 8100 and f.gpu_mb == {0: 4200, 1: 4100}  # the total: the largest total seen


def test_durations_use_the_median_and_fall_back_to_any_digest():
    ts = [Timing(i, "d", s) for i, s in enumerate([1.0, 50.0, 2.0, 3.0])]
    assert robust_seconds(ts, "d") == 2.5
    assert robust_seconds(ts[:3], "d") == 2.0
    assert robust_seconds(ts, "other") == 2.5  # an edit changes what it holds far more than how long it takes
    assert robust_seconds([], "d") is None


def test_store_round_trips_and_keeps_the_last_ten():
    fp = Footprints()
    for i in range(12):
        fp.add_figure("emb", "awake", Sample(float(i), "d", {0: 3000 + i, 1: 10}))
    fp.add_duration("emb", "wake_l1", Timing(5.0, "d", 0.25))
    back = parse(dump(fp))
    assert [s.gpu_mb for s in back.figures["emb"]["awake"]] == [{0: 3000 + i, 1: 10} for i in range(2, 12)]
    assert back.durations["emb"]["wake_l1"] == [Timing(5.0, "d", 0.25)]
    assert json.loads(dump(back)) == json.loads(dump(fp))


@pytest.mark.parametrize("text", [None, "", "not json", "[]", '{"services": []}', '{"services": {"emb": 5}}',
                                  '{"services": {"emb": {"figures": {"awake": [{"at": "x", "digest": "d", "gpu_mb": {"0": 1}}]}}}}',
                                  '{"services": {"emb": {"figures": {"awake": [{"at": 1, "digest": "d", "gpu_mb": {"a": 1}}]}}}}'])
def test_an_unreadable_store_is_an_empty_one(text):
    fp = parse(text)
    assert not any(fp.figures.values()) and not any(fp.durations.values())


def test_digest_follows_what_runs_not_the_declared_figures():
    p = vllm("emb", 9001, 2500)
    d = digest_of(p, "ExecStart=x")
    assert digest_of(dataclasses.replace(p, vram_mb=9999, sleep_vram_mb=1, description="new words"), "ExecStart=x") == d
    assert digest_of(dataclasses.replace(p, context_size=4096), "ExecStart=x") != d
    assert digest_of(p, "ExecStart=y") != d  # the rendered unit changed (template, flags, placement)


def learned(figs: dict[str, dict[str, int]], times: dict[str, dict[str, float]] | None = None) -> Footprints:
    fp = Footprints()
    for sid, states in figs.items():
        for state, mb in states.items():
            fp.add_figure(sid, state, sample(mb))
    for sid, kinds in (times or {}).items():
        for kind, s in kinds.items():
            fp.add_duration(sid, kind, Timing(1.0, "d", s))
    return fp


def test_apply_puts_measured_figures_in_and_keeps_the_declared_ones(cat):
    fp = learned({"emb": {"awake": 3250, "sleep_l1": 700, "sleep_l2": 300}})
    m = apply(cat, fp, {sid: "d" for sid in cat.presets})
    p = m.presets["emb"]
    assert (p.vram_mb, p.vram_source, p.declared_vram_mb, p.measured_gpu_mb) == (3250, "measured", 2500, ((0, 3250),))
    assert (p.residual_mb, p.sleep_source, p.declared_sleep_vram_mb) == (700, "measured", 512)  # its preset sleeps at L1
    assert p.residual_at(2) == 300 and p.residual_at(1) == 700
    assert m.presets["chat"] == cat.presets["chat"]  # nothing learned: untouched
    assert apply(cat, fp, {sid: "d" for sid in cat.presets}, {"emb": 2}).presets["emb"].residual_mb == 300  # asleep at L2 now
    stale = apply(cat, fp, {sid: "other" for sid in cat.presets}).presets["emb"]
    assert (stale.vram_mb, stale.vram_source) == (2500, "declared")


def test_a_refusal_on_measured_figures_names_them(cat):
    fp = learned({"chat": {"awake": 22000}})
    m = apply(cat, fp, {sid: "d" for sid in cat.presets})
    seen = obs(cat)
    plan_switch(cat, seen, cat.modes["rag"], Policy())  # on the declared figures rag fits
    with pytest.raises(PlanRefused) as ei:
        plan_switch(m, seen, m.modes["rag"], Policy(reserve_mb=512))
    assert "24500 MB" in str(ei.value) and "awake chat: 22000 MB" in ei.value.lines
    assert measured_lines(m) == ["learned figures (footprints.json) used:", "  chat: 22000 MB measured awake (declared 12000 MB)"]


def test_the_daemon_picks_the_mode_with_the_shorter_learned_time(cat):
    # "fast" needs two L1 wakes, "slow" one cold start: by the defaults (2 + 2 s vs 45 s) fast wins;
    # on this host the wakes took 30 s each and the cold start 5 s, so slow is quicker
    cat.presets["cold"] = vllm("cold", 9100, 3000)
    cat.presets["w1"] = vllm("w1", 9101, 3000)
    cat.presets["w2"] = vllm("w2", 9102, 3000)
    modes = {"slow": Mode("slow", "slow", services=(ModeService("emb"), ModeService("cold"))),
             "fast": Mode("fast", "fast", services=(ModeService("emb"), ModeService("w1"), ModeService("w2")))}
    only = Catalog(cat.presets, modes)
    seen = obs(only, {"w1": (S, 512), "w2": (S, 512)})
    assert choose_mode(only, seen, "emb", Policy()).mode == "fast"
    fp = learned({}, {"w1": {"wake_l1": 30.0}, "w2": {"wake_l1": 30.0}, "cold": {"start": 5.0}, "emb": {"start": 2.0}})
    m = apply(only, fp, {sid: "d" for sid in only.presets})
    pick = choose_mode(m, seen, "emb", Policy())
    assert pick.mode == "slow"
    assert pick.expected_s == pytest.approx(expected_seconds(pick.plan, m))
    assert pick.expected_s < expected_seconds(plan_switch(m, seen, modes["fast"], Policy()), m)


def test_off_by_is_relative_to_the_measured_figure():
    assert off_by(2500, 3250) == pytest.approx(0.2308, abs=1e-3)
    assert off_by(3000, 3000) == 0.0 and off_by(0, 0) == 0.0 and off_by(100, 0) == 1.0


def test_settled_states_from_a_report():
    from gpumod_tasks.execute import StepResult, SwitchReport
    from gpumod_tasks.plan import Plan
    from gpumod_tasks.plan.steps import RouterLoad, RouterUnload, Sleep, Start, Stop, Wake

    steps = [Sleep("doc", 1, "leaving"), RouterUnload("code", "leaving"), Start("code2", "arriving", router=True),
             RouterLoad("code2"), Wake("emb", 2), Start("tts", "arriving"), Stop("tts", "x"), Start("api", "a")]
    rep = SwitchReport(Plan(mode="m", steps=tuple(steps)))
    rep.results = [StepResult(s, "unchanged" if s.service == "api" else "changed", 1.5) for s in steps]
    states, times = settled_states(rep)
    assert states == {"doc": "sleep_l1", "code": "unloaded", "code2": "awake", "emb": "awake"}
    assert [(s, k) for s, k, _ in times] == [("doc", "sleep_l1"), ("code", "router_unload"), ("code2", "router_load"),
                                            ("emb", "wake_l2"), ("tts", "start"), ("tts", "stop")]


def test_stand_in_flags_for_holding_more_or_less_than_declared():
    from gpumod_tasks.inventory import SimSettings
    from gpumod_tasks.render import sim_footprint

    p = vllm("emb", 9001, 2500)
    assert sim_footprint(p, SimSettings()) == []  # holds what it declares: the stand-in's argv is unchanged
    assert sim_footprint(dataclasses.replace(p, sim={"hold_factor": 1.3}), SimSettings()) == ["--hold-factor", "1.3"]
    assert sim_footprint(dataclasses.replace(p, sim={"hold_mb": 2000}), SimSettings()) == ["--hold-factor", "0.8"]
    assert sim_footprint(p, SimSettings(hold_factor=0.9)) == ["--hold-factor", "0.9"]  # the host's setting
    assert sim_footprint(dataclasses.replace(p, sim={"sleep_l1_mb": 700, "sleep_l2_mb": 0}), SimSettings()) == \
        ["--sleep-l1-mb", "700", "--sleep-l2-mb", "0"]
    # the published figures where the preset declares no residual: 774 MiB asleep at TP 1, 2.4 GiB per GPU under TP
    bare = dataclasses.replace(p, sleep_vram_mb=None)
    assert sim_footprint(bare, SimSettings(published=1)) == ["--sleep-l1-mb", "774", "--sleep-l2-mb", "774"]
    assert sim_footprint(dataclasses.replace(bare, gpus=2), SimSettings(published=1)) == ["--sleep-l1-mb", "4916", "--sleep-l2-mb", "4916"]
    assert sim_footprint(p, SimSettings(published=1)) == []  # it declares its residual: that is what it holds


def test_a_router_model_is_not_measured_while_another_model_of_its_router_is_loaded(cat):
    from test_plan import R

    from gpumod_tasks.learn import _shares_its_memory

    both = obs(cat, {"code": (R, 19100), "lite": (R, 9000)})
    assert _shares_its_memory(cat, both, "code") and _shares_its_memory(cat, both, "lite")
    alone = obs(cat, {"code": (R, 19100)})
    assert not _shares_its_memory(cat, alone, "code") and not _shares_its_memory(cat, alone, "emb")


def test_a_steady_box_writes_nothing_new():
    from gpumod_tasks.learn import timing_worth_recording, worth_recording

    rows = [sample(3000, at=i) for i in range(4)]
    assert worth_recording(rows, "d", {0: 3000})  # the window is not full yet
    rows.append(sample(3000, at=5))
    assert not worth_recording(rows, "d", {0: 3010})  # within 1 %
    assert worth_recording(rows, "d", {0: 3100}) and worth_recording(rows, "d", {0: 3000, 1: 200})
    assert worth_recording(rows, "new", {0: 3000})  # another preset or unit: a new window
    ts = [Timing(i, "d", 2.0) for i in range(5)]
    assert not timing_worth_recording(ts, "d", 2.3) and timing_worth_recording(ts, "d", 2.6)
    assert timing_worth_recording(ts[:4], "d", 2.0)


def test_doctor_write_changes_only_the_values():
    from gpumod_tasks.doctor import _set_values

    text = "# head\nid: a   # the id\nvram_mb: 2500  # what it takes\nextra:\n    - x   # indented\nsim: {hold_factor: 1.3}\n"
    assert _set_values(text, {"vram_mb": 3250, "sleep_vram_mb": 774}) == \
        "# head\nid: a   # the id\nvram_mb: 3250  # what it takes\nsleep_vram_mb: 774\nextra:\n    - x   # indented\nsim: {hold_factor: 1.3}\n"
    # a value on the line after its key is found and edited there too
    odd = "id: a  # keep\nvram_mb:\n  2500\n"
    out = _set_values(odd, {"vram_mb": 3250})
    assert "# keep" in out and "3250" in out and "2500" not in out
