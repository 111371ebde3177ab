"""Rendered units under a real systemd: a private systemd is PID 1 of its own PID+mount namespace,
gpumod reaches it with ``connection: nsenter``, and the units run the simulator's stand-ins."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from conftest import REPO, box_inventory, run_cli

from gpumod_tasks.catalog import load_catalog

pytestmark = pytest.mark.systemd


def states(box) -> dict[str, str]:
    code, out, err = box.inv("status", "--json")
    assert code == 0, err
    return {s["id"]: s["state"] for s in json.loads(out)["services"]}


def test_install_all_is_idempotent_check_mode_and_edits(systemd_box):
    box = systemd_box
    code, out, err = box.inv("template.install-all", "--check")
    assert code == 1 and "would change gpumod-emb.service" in out and "+ExecStart=" in out
    assert box.sd.run(["ls", box.unit_dir], check=False).stdout.strip() == ""  # --check wrote nothing
    code, out, err = box.inv("template.install-all")
    assert code == 0, err
    assert "6 changed, 0 unchanged, 0 removed (daemon-reload done)" in out
    code, out, err = box.inv("template.install-all")
    assert code == 0 and "0 changed, 6 unchanged, 0 removed" in out and "daemon-reload" not in out
    assert box.sd.show("gpumod-emb.service", "LoadState")["LoadState"] == "loaded"
    # editing a preset regenerates its unit (and only its unit)
    p = box.sim.root / "presets" / "embedding" / "emb.yaml"
    p.write_text(p.read_text().replace("startup_timeout: 20", "startup_timeout: 33"))
    code, out, err = box.inv("template.diff")
    assert code == 1 and "-TimeoutStartSec=20" in out and "+TimeoutStartSec=33" in out
    code, out, err = box.inv("template.install-all")
    assert "1 changed, 5 unchanged" in out
    assert box.sd.show("gpumod-emb.service", "TimeoutStartUSec")["TimeoutStartUSec"] == "33s"
    # a deleted preset's unit goes; a unit gpumod did not write stays
    box.sd.run(["sh", "-c", f"printf '[Service]\\nExecStart=/bin/true\\n' > {box.unit_dir}/gpumod-handmade.service"])
    (box.sim.root / "presets" / "speech" / "asr.yaml").unlink()
    box.sim.write_mode("speak", ["emb", "api"])
    code, out, err = box.inv("template.install-all")
    assert code == 0, err
    assert "removed gpumod-asr.service" in out and "1 removed" in out
    left = box.sd.run(["ls", box.unit_dir]).stdout.split()
    assert "gpumod-asr.service" not in left and "gpumod-handmade.service" in left
    code, out, err = box.inv("template.uninstall")
    assert code == 0 and "removed 5 units" in out
    assert box.sd.run(["ls", box.unit_dir]).stdout.split() == ["gpumod-handmade.service"]


def test_every_bundled_preset_unit_passes_systemd_analyze_verify(systemd_box, tmp_path, monkeypatch):
    """Real (vLLM, llama.cpp, FastAPI, Docker) and simulated renders of every bundled preset.

    vLLM, llama-server, docker and the FastAPI venvs are not installed here, and `verify` insists
    that every ExecStart binary exists: inside the namespace only, a tmpfs over /usr/local/bin and
    /opt holds placeholders for them, so the check is about the units themselves."""
    box = systemd_box
    monkeypatch.setenv("GPUMOD_HOME", str(REPO))
    pid = box.sd.pid
    real_state, sim_state = tmp_path / "real-state", tmp_path / "sim-state"
    inv = ("hosts:\n" + box_inventory("real", tmp_path / "box.pid", real_state, "/run/gpumod-verify/real", sim=False)
           + box_inventory("sim", tmp_path / "box.pid", sim_state, "/run/gpumod-verify/sim"))
    (tmp_path / "hosts.yaml").write_text(inv)
    n = len({p.unit for p in load_catalog(REPO).presets.values()})  # a shared router is one unit
    monkeypatch.setenv("GPUMOD_INVENTORY", str(tmp_path / "hosts.yaml"))
    for h in ("real", "sim"):
        code, out, err = run_cli(["-H", h, "template.install-all"])
        assert code == 0, err
        assert f"{n} changed" in out
    units = box.sd.run(["sh", "-c", "ls /run/gpumod-verify/real/*.service /run/gpumod-verify/sim/*.service"]).stdout.split()
    assert len(units) == 2 * n
    real_bins = set()
    for u in units:
        if "/real/" in u:
            text = box.sd.run(["cat", u]).stdout
            real_bins.add(re.search(r"^ExecStart=(\S+)", text, re.M).group(1))
    assert {"vllm", "llama-server", "docker"} <= real_bins
    script = ["set -e", "mount -t tmpfs tmpfs /usr/local/bin", "mount -t tmpfs tmpfs /opt"]
    for b in sorted(real_bins):
        path = b if b.startswith("/") else f"/usr/local/bin/{b}"
        script += [f"mkdir -p {os.path.dirname(path)}", f"printf '#!/bin/sh\\nexit 1\\n' > {path}", f"chmod +x {path}"]
    # the Docker units require docker.service: a stand-in unit for it, verified alongside
    script += ["mkdir -p /run/gpumod-verify/stub",
               "printf '[Service]\\nExecStart=/usr/local/bin/docker\\n' > /run/gpumod-verify/stub/docker.service"]
    script.append('exec systemd-analyze verify --man=no /run/gpumod-verify/stub/docker.service "$@"')
    r = box.sd.run(["unshare", "--mount", "--", "sh", "-c", "\n".join(script), "sh", *units], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert pid == box.sd.pid


def test_start_stop_restart_state_and_journal(systemd_box):
    box = systemd_box
    assert box.inv("template.install-all")[0] == 0
    code, out, err = box.inv("service.start", "--service-id", "emb")
    assert code == 0, err
    show = box.sd.show("gpumod-emb.service", "ActiveState", "MainPID")
    assert show["ActiveState"] == "active" and show["MainPID"] != "0"
    assert states(box)["emb"] == "running"
    code, out, err = box.inv("service.restart", "--service-id", "emb")
    assert code == 0 and "emb restarted" in out, err
    assert box.sd.show("gpumod-emb.service", "ActiveState")["ActiveState"] == "active"
    new_pid = box.sd.show("gpumod-emb.service", "MainPID")["MainPID"]
    assert new_pid not in ("0", show["MainPID"])
    # the preflight and the stand-in's start both reach the journal; gpumod reads it back
    code, out, err = box.inv("service.logs", "--service-id", "emb", "--lines", "200")
    assert code == 0, err
    assert "gpumod-preflight: emb ok" in out and "MemAvailable" in out
    code, out, err = box.inv("service.stop", "--service-id", "emb")
    assert code == 0, err
    assert box.sd.show("gpumod-emb.service", "ActiveState")["ActiveState"] == "inactive"
    assert states(box)["emb"] == "stopped"


def test_restart_on_failure_brings_a_killed_service_back(systemd_box):
    box = systemd_box
    assert box.inv("template.install-all")[0] == 0
    assert box.inv("service.start", "--service-id", "emb")[0] == 0
    pid = box.sd.show("gpumod-emb.service", "MainPID")["MainPID"]
    box.sd.run(["kill", "-KILL", pid])
    assert box.sd.wait_for("gpumod-emb.service", "NRestarts", "1", timeout=20) == "1"  # RestartSec=5
    assert box.sd.wait_for("gpumod-emb.service", "ActiveState", "active", timeout=10) == "active"
    assert box.sd.show("gpumod-emb.service", "MainPID")["MainPID"] != pid
    deadline = time.monotonic() + 10
    while states(box)["emb"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert states(box)["emb"] == "running"


def test_preflight_refuses_a_start_and_the_journal_says_why(systemd_box, tmp_path):
    box = systemd_box
    proc = tmp_path / "fakeproc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 8000000 kB\nMemFree: 100000 kB\nMemAvailable: 2000000 kB\n")
    inv = (box.sim.root / "inventory" / "hosts.yaml").read_text() + f"    procfs: {proc}\n"
    (box.sim.root / "inventory" / "hosts.yaml").write_text(inv)
    assert box.inv("template.install-all")[0] == 0
    # behind gpumod's back: the unit's own ExecStartPre refuses
    r = box.sd.systemctl("start", "gpumod-emb.service", check=False)
    assert r.returncode != 0
    # Restart=on-failure retries the refused start (RestartSec=5) until the start limit (3 in 90 s)
    assert box.sd.wait_for("gpumod-emb.service", "ActiveState", "failed", timeout=30) == "failed"
    assert box.sd.show("gpumod-emb.service", "Result")["Result"] == "exit-code"
    journal = box.sd.run(["journalctl", "-u", "gpumod-emb.service", "--no-pager", "-o", "cat"]).stdout
    assert "gpumod-preflight: refusing to start emb: MemAvailable 1953 MB < needed 2344 MB" in journal
    # through gpumod: refused before systemd is asked, with the same numbers
    code, out, err = box.inv("mode.switch", "--name", "rag")
    assert code == 1 and "preflight refused emb: MemAvailable 1953 MB < needed 2344 MB" in err
    # with enough RAM the failed unit starts (gpumod clears the failed state first)
    (proc / "meminfo").write_text("MemTotal: 64000000 kB\nMemFree: 100000 kB\nMemAvailable: 60000000 kB\n")
    code, out, err = box.inv("mode.switch", "--name", "rag")
    assert code == 0, err
    assert box.sd.show("gpumod-emb.service", "ActiveState")["ActiveState"] == "active"


def test_switch_across_dependent_units_and_drift(systemd_box):
    box = systemd_box
    code, out, err = box.inv("mode.switch", "--name", "speak")  # installs units as needed
    assert code == 0, err
    for sid in ("emb", "asr", "api"):
        assert box.sd.show(box.unit(sid), "ActiveState")["ActiveState"] == "active", sid
    api = box.sd.show(box.unit("api"), "After", "Wants")
    assert "gpumod-emb.service" in api["After"] and "gpumod-emb.service" in api["Wants"]
    # api depends on emb: emb was started (and healthy) before api
    emb_t = int(box.sd.show(box.unit("emb"), "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
    api_t = int(box.sd.show(box.unit("api"), "ExecMainStartTimestampMonotonic")["ExecMainStartTimestampMonotonic"])
    assert emb_t < api_t
    assert states(box) == {"emb": "running", "doc": "stopped", "big": "stopped", "router": "stopped",
                           "asr": "running", "api": "running"}
    # drift: stopped behind gpumod's back; the same switch brings it back
    box.sd.systemctl("stop", box.unit("asr"))
    assert states(box)["asr"] == "stopped"
    code, out, err = box.inv("mode.switch", "--name", "speak", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert [s["service"] for s in rep["summary"]["Started"]] == ["asr"]
    assert box.sd.show(box.unit("asr"), "ActiveState")["ActiveState"] == "active"
    # and then on to another mode: sleep-capable emb stays, the others stop
    code, out, err = box.inv("mode.switch", "--name", "rag", "--json")
    assert code == 0, err
    st = states(box)
    assert st["emb"] == st["doc"] == "running" and st["asr"] == st["api"] == "stopped"
    assert box.sd.show(box.unit("asr"), "ActiveState")["ActiveState"] == "inactive"


@pytest.mark.box(scope="user")
def test_user_scope_through_the_user_manager(systemd_box):
    box = systemd_box
    code, out, err = box.inv("mode.switch", "--name", "rag")
    assert code == 0, err
    env = ["env", "XDG_RUNTIME_DIR=/run/user/0"]
    r = box.sd.run([*env, "systemctl", "--user", "is-active", "gpumod-emb.service", "gpumod-doc.service"], check=False)
    assert r.stdout.split() == ["active", "active"], r.stderr
    assert box.sd.systemctl("is-active", "gpumod-emb.service", check=False).stdout.strip() != "active"
    unit = box.sd.run(["cat", f"{box.unit_dir}/gpumod-emb.service"]).stdout
    assert "WantedBy=default.target" in unit
    code, out, err = box.inv("service.logs", "--service-id", "emb", "--lines", "100")
    assert code == 0 and "gpumod-preflight: emb ok" in out, out + err
    code, out, err = box.inv("mode.switch", "--name", "blank")
    assert code == 0, err
    assert states(box)["emb"] == "stopped"  # blank frees all VRAM: nothing is kept asleep
    r = box.sd.run([*env, "systemctl", "--user", "is-active", "gpumod-emb.service"], check=False)
    assert r.stdout.strip() != "active"


def test_quoting_survives_systemd_verbatim(systemd_box, tmp_path, monkeypatch):
    """A real (not simulated) FastAPI unit whose command and env hold spaces, quotes, % and $:
    the process started by systemd reports exactly what the preset said."""
    box = systemd_box
    out = tmp_path / "seen.json"
    words = ["two words", 'say "hi"', "100%", "$HOME and ${X}", "it's", "back\\slash", "%n"]
    env = {"SPACED": "a b  c", "QUOTED": 'x "y" \'z\'', "PCT": "50%d", "DOLLAR": "$PATH ${Y}", "BS": "c:\\dir"}
    code = ("import sys, os, json; json.dump({'argv': sys.argv[1:], 'env': {k: os.environ.get(k) for k in "
            f"{sorted(env)!r}}}}}, open({str(out)!r}, 'w'))")
    from yaml_helpers import dump

    box.sim.write_preset("speech", "echo", dump({
        "id": "echo", "name": "echo", "driver": "fastapi", "port": 1, "vram_mb": 1, "model_size_mb": 1,
        "env": env, "unit_vars": {"command": ["/usr/bin/python3", "-c", code, *words], "host_flag": ""},
    }))
    inv = "hosts:\n" + box_inventory("real", tmp_path / "box.pid", tmp_path / "real-state", "/run/systemd/system", sim=False)
    (box.sim.root / "inventory" / "hosts.yaml").write_text(inv)
    code_, o, e = run_cli(["-H", "real", "template.install-all"])
    assert code_ == 0, e
    box.sd.systemctl("start", "gpumod-echo.service")
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    journal = box.sd.run(["journalctl", "-u", "gpumod-echo.service", "--no-pager", "-o", "cat"]).stdout
    assert out.exists(), journal
    seen = json.loads(out.read_text())
    assert seen["argv"] == words
    assert seen["env"] == env  # through the unit's private EnvironmentFile
    env_file = tmp_path / "real-state" / "env" / "gpumod-echo.service.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    unit = box.sd.run(["cat", "/run/systemd/system/gpumod-echo.service"]).stdout
    assert "EnvironmentFile=" in unit and "a b  c" not in unit
    box.sd.systemctl("stop", "gpumod-echo.service")
    code_, o, e = run_cli(["-H", "real", "template.uninstall"])
    assert code_ == 0, e
    assert not env_file.exists()  # the private env goes with its unit


@pytest.mark.box(default_mode="rag", warm_modes="[rag, chat]")
def test_bootstrap_twice_under_systemd(systemd_box):
    box = systemd_box
    code, out, err = box.inv("host.bootstrap")
    assert code == 0, err + out
    assert "service manager: systemd" in out and "units: 6 changed" in out
    assert "big: started, healthy, asleep" in out  # warm-up of chat's L2 service, one at a time
    for sid in ("emb", "doc"):
        assert box.sd.show(box.unit(sid), "ActiveState")["ActiveState"] == "active"
    code, out, err = box.inv("host.bootstrap")
    assert code == 0, err
    assert "everything already in place, nothing changed" in out
    assert not [ln for ln in out.splitlines() if ln.strip().startswith("changed")], out
    st = states(box)
    assert st["emb"] == st["doc"] == "running" and st["big"] == "sleeping"
    code, out, err = box.inv("doctor.all")
    assert code == 0, out


def test_router_daemon_as_a_unit(systemd_box, tmp_path):
    """router_daemon: in the inventory installs gpumod.service; bootstrap starts it; it answers."""
    import httpx
    from conftest import free_ports

    box = systemd_box
    port = free_ports(1)[0]
    inv = box.sim.root / "inventory" / "hosts.yaml"
    inv.write_text(inv.read_text() + f"    router_daemon: {{port: {port}}}\n    default_mode: rag\n")
    code, out, err = box.inv("host.bootstrap", "--no-warmup")
    assert code == 0, err + out
    assert f"router daemon gpumod.service on port {port}" in out
    unit = box.sd.run(["cat", "/run/systemd/system/gpumod.service"]).stdout
    assert f"-m gpumod_tasks.program router.serve --port {port} --bind 127.0.0.1" in unit
    assert box.sd.wait_for("gpumod.service", "ActiveState", "active") == "active"
    deadline = time.monotonic() + 20
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/models", timeout=2, trust_env=False)
            if r.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, box.sd.run(["journalctl", "-u", "gpumod.service", "--no-pager"], check=False).stdout
        time.sleep(0.2)
    assert r.json()["mode"] == "rag"
    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30, trust_env=False,
                   json={"model": "big", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["model"] == "big"
    # switched through the daemon under systemd: the chat mode's units run
    assert box.sd.show("gpumod-big.service", "ActiveState")["ActiveState"] == "active"
    # `systemctl reload gpumod` (SIGHUP) re-reads the catalog without restarting anything unchanged
    pid = box.sd.show("gpumod.service", "MainPID")["MainPID"]
    big_pid = box.sd.show("gpumod-big.service", "MainPID")["MainPID"]
    box.sd.systemctl("reload", "gpumod.service")
    time.sleep(1.0)
    assert box.sd.show("gpumod.service", "MainPID")["MainPID"] == pid
    assert box.sd.show("gpumod-big.service", "MainPID")["MainPID"] == big_pid
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5, trust_env=False).status_code == 200
    # turned off in the inventory: install-all removes the unit
    inv.write_text(inv.read_text().replace(f"    router_daemon: {{port: {port}}}\n", ""))
    code, out, err = box.inv("template.install-all")
    assert code == 0 and "removed gpumod.service" in out, err + out
