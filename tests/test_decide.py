"""The router daemon's decisions on data: one observation in, a choice out (no daemon, no host)."""

from __future__ import annotations

import pytest
from test_plan import R, S, cat, fastapi, obs, vllm  # noqa: F401  (cat is a fixture)

from gpumod_tasks.catalog.model import Catalog, Mode, ModeService
from gpumod_tasks.daemon.decide import NoModeFits, choose_mode, expected_seconds, idle_candidates, service_state
from gpumod_tasks.observed import SvcState
from gpumod_tasks.plan import Policy


def test_choose_mode_prefers_the_quicker_plan_not_the_fewer_steps(cat):
    # both modes contain emb. "slow" needs one cold vLLM start (45 s); "fast" needs two L1 wakes (2 + 2 s)
    cat.presets["cold"] = vllm("cold", 9100, 3000)
    cat.presets["w1"] = vllm("w1", 9101, 3000)
    cat.presets["w2"] = vllm("w2", 9102, 3000)
    cat.modes["slow"] = Mode("slow", "slow", services=(ModeService("emb"), ModeService("cold")))
    cat.modes["fast"] = Mode("fast", "fast", services=(ModeService("emb"), ModeService("w1"), ModeService("w2")))
    seen = obs(cat, {"w1": (S, 512), "w2": (S, 512)})
    only = Catalog(cat.presets, {m: cat.modes[m] for m in ("slow", "fast")})
    pick = choose_mode(only, seen, "emb", Policy())
    assert pick.mode == "fast"
    slow_plan = choose_mode(Catalog(cat.presets, {"slow": cat.modes["slow"]}), seen, "emb", Policy()).plan
    assert len(pick.plan.steps) > len(slow_plan.steps)  # more steps, yet quicker
    assert pick.expected_s < expected_seconds(slow_plan, only)


def test_choose_mode_drops_modes_that_do_not_fit_and_says_why(cat):
    seen = obs(cat, external={1: 20000})
    with pytest.raises(NoModeFits) as ei:
        choose_mode(cat, seen, "chat", Policy())
    assert "rag: mode rag does not fit" in str(ei.value)
    cat.presets["lonely"] = fastapi("lonely", 9200)
    with pytest.raises(NoModeFits, match="lonely is in no mode"):
        choose_mode(cat, obs(cat), "lonely", Policy())


def test_service_state_vocabulary(cat):
    seen = obs(cat, {"emb": (R, 2500), "chat": (S, 512), "hyde": (SvcState.STARTING, 0)})
    st = lambda sid, **kw: service_state(seen, sid, errors=kw.get("errors", {}), leaving=kw.get("leaving", set()),  # noqa: E731
                                         pending=kw.get("pending", set()), switching=kw.get("switching", False))
    assert [st("emb"), st("chat"), st("hyde"), st("tts")] == ["active", "sleeping", "switching", "stopped"]
    assert st("emb", errors={"emb": "hung"}) == "error"
    assert st("emb", leaving={"emb"}) == "switching"
    assert st("tts", pending={"tts"}, switching=True) == "switching"
    assert service_state(None, "emb", errors={}, leaving=set(), pending=set(), switching=False) == "stopped"


def test_idle_candidates(cat):
    cat.modes["rag"] = Mode("rag", "rag", services=(ModeService("emb", sleep_on_idle=60), ModeService("chat", sleep_on_idle=10),
                                                    ModeService("tts", sleep_on_idle=1)))
    seen = obs(cat, {"emb": (R, 2500), "chat": (R, 12000), "tts": (R, 3000)})
    due = idle_candidates(cat, cat.modes["rag"], seen, last_request={"emb": 50.0, "chat": 50.0, "tts": 0.0},
                          in_flight={}, pending=set(), errors={}, now=100.0)
    assert due == ["chat"]  # emb idle 50 s < 60; tts cannot sleep
    assert idle_candidates(cat, cat.modes["rag"], seen, last_request={"chat": 50.0}, in_flight={"chat": 1}, pending=set(),
                           errors={}, now=100.0) == []
    assert idle_candidates(cat, cat.modes["rag"], seen, last_request={}, in_flight={}, pending=set(), errors={}, now=1e9) == []
