"""Memory still held by a process on its way out (a crashed or killed stop seconds ago): named,
waited for before anything loads, never a "does not fit" refusal. Planner tests on data, and the
pure rules the observation uses to recognise such a process."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_plan import R, cat, kinds, obs  # noqa: F401 - the fixture, shared

from gpumod_tasks.errors import PlanRefused
from gpumod_tasks.observe import parse_cgroup_walk, parse_pid_states, releasing_owner
from gpumod_tasks.observed import Releasing
from gpumod_tasks.plan import Policy, ServiceOp, WaitRelease, plan_service, plan_switch


def releasing(seen, *procs: Releasing):
    used = seen.gpu_used_mb + sum(r.mb for r in procs)
    g = replace(seen.gpu.gpus[0], used_mb=used, free_mb=seen.gpu_total_mb - used)
    return replace(seen, gpu=replace(seen.gpu, gpus=(g,)), releasing=tuple(procs))


def test_a_dying_process_is_waited_for_instead_of_refusing(cat):
    # big (22500 MB) was killed a moment ago; its 22500 MB are still charged: a start of it would not fit
    seen = obs(cat, external={4242: 22500})
    with pytest.raises(PlanRefused, match="does not fit"):
        plan_switch(cat, seen, cat.modes["big"], Policy())
    # the same memory known to be on its way out: wait for it, naming it, then start
    seen = releasing(obs(cat), Releasing(4242, 22500, "big"))
    plan = plan_switch(cat, seen, cat.modes["big"], Policy())
    first = plan.steps[0]
    assert isinstance(first, WaitRelease) and first.expected_used_mb == 0
    assert "releasing: pid 4242 of big (22500 MB)" in first.describe()
    assert kinds(plan)[1:] == [("start", "big"), ("record", "big")]


def test_the_wait_expects_what_stays_used_and_names_every_process(cat):
    seen = releasing(obs(cat, {"emb": (R, 2500)}, mode="rag"), Releasing(7, 12000, "chat"), Releasing(8, 300))
    plan = plan_service(cat, seen, ServiceOp("start", "chat"), Policy())
    w = plan.steps[0]
    assert isinstance(w, WaitRelease) and w.expected_used_mb == 2500
    assert w.releasing == ("pid 7 of chat (12000 MB)", "pid 8 (exited) (300 MB)")
    assert [s.kind for s in plan.steps][1] == "start"


def test_a_plan_that_loads_nothing_does_not_wait(cat):
    seen = releasing(obs(cat, {"emb": (R, 2500), "chat": (R, 12000)}, mode="rag"), Releasing(7, 9000, "big"))
    assert plan_switch(cat, seen, cat.modes["rag"], Policy()).steps == ()  # converged: still empty
    stop = plan_service(cat, seen, ServiceOp("stop", "chat"), Policy())
    assert not any(isinstance(s, WaitRelease) and s.releasing for s in stop.steps)
    assert plan_switch(cat, seen, cat.modes["blank"], Policy()).steps[0].kind == "stop"


def test_memory_of_live_foreign_processes_still_refuses(cat):
    seen = releasing(obs(cat, external={999: 6000}), Releasing(7, 1000, "emb"))
    with pytest.raises(PlanRefused) as ei:
        plan_switch(cat, seen, cat.modes["big"], Policy())
    assert "over by 4448 MB" in str(ei.value)  # the 1000 MB on their way out do not count


def test_which_gpu_processes_are_on_their_way_out():
    running, last = {"emb"}, {4242: "big"}
    assert releasing_owner(4242, None, "gone", running, last) == "big"  # exited: named by its unit's last run
    assert releasing_owner(4242, None, "Z", running, last) == "big"
    assert releasing_owner(77, None, "gone", running, last) == ""  # exited, whose unknown
    assert releasing_owner(78, "chat", "S", running, last) == "chat"  # alive in a stopped unit's cgroup
    assert releasing_owner(79, "emb", "S", running, last) is None  # a running service's child
    assert releasing_owner(80, None, "R", running, last) is None  # a foreign process
    assert releasing_owner(81, None, "", running, last) is None  # state unknown (the walk failed): not assumed gone
    text = "10 state S\n10 10 gpumod-emb.service\n11 state\n12 state Z\n12 12 \n12 1 \n"
    assert parse_pid_states(text) == {10: "S", 11: "gone", 12: "Z"}
    assert parse_cgroup_walk(text, {}, {"gpumod-emb.service": "emb"}) == {10: "emb"}



def test_the_walk_reports_each_process_state_for_real():
    import subprocess
    from types import SimpleNamespace

    from gpumod_tasks.host.local import LocalHost
    from gpumod_tasks.inventory import HostSpec
    from gpumod_tasks.observe import _walk

    child = subprocess.Popen(["sleep", "30"])
    zombie = subprocess.Popen(["true"])
    try:
        for _ in range(200):  # `true` exits at once and stays a zombie until waited for
            if open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                break
            import time

            time.sleep(0.01)
        t = SimpleNamespace(host=LocalHost(HostSpec(name="t")), catalog=SimpleNamespace(presets={}))
        _, states = _walk(t, [child.pid, zombie.pid, 999999], {})
        assert states == {child.pid: "S", zombie.pid: "Z", 999999: "gone"}
    finally:
        child.kill()
        child.wait()
        zombie.wait()
