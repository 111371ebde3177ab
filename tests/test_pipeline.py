"""The one run path end to end: what the dry run shows is what runs; single-service operations get
the switch's checks; an edited preset reaches the running process; a failed run is recorded."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def jrun(h, *argv):
    code, out, err = h.inv(*argv)
    return code, (json.loads(out) if out.strip().startswith("{") else None), err


def status(h) -> dict:
    code, out, err = h.inv("status", "--json")
    assert code == 0, err
    return json.loads(out)


def states(h) -> dict[str, str]:
    return {s["id"]: s["state"] for s in status(h)["services"]}


def preset_file(h, sid: str) -> Path:
    return next((h.sim.root if hasattr(h, "sim") else h.root).glob(f"presets/*/{sid}.yaml"))


def test_importing_the_planner_loads_no_host_code(tmp_path):
    """Facts in, steps out: the planner and its inputs import no I/O machinery."""
    code = ("import sys, gpumod_tasks.plan, gpumod_tasks.observed, gpumod_tasks.daemon.decide\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('subprocess', 'sqlite3', 'httpx', 'fabric', "
            "'paramiko', 'jinja2', 'socket') or m.startswith(('gpumod_tasks.host', 'gpumod_tasks.target', "
            "'gpumod_tasks.observe', 'gpumod_tasks.execute', 'gpumod_tasks.engines.registry', 'gpumod_tasks.engines.http', 'gpumod_tasks.render')) "
            "and m != 'gpumod_tasks.observed')\n"
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"the planner imported: {r.stdout.strip()}"


def test_service_start_that_does_not_fit_is_refused_like_a_switch(sim_host):
    h = sim_host
    assert h.inv("mode.switch", "--name", "chat")[0] == 0  # emb 2500 + big 9000
    port = h.ports["asr"]
    h.write_preset("chat", "huge", f"id: huge\nname: huge\ndriver: vllm\nport: {port}\nvram_mb: 14000\n")
    used = status(h)["gpu"]["used_mb"]
    code, out, err = h.inv("service.start", "--service-id", "huge", "--dry-run")
    assert code == 1 and "service.start huge does not fit: 25500 MB > 24564 MB - 512 MB reserve" in err
    code, out, err = h.inv("service.start", "--service-id", "huge")
    assert code == 1
    assert "service.start huge does not fit: 25500 MB > 24564 MB - 512 MB reserve = 24052 MB (over by 1448 MB); nothing was changed" in err
    assert "alternatives:" in err and "sleep big first (frees 8488 MB)" in err
    s = status(h)
    assert {x["id"]: x["state"] for x in s["services"]}["huge"] == "stopped" and s["gpu"]["used_mb"] == used
    # what does fit is started, with its dependency first
    assert h.inv("mode.switch", "--name", "blank")[0] == 0
    code, out, err = h.inv("service.start", "--service-id", "api", "--dry-run")
    assert code == 0, out + err
    assert "start emb (" in out and out.index("start emb (") < out.index("start api ("), out + err
    code, out, err = h.inv("service.start", "--service-id", "api")
    assert code == 0, err
    assert states(h)["emb"] == "running" and states(h)["api"] == "running"


def test_ram_preflight_of_a_service_start_is_refused_at_plan_time(sim_host, tmp_path):
    h = sim_host
    proc = tmp_path / "fakeproc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 8000000 kB\nMemFree: 100000 kB\nMemAvailable: 2000000 kB\n")
    h.write_inventory(procfs=str(proc))
    code, out, err = h.inv("service.start", "--service-id", "doc")
    assert code == 1 and "preflight refused doc: MemAvailable 1953 MB < needed 3224 MB" in err and "nothing was changed" in err
    assert states(h)["doc"] == "stopped"


def test_a_failed_switch_is_recorded_and_shown_until_a_run_succeeds(sim_host):
    h = sim_host
    port = h.ports["asr"]
    h.write_preset("speech", "asr", f"id: asr\nname: asr\ndriver: fastapi\nport: {port}\nvram_mb: 3000\nstartup_timeout: 2\n"
                                     "health_endpoint: /does-not-exist\nunit_vars:\n  command: [python, -m, asr]\n")
    assert h.inv("mode.switch", "--name", "rag")[0] == 0
    code, out, err = h.inv("mode.switch", "--name", "speak")
    assert code == 1 and "health gate failed for asr" in err
    s = status(h)
    assert s["state"] == "failed" and s["mode"] is None and s["recorded_mode"] == "rag"
    f = s["failure"]
    assert f["operation"] == "switch to speak" and f["step"].startswith("start asr") and f["step_index"] >= 1
    assert any(ln.startswith("running:") and "emb" in ln for ln in f["state"])
    code, out, err = h.inv("status")
    assert code == 0 and "FAILED" in out and "switch to speak failed at step" in out and "start asr" in out
    code, out, err = h.inv("mode.status")
    assert code == 0 and "FAILED" in out
    # the daemon's /health says the same
    sys.path.insert(0, str(Path(__file__).parent))
    from routerd import start_daemon

    d = start_daemon("local")
    try:
        r = d.get("/health").json()
        assert r["status"] == "failed" and r["failure"]["operation"] == "switch to speak", r
    finally:
        d.stop()
    # a run that succeeds clears it
    assert h.inv("mode.switch", "--name", "rag")[0] == 0
    s = status(h)
    assert s["state"] == "ok" and s["mode"] == "rag" and s["failure"] is None


@pytest.mark.systemd
def test_dry_run_shows_install_reload_unload_and_restart_and_the_run_does_exactly_that(systemd_box):
    box = systemd_box
    code, rep, err = jrun(box, "mode.switch", "--name", "code", "--json")
    assert code == 0, err
    assert [s["kind"] for s in rep["steps"]][:3] == ["install-unit", "install-unit", "daemon-reload"]
    emb_pid = box.sd.show("gpumod-emb.service", "MainPID")["MainPID"]
    router_pid = box.sd.show("gpumod-router.service", "MainPID")["MainPID"]
    # the operator edits emb's preset: its unit changes under the running process
    f = preset_file(box, "emb")
    f.write_text(f.read_text() + "env:\n  GPUMOD_TEST_EDIT: 'one'\n")
    code, dry, err = jrun(box, "mode.switch", "--name", "rag", "--dry-run", "--json")
    assert code == 0, err
    planned = [(s["kind"], s["step"]) for s in dry["steps"]]
    kinds = [k for k, _ in planned]
    for k in ("install-unit", "daemon-reload", "router-unload", "stop", "wait-release", "start", "record"):
        assert k in kinds, planned
    assert any(k == "install-unit" and "gpumod-emb.service" in d for k, d in planned)
    assert any(k == "install-unit" and "gpumod-doc.service" in d and "not installed" in d for k, d in planned)
    assert any(k == "stop" and d.startswith("stop emb (restart: its preset changed") for k, d in planned)
    assert kinds.index("daemon-reload") < kinds.index("router-unload") < kinds.index("wait-release") < kinds.index("start")
    assert dry["restarted"] == ["emb"]
    # nothing changed by the dry run
    assert box.sd.show("gpumod-emb.service", "MainPID")["MainPID"] == emb_pid
    code, rep, err = jrun(box, "mode.switch", "--name", "rag", "--json")
    assert code == 0, err
    assert [(s["kind"], s["step"]) for s in rep["steps"]] == planned  # exactly those steps, in that order
    by_kind = {s["kind"]: s for s in rep["steps"]}
    assert by_kind["install-unit"]["status"] == "changed" and by_kind["wait-release"]["status"] == "unchanged"
    assert box.sd.show("gpumod-emb.service", "MainPID")["MainPID"] != emb_pid  # a fresh process
    assert box.sd.show("gpumod-router.service", "MainPID")["MainPID"] == router_pid  # router stayed up, model unloaded
    from gpumod_tasks.envfile import env_file_path

    assert "GPUMOD_TEST_EDIT" in Path(env_file_path(str(box.state), "gpumod-emb.service")).read_text()  # the new value reached it
    assert box.sd.show("gpumod-doc.service", "ActiveState")["ActiveState"] == "active"
    # converged: the same switch again changes nothing
    code, rep, err = jrun(box, "mode.switch", "--name", "rag", "--json")
    assert code == 0 and rep["steps"] == [], rep


@pytest.mark.systemd
def test_unit_installed_behind_a_running_process_is_reported_and_restarted_by_the_next_switch(systemd_box):
    box = systemd_box
    assert box.inv("template.install-all")[0] == 0
    assert box.inv("mode.switch", "--name", "rag")[0] == 0
    code, out, err = box.inv("doctor.units")
    assert code == 0, out + err
    emb_pid = box.sd.show("gpumod-emb.service", "MainPID")["MainPID"]
    time.sleep(2.0)  # the unit file is written well after the process started
    f = preset_file(box, "emb")
    f.write_text(f.read_text() + "env:\n  GPUMOD_TEST_EDIT: 'two'\n")
    code, out, err = box.inv("template.install-all")
    assert code == 0, err
    code, out, err = box.inv("doctor.units")
    assert code != 0 and "running processes older than their unit: emb" in out, out + err
    code, rep, err = jrun(box, "mode.switch", "--name", "rag", "--json")
    assert code == 0, err
    assert [s["kind"] for s in rep["steps"]] == ["stop", "wait-release", "start", "record"], rep["steps"]
    assert "unit file written" in rep["steps"][0]["step"]
    assert box.sd.show("gpumod-emb.service", "MainPID")["MainPID"] != emb_pid
    assert box.inv("doctor.units")[0] == 0


def test_edited_preset_reaches_the_running_service_through_the_daemon_reload(sim_host):
    h = sim_host
    assert h.inv("mode.switch", "--name", "rag")[0] == 0
    pids = {s["id"]: s["pid"] for s in status(h)["services"]}
    sys.path.insert(0, str(Path(__file__).parent))
    from routerd import start_daemon

    d = start_daemon("local")
    try:
        f = preset_file(h, "doc")
        f.write_text(f.read_text() + "env:\n  GPUMOD_TEST_EDIT: 'three'\n")
        r = d.post("/reload", {})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["restarted"] == ["doc"], body
        assert any(s.startswith("install unit gpumod-doc.service") for s in body["steps"])
    finally:
        d.stop()
    after = {s["id"]: s["pid"] for s in status(h)["services"]}
    assert after["doc"] != pids["doc"] and after["emb"] == pids["emb"]


def test_a_leaving_service_that_dies_before_its_sleep_does_not_fail_the_switch(sim_host):
    """Killed between the observation and its sleep step (as a crash would): the step reports that
    it had already stopped, the release wait checks the GPU, and the switch completes."""
    import os
    import signal

    from invoke import Context

    from gpumod_tasks.cli_context import catalog, inventory, open_target
    from gpumod_tasks.pipeline import SwitchTo, run

    h = sim_host
    assert h.inv("mode.switch", "--name", "rag")[0] == 0
    pid = {s["id"]: s["pid"] for s in status(h)["services"]}["doc"]
    spec = inventory().resolve("local")[0]
    with open_target(Context(), spec, catalog()) as t:
        out = run(t, SwitchTo("chat"), on_plan=lambda plan: os.kill(pid, signal.SIGKILL))
    steps = {r.step.kind: r for r in out.report.results}
    assert out.report.ok and steps["sleep"].status == "unchanged" and steps["sleep"].detail == "it had already stopped"
    assert states(h)["big"] == "running" and states(h)["doc"] in ("stopped", "failed")


def test_the_same_interpreter_under_another_name_writes_the_same_units(sim_host):
    """`inv` (a python3 shebang) and `python -m` are one interpreter under two names: a switch by one
    after a switch by the other restarts nothing."""
    import os

    bindir = Path(sys.executable).parent  # sim_host: the catalog, inventory and state dir in the environment
    names = [n for n in ("python", "python3") if (bindir / n).exists()]
    if len(names) < 2:
        pytest.skip(f"{bindir} has only {names}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    outs = []
    for name in names:
        r = subprocess.run([str(bindir / name), "-m", "gpumod_tasks.program", "mode.switch", "--name", "rag", "--json"],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert outs[0]["steps"] and outs[1]["steps"] == [], outs[1]["steps"]
