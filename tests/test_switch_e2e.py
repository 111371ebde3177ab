"""The switch engine driving the simulated host for real (stand-in servers, ledger, supervisor)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def status(h):
    code, out, err = h.inv("status", "--json")
    assert code == 0, err
    d = json.loads(out)
    return d, {s["id"]: s["state"] for s in d["services"]}


def switch_json(h, *args):
    code, out, err = h.inv("mode.switch", "--json", *args)
    return code, (json.loads(out) if out.strip().startswith("{") else None), err


def test_switch_sleep_wake_idempotent_and_blank(sim_host):
    h = sim_host
    code, rep, err = switch_json(h, "--name", "rag")
    assert code == 0, err
    assert sorted(s["service"] for s in rep["summary"]["Started"]) == ["doc", "emb"]
    d, st = status(h)
    assert st["emb"] == st["doc"] == "running" and d["gpu"]["used_mb"] == 7500 and d["mode"] == "rag"
    assert "simulated GPU" in h.inv("status")[1].splitlines()[0]  # the first line says so
    code, rep, err = switch_json(h, "--name", "code")
    assert code == 0, err
    assert [s["service"] for s in rep["summary"]["Slept"]] == ["doc"]
    assert [s["service"] for s in rep["summary"]["Started"]] == ["router"]
    d, st = status(h)
    assert st["doc"] == "sleeping" and st["router"] == "running"
    assert d["gpu"]["used_mb"] == 2500 + 512 + 6000  # doc keeps its residual while asleep
    code, rep, err = switch_json(h, "--name", "rag")
    assert code == 0, err
    assert [s["service"] for s in rep["summary"]["Woken"]] == ["doc"]
    assert [s["service"] for s in rep["summary"]["Slept"]] == ["router"]  # unloaded from the router
    # the same switch again changes nothing
    code, rep, err = switch_json(h, "--name", "rag")
    assert code == 0 and rep["steps"] == []
    # blank always works and frees all VRAM (after the release lag)
    code, rep, err = switch_json(h, "--name", "blank")
    assert code == 0, err
    time.sleep(0.35)
    d, st = status(h)
    assert d["gpu"]["used_mb"] == 0  # everything stopped, sleepers and the idle router included
    assert set(st.values()) == {"stopped"}


def test_drift_killed_service_is_relaunched(sim_host):
    h = sim_host
    assert switch_json(h, "--name", "rag")[0] == 0
    d, st = status(h)
    pid = [s["pid"] for s in d["services"] if s["id"] == "doc"][0]
    os.kill(pid, signal.SIGKILL)  # behind gpumod's back
    time.sleep(0.1)
    assert status(h)[1]["doc"] in ("stopped", "failed")
    code, rep, err = switch_json(h, "--name", "rag")
    assert code == 0, err
    assert rep["relaunched"] == ["doc"]
    assert status(h)[1]["doc"] == "running"


def test_l2_wake_sequence_and_release_polling(sim_host):
    h = sim_host
    assert switch_json(h, "--name", "chat")[0] == 0
    code, rep, err = switch_json(h, "--name", "rag")
    assert code == 0, err
    slept = [s for s in rep["steps"] if s["kind"] == "sleep"]
    assert slept and "big L2" in slept[0]["step"]
    wait = [s for s in rep["steps"] if s["kind"] == "wait-release"][0]
    assert wait["status"] == "unchanged"  # a check: it changes nothing, it verifies
    assert 0.2 <= wait["seconds"] < 0.25 * 1.6  # release lag 0.25 s, seen promptly
    code, rep, err = switch_json(h, "--name", "chat")
    assert code == 0, err
    wake = [s for s in rep["steps"] if s["kind"] == "wake"][0]
    assert "L2: weights, reload_weights, kv_cache" in wake["step"]
    assert status(h)[1]["big"] == "running"


def test_refusal_over_budget_changes_nothing(sim_host):
    h = sim_host
    h.write_preset("chat", "huge", "id: huge\nname: huge\ndriver: vllm\nport: 1\nvram_mb: 30000\n")
    h.write_mode("toobig", ["emb", "huge"])
    assert switch_json(h, "--name", "rag")[0] == 0
    before = status(h)[1]
    code, out, err = h.inv("mode.switch", "--name", "toobig")
    assert code == 1
    assert "does not fit" in err and "nothing was changed" in err and "alternatives" in err
    assert status(h)[1] == before
    code, out, err = h.inv("mode.switch", "--name", "nosuch")
    assert code == 2 and "unknown mode 'nosuch'; known: blank, chat, code, rag, speak, toobig" in err


def test_dry_run_prints_plan_and_changes_nothing(sim_host):
    h = sim_host
    code, out, err = h.inv("mode.switch", "--name", "rag", "--dry-run")
    assert code == 0, err
    assert "start emb" in out and "start doc" in out
    assert status(h)[1]["emb"] == "stopped"


def test_preflight_refuses_start_when_ram_is_short(sim_host, tmp_path):
    h = sim_host
    proc = tmp_path / "fakeproc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 8000000 kB\nMemFree: 100000 kB\nMemAvailable: 2000000 kB\n")
    h.write_inventory(procfs=str(proc))
    code, out, err = h.inv("mode.switch", "--name", "rag", "--dry-run")
    assert code == 1 and "nothing was changed" in err  # the dry run refuses exactly as the switch does
    code, out, err = h.inv("mode.switch", "--name", "rag")
    assert code == 1
    # refused at plan time, before anything starts: emb needs 1200 x 1.1 + 1024 = 2344 MB > 1953 MB
    assert "preflight refused emb: MemAvailable 1953 MB < needed 2344 MB" in err and "nothing was changed" in err
    d, _ = status(h)
    assert all(s["state"] == "stopped" for s in d["services"])


def test_health_gate_failure_rolls_back(sim_host):
    h = sim_host
    port = h.ports["asr"]
    h.write_preset("speech", "asr", f"id: asr\nname: asr\ndriver: fastapi\nport: {port}\nvram_mb: 3000\nstartup_timeout: 2\n"
                                     "health_endpoint: /does-not-exist\nunit_vars:\n  command: [python, -m, asr]\n")
    assert switch_json(h, "--name", "rag")[0] == 0
    code, out, err = h.inv("mode.switch", "--name", "speak", "--rollback")
    assert code == 1
    assert "health gate failed for asr" in err and "404" in err
    assert "rollback to rag: done" in err
    d, st = status(h)
    assert st["emb"] == st["doc"] == "running" and st["asr"] == "stopped" and d["mode"] == "rag"


def test_lock_serialises_two_switches(sim_host):
    h = sim_host
    port = h.ports["doc"]  # a slow loader keeps the first switch inside the lock for ~2.5 s
    h.write_preset("embedding", "doc", f"id: doc\nname: doc\ndriver: vllm\nport: {port}\nvram_mb: 5000\n"
                                       "sleep_mode: l1\nsim: {load_s: 2.5}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", "from gpumod_tasks.program import main; main()"]
    first = subprocess.Popen([*cmd, "mode.switch", "--name", "rag"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # first holds the lock while its stand-ins load
    busy = subprocess.run([*cmd, "mode.switch", "--name", "code", "--no-wait"], env=env, capture_output=True, text=True)
    assert busy.returncode == 3 and "another switch holds the host lock" in busy.stderr
    second = subprocess.run([*cmd, "mode.switch", "--name", "code"], env=env, capture_output=True, text=True, timeout=60)
    assert first.poll() is not None  # the second could only finish after the first released the lock
    out1, err1 = first.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert second.returncode == 0, second.stderr
    assert "waiting for the host lock held by mode.switch --name rag" in second.stdout + second.stderr
    assert status(h)[0]["mode"] == "code"


def test_service_tasks_and_quiesce_refusal(sim_host):
    h = sim_host
    h.write_inventory(quiesce_s=30, quiesce_threshold_mb=1000)
    assert h.inv("service.start", "--service-id", "emb")[0] == 0
    assert status(h)[1]["emb"] == "running"
    code, out, err = h.inv("service.sleep", "--service-id", "emb")
    assert code == 0 and "asleep (L1)" in out
    assert status(h)[1]["emb"] == "sleeping"
    assert h.inv("service.wake", "--service-id", "emb")[0] == 0
    assert h.inv("service.stop", "--service-id", "emb")[0] == 0
    assert "starting gpumod-emb.service" in h.inv("service.logs", "--service-id", "emb")[1]
    # a heavy stop during a switch starts the quiesce window; a lone start then says how long remains
    assert switch_json(h, "--name", "rag", "--no-quiesce")[0] == 0
    assert switch_json(h, "--name", "blank")[0] == 0  # nothing loads next: no wait, but the window is recorded
    code, out, err = h.inv("service.start", "--service-id", "asr")
    assert code == 1 and "quiescing after a heavy stop" in err and "s remain" in err
    assert h.inv("service.start", "--service-id", "asr", "--no-quiesce")[0] == 0


def test_ctrl_c_mid_switch_reports_state_and_rerun_converges(sim_host):
    h = sim_host
    doc = next((h.root / "presets").rglob("doc.yaml"))
    doc.write_text(doc.read_text() + "sim: {load_s: 3}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", "import sys; from gpumod_tasks.program import main; sys.exit(main())",
                          "mode.switch", "--name", "rag"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 20
    run_dir = h.state / "supervisor" / "run"
    while not (run_dir / "gpumod-doc.service.pid").exists():  # doc is starting (3 s load)
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, (p.returncode, err)
    assert "interrupted at step 'start doc" in err and "now on the GPU host" in err
    # the lock died with the process; the same switch converges
    code, rep, err = switch_json(h, "--name", "rag", "--no-wait")
    assert code == 0, err
    d, st = status(h)
    assert st["emb"] == st["doc"] == "running" and d["mode"] == "rag"
